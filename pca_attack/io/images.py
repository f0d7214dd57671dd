"""Decode and encode image files faithfully: the first and last boxes of decode -> attack -> encode.

Decoding applies the EXIF orientation, splits alpha off (it is re-attached untouched), keeps the ICC
profile, EXIF and dpi, and maps every supported mode to RGB on an integer grid: 8-bit (levels 255) or
16-bit (levels 65535, read at full depth). Grayscale sources stay grayscale on output (the attack ties
their perturbation across channels). Palette images are written back as RGB(A): a palette cannot hold a
perturbation. Anything we cannot protect faithfully is refused with a message saying what to do.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from pca_attack.errors import ImageTooLargeError, ImageTooSmallError, UnsupportedImageError
from pca_attack.io.formats import FORMATS, image_format, normalise_format

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; a guard against decompression bombs
MIN_SIDE = 8  # the encoder downsamples by 8: smaller images carry no latent to collapse
_EXIF_ORIENTATION = 0x0112
MAX_ICC_BYTES = 4 * 1024 * 1024  # real profiles are 0.5-600 KB; larger ones are dropped with a note
_ICC_SPACE = {  # PIL mode -> the colour space its ICC profile must describe
    **dict.fromkeys(("RGB", "RGBA", "RGBa", "P", "PA", "YCbCr"), "RGB"),
    **dict.fromkeys(("L", "LA", "La", "1", "I;16", "I;16B", "I;16L", "I"), "GRAY"),
    "CMYK": "CMYK",
}


@dataclass
class DecodedImage:
    """An input image as the engine sees it."""

    rgb: np.ndarray  # (H, W, 3) uint8 or uint16; gray sources have three equal channels
    alpha: np.ndarray | None  # (H, W) same dtype as rgb, or None
    grayscale: bool  # the source had a single colour channel
    source_format: str  # PNG, JPEG, ... as PIL named it
    source_mode: str  # PIL mode before conversion
    icc_profile: bytes | None = None
    exif: bytes | None = None  # orientation already applied and reset to 1
    dpi: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)  # conversions made, for the certificate

    @property
    def levels(self) -> int:
        """Size of the integer grid: 255 for 8-bit, 65535 for 16-bit sources."""
        return 65535 if self.rgb.dtype == np.uint16 else 255

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def to_tensor(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """(3, H, W) float32 in [0, 1], written into ``out`` when given (e.g. a row of a batch): one float copy
        of the image (a 12 MP photo made three, 432 MB, before)."""
        out = torch.empty((3, self.height, self.width), dtype=torch.float32) if out is None else out
        planes = out.numpy()  # (3, H, W), the same memory
        for channel in range(3):
            np.copyto(planes[channel], self.rgb[..., channel])  # exact: integers to float32
        return out.div_(self.levels)


def tensor_to_array(x: torch.Tensor, levels: int) -> np.ndarray:
    """(3, H, W) in [0, 1] on the grid -> (H, W, 3) uint8/uint16, by rounding (never truncation)."""
    arr = torch.round(x.detach().float().clamp(0, 1) * levels).permute(1, 2, 0).cpu().numpy()
    return arr.astype(np.uint16 if levels > 255 else np.uint8)


# -- decoding -----------------------------------------------------------------------------------------
def _png_bit_depth(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG header, or None for other formats."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 29 or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _read_png16(data: bytes) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Full-depth read of a 16-bit PNG (PIL truncates 48/64-bit colour PNGs to 8 bits)."""
    import png

    width, height, rows, info = png.Reader(bytes=data).asDirect()
    planes = int(info["planes"])
    arr = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
    gray = planes in (1, 2)
    colour = np.repeat(arr[..., :1], 3, axis=2) if gray else arr[..., :3]
    alpha = arr[..., -1].copy() if info.get("alpha") else None
    return np.ascontiguousarray(colour), alpha, gray


def _to_srgb(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None, str]:
    """CMYK -> RGB through the embedded profile when there is one (colorimetric), else PIL's formula."""
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, src, dst, outputMode="RGB")
            assert converted is not None
            srgb_bytes = ImageCms.ImageCmsProfile(dst).tobytes()
            return converted, srgb_bytes, "CMYK converted to sRGB through its embedded ICC profile"
        except (ImageCms.PyCMSError, OSError, AssertionError):
            pass
    return image.convert("RGB"), None, "CMYK converted to RGB (no usable ICC profile: naive conversion)"


