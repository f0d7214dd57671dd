"""The one table of image formats: what the engine reads, and for each output format its file suffix,
PIL writer name, MIME type and whether it is lossy. Torch-free (the client and the service use it too)."""

from __future__ import annotations

from dataclasses import dataclass

from pca_attack.errors import UnsupportedImageError

INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")


@dataclass(frozen=True)
class ImageFormat:
    """One output format."""

    name: str  # the canonical name used in options, certificates and the API
    suffix: str  # file suffix of outputs
    pil_name: str  # PIL's writer
    mime_type: str
    lossy: bool


FORMATS: dict[str, ImageFormat] = {
    "png": ImageFormat("png", ".png", "PNG", "image/png", lossy=False),
    "jpeg": ImageFormat("jpeg", ".jpg", "JPEG", "image/jpeg", lossy=True),
    "webp": ImageFormat("webp", ".webp", "WEBP", "image/webp", lossy=True),
}
ALIASES = {"jpg": "jpeg"}
FORMAT_NAMES = tuple(FORMATS)
BY_SUFFIX: dict[str, ImageFormat] = {f.suffix: f for f in FORMATS.values()}  # ".jpg" -> jpeg


def normalise_format(fmt: str | None) -> str:
    """'png' | 'jpeg' | 'webp' (accepts 'jpg', a leading dot and any case; None is png); raises otherwise."""
    name = (fmt or "png").strip().lower().lstrip(".")
    name = ALIASES.get(name, name)
    if name not in FORMATS:
        raise UnsupportedImageError(f"output format {fmt!r} is not supported; choose png, jpeg or webp")
    return name


def image_format(fmt: str | None) -> ImageFormat:
    """The table row of an output format (aliases accepted)."""
    return FORMATS[normalise_format(fmt)]

