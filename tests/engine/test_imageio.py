"""Image I/O round trips: every odd input comes back the same size, with alpha, ICC and EXIF intact."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from pca_attack import (
    AttackConfig,
    Engine,
    ImageTooLargeError,
    ImageTooSmallError,
    UnsupportedImageError,
    decode_image,
)
from pca_attack.io.images import DecodedImage
from tests.conftest import to_bytes

CONFIG = AttackConfig(steps=2, eps=8, step=4)


@pytest.fixture(scope="module")
def engine(tiny_vae_dir: Path) -> Engine:
    return Engine.from_spec(str(tiny_vae_dir), device="cpu")


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _linf(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def test_exif_rotated_jpeg_is_upright_and_keeps_exif(engine: Engine, photo: Callable[..., np.ndarray]) -> None:
    image = Image.fromarray(photo(24, 40))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    exif[0x010F] = "TestCam"
    data = to_bytes(image, "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(data)
    assert (decoded.width, decoded.height) == (24, 40)  # upright
    out = engine.protect_bytes(data, CONFIG)
    result = Image.open(io.BytesIO(out.data))
    assert result.size == (24, 40)
    assert result.getexif().get(0x010F) == "TestCam" and result.getexif().get(0x0112, 1) == 1
    stripped = Image.open(io.BytesIO(engine.protect_bytes(data, CONFIG, keep_exif=False).data))
    assert 0x010F not in stripped.getexif()


def test_rgba_png_alpha_untouched(engine: Engine, photo: Callable[..., np.ndarray]) -> None:
    rgb = photo(30, 45)
    alpha = (np.arange(30 * 45).reshape(30, 45) % 256).astype(np.uint8)
    data = to_bytes(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    out = engine.protect_bytes(data, CONFIG)
    result = np.asarray(Image.open(io.BytesIO(out.data)))
    assert result.shape == (30, 45, 4)
    assert np.array_equal(result[..., 3], alpha)
    assert _linf(result[..., :3], rgb) <= 8 and out.certificate.alpha_preserved is True


def test_palette_with_transparency(engine: Engine, photo: Callable[..., np.ndarray]) -> None:
    pal = Image.fromarray(photo(32, 32)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    data = to_bytes(pal, transparency=0)
    source = decode_image(data)
    out = engine.protect_bytes(data, CONFIG)
    result = Image.open(io.BytesIO(out.data))
    assert result.mode == "RGBA" and result.size == (32, 32)
    assert np.array_equal(np.asarray(result)[..., 3], source.alpha)
    assert any("palette" in n for n in out.certificate.notes)


def test_cmyk_jpeg_is_converted_and_protected(engine: Engine, photo: Callable[..., np.ndarray]) -> None:
    data = to_bytes(Image.fromarray(photo(24, 32)).convert("CMYK"), "JPEG", quality=95)
    out = engine.protect_bytes(data, CONFIG)
    assert Image.open(io.BytesIO(out.data)).size == (32, 24)
    assert any("CMYK" in n for n in out.certificate.notes) and out.certificate.budget_ok


def test_sixteen_bit_gray_png_keeps_full_depth(engine: Engine) -> None:
    ramp = (np.linspace(0, 65535, 40 * 48).reshape(40, 48)).astype(np.uint16)
    data = to_bytes(Image.fromarray(ramp))
    decoded = decode_image(data)
    assert decoded.levels == 65535 and decoded.grayscale
    out = engine.protect_bytes(data, CONFIG)
    again = decode_image(out.data)
    assert again.levels == 65535 and again.grayscale and again.rgb.shape == (40, 48, 3)
    assert _linf(again.rgb, decoded.rgb) <= 8 * 65535 / 255 and out.certificate.bit_depth == 16
    assert out.certificate.linf_255 <= 8


def _png48(array: np.ndarray) -> bytes:
    import png

    height, width, _ = array.shape
    buffer = io.BytesIO()
    png.Writer(width, height, greyscale=False, bitdepth=16).write(buffer, array.reshape(height, -1).tolist())
    return buffer.getvalue()


def test_48_bit_rgb_png_read_at_full_depth(engine: Engine) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 65536, size=(16, 24, 3), dtype=np.uint16)
    decoded = decode_image(_png48(array))
    assert np.array_equal(decoded.rgb, array)  # PIL alone would truncate to 8 bits
    out = engine.protect_bytes(_png48(array), CONFIG)
    assert decode_image(out.data).rgb.dtype == np.uint16 and out.certificate.budget_ok


def test_icc_profile_is_carried(engine: Engine, photo: Callable[..., np.ndarray]) -> None:
    icc = _srgb_icc()
    for fmt in ("png", "jpeg", "webp"):
        data = to_bytes(Image.fromarray(photo(24, 24)), "PNG", icc_profile=icc)
        out = engine.protect_bytes(data, CONFIG, fmt=fmt, quality=90 if fmt != "png" else None)
        assert Image.open(io.BytesIO(out.data)).info.get("icc_profile") == icc, fmt


def test_grayscale_stays_grayscale(engine: Engine, photo: Callable[..., np.ndarray]) -> None:
    data = to_bytes(Image.fromarray(photo(24, 40)).convert("LA"))
    out = engine.protect_bytes(data, CONFIG)
    assert Image.open(io.BytesIO(out.data)).mode == "LA"


def test_lossy_output_reports_budget_after_encoding(engine: Engine, photo: Callable[..., np.ndarray]) -> None:
    data = to_bytes(Image.fromarray(photo(40, 40)))
    out = engine.protect_bytes(data, CONFIG, fmt="jpeg", quality=80)
    written = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"))
    assert out.format == "jpeg" and out.certificate.quality == 80
    assert out.certificate.linf_255 == pytest.approx(_linf(written, photo(40, 40)))
    assert out.certificate.budget_ok == (out.certificate.linf_255 <= 8)


def test_jpeg_with_alpha_is_refused(engine: Engine, photo: Callable[..., np.ndarray]) -> None:
    data = to_bytes(Image.fromarray(photo(24, 24)).convert("RGBA"))
    with pytest.raises(UnsupportedImageError, match="alpha"):
        engine.protect_bytes(data, CONFIG, fmt="jpeg")


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize(
    ("payload", "error", "message"),
    [
        (b"", UnsupportedImageError, "empty"),
        (b"hello, this is text", UnsupportedImageError, "not a readable image"),
        (b"<html><body>hi</body></html>", UnsupportedImageError, "HTML"),
        (_bomb_png(30000, 30000), ImageTooLargeError, "over the limit"),
    ],
)
def test_bad_bytes_are_refused_clearly(payload: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        decode_image(payload)


def test_truncated_png_and_jpeg(photo: Callable[..., np.ndarray]) -> None:
    for fmt in ("PNG", "JPEG"):
        data = to_bytes(Image.fromarray(photo(64, 64)), fmt)
        with pytest.raises(UnsupportedImageError, match="truncated or corrupt"):
            decode_image(data[: len(data) // 2])


def test_tiny_and_animated_images_are_refused(photo: Callable[..., np.ndarray]) -> None:
    with pytest.raises(ImageTooSmallError, match="at least"):
        decode_image(to_bytes(Image.new("RGB", (1, 1))))
    frames = [Image.fromarray(photo(16, 16, seed=i)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(UnsupportedImageError, match="animated"):
        decode_image(buffer.getvalue())


def test_decode_from_path_and_pil(tmp_path: Path, photo: Callable[..., np.ndarray]) -> None:
    image = Image.fromarray(photo(16, 20))
    image.save(tmp_path / "a.png")
    assert np.array_equal(decode_image(tmp_path / "a.png").rgb, decode_image(image).rgb)


@pytest.mark.parametrize("dtype, levels", [(np.uint8, 255), (np.uint16, 65535)])
def test_to_tensor_is_the_pixels_over_the_grid_written_once(dtype: type, levels: int) -> None:
    """(3, H, W) float32 equal to rgb / levels bit for bit, written into a given row of a batch without a
    temporary (a 12 MP photo made three float copies, 432 MB, before)."""
    rgb = np.random.default_rng(0).integers(0, levels + 1, (37, 53, 3)).astype(dtype)
    image = DecodedImage(rgb, None, False, "PNG", "RGB")
    expected = torch.from_numpy(rgb.astype(np.float32) / levels).permute(2, 0, 1)
    assert torch.equal(image.to_tensor(), expected) and image.to_tensor().is_contiguous()
    batch = torch.full((2, 3, 37, 53), -1.0)
    assert image.to_tensor(out=batch[1]).data_ptr() == batch[1].data_ptr()
    assert torch.equal(batch[1], expected) and bool((batch[0] == -1).all())