def _valid_icc(icc: bytes | None, mode: str) -> tuple[bytes | None, str | None]:
    """The ICC profile if it is one LittleCMS can parse, for the image's colour space; else None and a note.

    An invalid profile (junk bytes, a truncated file, one over :data:`MAX_ICC_BYTES`, or one for another
    colour space) is dropped rather than copied into the output, where viewers would misrender or ignore it.
    """
    if not icc:
        return None, None
    size = len(icc)
    reason = None
    if size > MAX_ICC_BYTES:
        reason = f"it is {size:,} bytes, over the limit of {MAX_ICC_BYTES:,}"
    elif size < 128 or icc[36:40] != b"acsp" or struct.unpack(">I", icc[:4])[0] != size:
        reason = "it is not an ICC profile (bad header)"
    else:
        try:
            space = ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip()
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            space, reason = "", "LittleCMS cannot parse it"
        want = _ICC_SPACE.get(mode)
        if reason is None and want is not None and space != want:
            reason = f"it describes {space or 'an unknown'} colour but the image is {want}"
    if reason is None:
        return icc, None
    return None, f"embedded ICC profile dropped: {reason} ({size:,} bytes); the output carries no profile"


def _open(source: bytes | str | Path | Image.Image) -> tuple[Image.Image, bytes]:
    if isinstance(source, Image.Image):
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        return source, buffer.getvalue()
    data = Path(source).read_bytes() if isinstance(source, str | Path) else bytes(source)
    if not data:
        raise UnsupportedImageError("the upload is empty (0 bytes); send an image file")
    try:
        return Image.open(io.BytesIO(data)), data
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is over the limit of pixels PIL accepts ({exc}); downscale it first") from exc
    except ValueError as exc:  # PIL: "Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK" (> 1 MB iCCP)
        raise UnsupportedImageError(
            f"the image's metadata cannot be read ({exc}); re-export it without the oversized ICC profile or text"
        ) from exc
    except UnidentifiedImageError as exc:
        head = data[:64].lstrip().lower()
        hint = " (it looks like text/HTML)" if head.startswith((b"<", b"{", b"%")) or head.isascii() else ""
        raise UnsupportedImageError(
            f"not a readable image{hint}; supported formats: PNG, JPEG, WebP, TIFF, BMP, still GIF"
        ) from exc


def _check_admissible(image: Image.Image, max_pixels: int) -> None:
    """Refuse images that are too large, too small, multi-frame, truncated or corrupt (before any pixel work)."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width} x {height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "downscale it first or raise the limit"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageTooSmallError(f"image is {width} x {height}; both sides must be at least {MIN_SIDE} px")
    frames = int(getattr(image, "n_frames", 1))
    if frames > 1:
        raise UnsupportedImageError(
            f"animated or multi-frame image ({frames} frames) is not supported; "
            "export the frame you want to protect as a PNG"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise UnsupportedImageError(f"the image data is truncated or corrupt ({exc}); re-export the file") from exc


def _upright(image: Image.Image, notes: list[str]) -> tuple[Image.Image, bytes | None, int]:
    """Apply the EXIF orientation; returns the upright image, the EXIF to carry (orientation reset) and the
    original orientation tag."""
    exif_obj = image.getexif()
    orientation = int(exif_obj.get(_EXIF_ORIENTATION, 1) or 1)
    if orientation != 1:
        image = ImageOps.exif_transpose(image) or image
        notes.append(f"EXIF orientation {orientation} applied; output is stored upright")
        exif_obj[_EXIF_ORIENTATION] = 1
    return image, (exif_obj.tobytes() if len(exif_obj) else None), orientation


def decode_image(
    source: bytes | str | Path | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """Decode bytes, a path or a PIL image into a DecodedImage (see the module docstring)."""
    image, data = _open(source)
    _check_admissible(image, max_pixels)
    fmt, mode, dpi = image.format or "PNG", image.mode, image.info.get("dpi")
    icc, icc_note = _valid_icc(image.info.get("icc_profile") or None, mode)
    notes: list[str] = [icc_note] if icc_note else []
    image, exif, orientation = _upright(image, notes)

    depth = _png_bit_depth(data)
    if depth is not None and depth[0] == 16 and orientation == 1:
        rgb, alpha, gray = _read_png16(data)
        return DecodedImage(rgb, alpha, gray, fmt, mode, icc, exif, dpi, [*notes, "16-bit PNG read at full depth"])
    return _decode_pixels(image, fmt, mode, icc, exif, dpi, notes)


def _decode_pixels(
    image: Image.Image, fmt: str, mode: str, icc: bytes | None, exif: bytes | None, dpi: Any, notes: list[str]
) -> DecodedImage:
    """8-bit (and 16-bit grayscale) pixels of every supported mode: palette, bilevel, CMYK, LA/RGBA, L, YCbCr."""
    alpha_img: Image.Image | None = None
    gray = False
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA" if ("transparency" in image.info or mode == "PA") else "RGB")
        notes.append("palette image: written back as " + image.mode + " (a palette cannot hold the perturbation)")
    mode_now = image.mode
    if mode_now == "1":
        image, mode_now = image.convert("L"), "L"
        notes.append("bilevel image: written back as 8-bit grayscale")
    if mode_now in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.int64)
        if arr.min() < 0 or arr.max() > 65535:
            raise UnsupportedImageError("32-bit integer images are not supported; export as 16-bit or 8-bit")
        g16 = arr.astype(np.uint16)
        return DecodedImage(np.repeat(g16[..., None], 3, axis=2), None, True, fmt, mode, icc, exif, dpi, notes)
    if mode_now == "CMYK":
        image, icc, note = _to_srgb(image, icc)
        notes.append(note)
        mode_now = "RGB"
    if mode_now in ("LA", "La"):
        alpha_img = image.getchannel("A")
        image, gray = image.getchannel("L"), True
    elif mode_now in ("RGBA", "RGBa"):
        alpha_img = image.getchannel("A")
        image = image.convert("RGB")
    elif mode_now == "L":
        gray = True
    elif mode_now == "YCbCr":
        image = image.convert("RGB")
    elif mode_now != "RGB":
        raise UnsupportedImageError(
            f"image mode {mode_now} is not supported; export as RGB, RGBA, grayscale, palette, CMYK or 16-bit PNG"
        )
    rgb = np.repeat(np.asarray(image.convert("L"), dtype=np.uint8)[..., None], 3, axis=2) if gray else (
        np.asarray(image.convert("RGB"), dtype=np.uint8)
    )
    alpha = np.asarray(alpha_img, dtype=np.uint8) if alpha_img is not None else None
    return DecodedImage(np.ascontiguousarray(rgb), alpha, gray, fmt, mode, icc, exif, dpi, notes)


# -- encoding -----------------------------------------------------------------------------------------
def _png_with_chunks(png_bytes: bytes, extra: list[tuple[bytes, bytes]]) -> bytes:
    """Insert ancillary chunks right after IHDR (used to carry iCCP/eXIf on 16-bit PNGs)."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr_end = 8 + 8 + 13 + 4
    return png_bytes[:ihdr_end] + b"".join(chunk(t, b) for t, b in extra) + png_bytes[ihdr_end:]


