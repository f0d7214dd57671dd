"""The red team's crop-N channel: an editor's free crop, which moves the content against the encoder's grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pca_attack import ConfigError, load_encoder
from pca_attack.redteam.channels import apply_transform, get_transform
from pca_attack.redteam.report import redteam


def _image(h: int = 48, w: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.round(torch.rand(1, 3, h, w, generator=g) * 255) / 255  # (1, 3, H, W) on the uint8 grid


def test_crop_cuts_the_top_and_left_edges_exactly() -> None:
    x = _image()
    cropped = apply_transform("crop-3", x)
    assert cropped.shape == (1, 3, 45, 61)
    assert torch.equal(cropped, x[..., 3:, 3:])  # the same pixels, shifted: nothing resampled
    assert "3 px off the top and left" in get_transform("crop-3").description


def test_bad_crops_are_refused_with_what_to_do() -> None:
    for bad in ("crop-0", "crop-x", "crop-", "crop--2"):
        with pytest.raises(ConfigError, match="crop-N for N >= 1"):
            get_transform(bad)
    with pytest.raises(ConfigError, match="leaves less than 8 px of a 64x48 image; crop fewer"):
        apply_transform("crop-41", _image())
    assert apply_transform("crop-40", _image()).shape == (1, 3, 8, 24)


def test_redteam_reports_crop_rows_against_the_cropped_clean_image(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    clean = _image()
    sign = torch.sign(torch.randn(clean.shape, generator=torch.Generator().manual_seed(1)))
    protected = (clean + 8 / 255 * sign).clamp(0, 1)
    report = redteam(encoder, clean, protected, transforms=["crop-3", "crop-8"], with_roundtrip=False)
    assert [r.transform for r in report.rows] == ["none", "crop-3", "crop-8"]
    full, shifted = report.row("none"), report.row("crop-3")
    assert shifted.latent_drift > 0 and shifted.retention != 1.0  # a different image, measured
    assert shifted.kl_clean != full.kl_clean  # the clean image was cropped too: T(c), not c
    assert shifted.pixel_psnr_db is not None and abs(shifted.pixel_psnr_db - full.pixel_psnr_db) < 0.5
    assert "crop-3" in report.to_markdown()
