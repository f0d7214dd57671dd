"""Issue 11 item 8 (first half): an invalid embedded ICC profile is dropped on output, with a note.

A 1 MB junk profile was copied into every output.  Now decode keeps a profile only if LittleCMS parses
it and it describes the image's colour space; otherwise the output carries none and the certificate's
``notes`` say why.  Valid profiles are still carried (tests/engine/test_imageio.py).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from pca_attack import AttackConfig, Engine, UnsupportedImageError, decode_image
from pca_attack.io.images import MAX_ICC_BYTES
from tests.conftest import to_bytes

CONFIG = AttackConfig(steps=1, eps=8, step=4)


@pytest.fixture(scope="module")
def engine(tiny_vae_dir: Path) -> Engine:
    return Engine.from_spec(str(tiny_vae_dir), device="cpu")


def _profile(kind: str) -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile(kind)).tobytes()  # type: ignore[arg-type]


def _junk(size: int) -> bytes:
    return np.random.default_rng(0).integers(0, 256, size=size, dtype=np.uint8).tobytes()


def _header_only(valid: bytes) -> bytes:
    """A profile whose 128-byte header is right but whose tag table is garbage."""
    return valid[:128] + _junk(len(valid) - 128)


@pytest.mark.parametrize(
    ("icc", "reason"),
    [
        (_junk(1024 * 1024), "bad header"),  # the case: 1 MB of junk
        (_junk(10), "bad header"),
        (_header_only(_profile("sRGB")), "cannot parse"),
        (_profile("LAB"), "describes Lab colour but the image is RGB"),
    ],
)
def test_invalid_icc_is_dropped_with_a_note(photo: Callable[..., np.ndarray], icc: bytes, reason: str) -> None:
    data = to_bytes(Image.fromarray(photo(24, 24)), "PNG", icc_profile=icc)
    assert Image.open(io.BytesIO(data)).info.get("icc_profile") == icc  # PIL writes what it is given
    decoded = decode_image(data)
    assert decoded.icc_profile is None
    assert any("ICC profile dropped" in n and reason in n for n in decoded.notes), decoded.notes


def test_oversized_icc_is_dropped(photo: Callable[..., np.ndarray]) -> None:
    valid = _profile("sRGB")
    huge = bytearray(valid + bytes(MAX_ICC_BYTES))
    huge[:4] = len(huge).to_bytes(4, "big")  # a consistent header, just too big (JPEG can carry ~16 MB)
    decoded = decode_image(to_bytes(Image.fromarray(photo(24, 24)), "JPEG", icc_profile=bytes(huge)))
    assert decoded.icc_profile is None and any("over the limit" in n for n in decoded.notes)


def test_png_with_an_unreadable_icc_chunk_is_a_typed_error(photo: Callable[..., np.ndarray]) -> None:
    """PIL refuses an iCCP chunk over 1 MB decompressed with a bare ValueError: it must be typed (415)."""
    data = to_bytes(Image.fromarray(photo(24, 24)), "PNG", icc_profile=_junk(2 * 1024 * 1024))
    with pytest.raises(UnsupportedImageError, match="metadata cannot be read"):
        decode_image(data)


def test_valid_profile_is_kept_and_a_mismatched_one_dropped(photo: Callable[..., np.ndarray]) -> None:
    srgb = _profile("sRGB")
    rgb = decode_image(to_bytes(Image.fromarray(photo(24, 24)), "PNG", icc_profile=srgb))
    assert rgb.icc_profile == srgb and not rgb.notes
    gray = decode_image(to_bytes(Image.fromarray(photo(24, 24)).convert("L"), "PNG", icc_profile=srgb))
    assert gray.icc_profile is None
    assert any("describes RGB colour but the image is GRAY" in n for n in gray.notes)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_protected_output_has_no_junk_icc_and_the_certificate_says_so(
    engine: Engine, photo: Callable[..., np.ndarray], fmt: str
) -> None:
    data = to_bytes(Image.fromarray(photo(24, 24)), "PNG", icc_profile=_junk(1024 * 1024))
    out = engine.protect_bytes(data, CONFIG, fmt=fmt, quality=90 if fmt == "jpeg" else None)
    assert Image.open(io.BytesIO(out.data)).info.get("icc_profile") is None
    assert len(out.data) < 200_000  # the megabyte of junk is gone
    assert any("ICC profile dropped" in n for n in out.certificate.notes)