def _encode_png16(decoded: DecodedImage, rgb: np.ndarray, keep_exif: bool) -> bytes:
    import png

    planes = [rgb[..., :1]] if decoded.grayscale else [rgb]
    if decoded.alpha is not None:
        planes.append(decoded.alpha[..., None].astype(np.uint16))
    arr = np.concatenate(planes, axis=2).astype(np.uint16)  # (H, W, P)
    height, width, n = arr.shape
    writer = png.Writer(
        width, height, greyscale=decoded.grayscale, alpha=decoded.alpha is not None, bitdepth=16
    )
    buffer = io.BytesIO()
    writer.write(buffer, arr.reshape(height, width * n).tolist())
    extra: list[tuple[bytes, bytes]] = []
    if decoded.icc_profile:
        extra.append((b"iCCP", b"icc\x00\x00" + zlib.compress(decoded.icc_profile)))
    if keep_exif and decoded.exif:
        body = decoded.exif[6:] if decoded.exif.startswith(b"Exif\x00\x00") else decoded.exif
        extra.append((b"eXIf", body))
    return _png_with_chunks(buffer.getvalue(), extra) if extra else buffer.getvalue()


def encode_image(
    decoded: DecodedImage,
    rgb: np.ndarray,
    *,
    fmt: str = "png",
    quality: int | None = None,
    keep_exif: bool = True,
) -> bytes:
    """Write the protected pixels (H, W, 3) with the source's alpha, ICC, EXIF and dpi re-attached."""
    name = normalise_format(fmt)
    if rgb.shape != decoded.rgb.shape:
        raise ValueError(f"protected pixels {rgb.shape} do not match the source {decoded.rgb.shape}")
    if quality is not None and not 1 <= quality <= 100:
        raise UnsupportedImageError(f"quality={quality} is outside 1..100")
    if decoded.levels > 255:
        if name != "png":
            raise UnsupportedImageError("16-bit images can only be written as PNG (lossless, full depth)")
        return _encode_png16(decoded, rgb, keep_exif)
    if name == "jpeg" and decoded.alpha is not None:
        raise UnsupportedImageError("JPEG has no alpha channel; ask for png or webp to keep the transparency")
    if decoded.grayscale:
        image = Image.fromarray(np.ascontiguousarray(rgb[..., 0]), mode="L")
        if decoded.alpha is not None:
            image = Image.merge("LA", (image, Image.fromarray(decoded.alpha, mode="L")))
    else:
        image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
        if decoded.alpha is not None:
            image = Image.merge("RGBA", (*image.split(), Image.fromarray(decoded.alpha, mode="L")))
    options: dict[str, Any] = {}
    if decoded.icc_profile:
        options["icc_profile"] = decoded.icc_profile
    if keep_exif and decoded.exif:
        options["exif"] = decoded.exif
    if decoded.dpi:
        options["dpi"] = tuple(float(d) for d in decoded.dpi)
    if name == "png":
        options["optimize"] = False
    elif name == "jpeg":
        options.update(quality=quality or 95, subsampling=0)
    else:
        options.update(quality=quality or 90, method=4)
    buffer = io.BytesIO()
    image.save(buffer, format=FORMATS[name].pil_name, **options)
    return buffer.getvalue()


def mime_type(fmt: str) -> str:
    """The Content-Type of an output format."""
    return image_format(fmt).mime_type
