"""Real publishing transformations and the red-team report: shapes, ranges, determinism, retention."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pca_attack import AttackConfig, ConfigError, Protector, load_decoder, load_encoder
from pca_attack.models.registry import DEMO_MODEL_DIR
from pca_attack.redteam.channels import TRANSFORMS, apply_transform
from pca_attack.redteam.report import redteam


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small models on a shared 2-core box: one intra-op thread avoids OpenMP oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _image(h: int = 36, w: int = 44, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, h // 4, w // 4, generator=g), size=(h, w),
                                             mode="bilinear", align_corners=False)
    return (torch.round(smooth * 255) / 255).clamp(0, 1)  # (1, 3, H, W) on the uint8 grid


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transformation_keeps_shape_range_grid_and_is_deterministic(name: str, tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    decoder = load_decoder(str(tiny_vae_dir), device="cpu")
    x = torch.cat([_image(), _image(seed=1)])  # (2, 3, 36, 44): not a multiple of 8
    y1 = apply_transform(name, x, 7, encoder, decoder)
    y2 = apply_transform(name, x, 7, encoder, decoder)
    assert y1.shape == x.shape and y1.dtype == torch.float32
    assert float(y1.min()) >= 0.0 and float(y1.max()) <= 1.0
    assert torch.equal(y1, y2)
    assert torch.allclose(y1 * 255, torch.round(y1 * 255), atol=1e-4)  # a publishable uint8 image
    if name != "none":
        assert not torch.equal(y1, x)


def test_noise_depends_on_the_seed() -> None:
    x = _image()
    assert not torch.equal(apply_transform("noise-8", x, 0), apply_transform("noise-8", x, 1))


def test_unknown_transformation_and_purify_without_decoder_fail_clearly(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    with pytest.raises(ConfigError, match="jpeg-75"):
        apply_transform("jpeg-7", _image())
    with pytest.raises(ConfigError, match="decoder"):
        apply_transform("purify", _image(), encoder=encoder)


def test_redteam_report_on_a_tiny_model(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    clean = _image(32, 40)
    protected = Protector(encoder, AttackConfig(steps=3)).protect(clean).images
    report = redteam(encoder, clean, protected, transforms=["jpeg-75", "blur-1"], seed=0)
    assert [r.transform for r in report.rows] == ["none", "jpeg-75", "blur-1"]
    assert report.row("none").retention == pytest.approx(1.0)
    assert report.row("none").roundtrip_damage_db is None  # no decoder given
    json.dumps(report.to_dict())
    md = report.to_markdown()
    assert md.count("\n") == 5 and "| jpeg-75 |" in md


@pytest.mark.skipif(not (DEMO_MODEL_DIR / "config.json").is_file(), reason="demo VAE not bundled yet")
def test_strong_jpeg_lowers_retention_on_the_demo_model() -> None:
    from skimage import data

    encoder = load_encoder("demo", device="cpu")
    decoder = load_decoder("demo", device="cpu")
    clean = torch.from_numpy(data.astronaut()[64:192, 160:288]).permute(2, 0, 1)[None].float() / 255
    protected = Protector(encoder, AttackConfig(steps=10)).protect(clean).images
    report = redteam(encoder, clean, protected, decoder=decoder, transforms=["jpeg-50"], with_roundtrip=False)
    assert report.row("none").latent_drift > 0.05  # the protection did something before the channel
    # measured on the demo VAE: ~0.98 (JPEG removes little of a low-frequency perturbation), never 1
    assert 0.5 < report.row("jpeg-50").retention < 1.0


def _tiny_pair(tiny_vae_dir: Path) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    """The tiny VAE's encoder and decoder, a clean image and its 3-step protection."""
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    decoder = load_decoder(str(tiny_vae_dir), device="cpu")
    clean = _image(32, 40)
    return encoder, decoder, clean, Protector(encoder, AttackConfig(steps=3)).protect(clean).images


def test_purification_is_measured_against_the_clean_image_as_published(tiny_vae_dir: Path) -> None:
    """An attacker purifies the protected image only: the purify row's clean round trip is the clean image's
    own (the 'none' row's), not that of a purified clean image, which the purifier makes easy to reconstruct."""
    encoder, decoder, clean, protected = _tiny_pair(tiny_vae_dir)
    report = redteam(encoder, clean, protected, decoder=decoder, transforms=["purify", "jpeg-75"], purify_steps=3)
    none, purified, jpeg = report.row("none"), report.row("purify"), report.row("jpeg-75")
    assert purified.roundtrip_psnr_clean_db == pytest.approx(none.roundtrip_psnr_clean_db)
    assert jpeg.roundtrip_psnr_clean_db != pytest.approx(none.roundtrip_psnr_clean_db)  # codecs: both sides
    assert TRANSFORMS["purify"].protected_only and not TRANSFORMS["jpeg-75"].protected_only


def test_damage_against_the_original_is_the_attackers_view(tiny_vae_dir: Path) -> None:
    """Besides the damage against T(clean) (a platform's channel: the editor starts from T of either image),
    each row reports it against the original: PSNR(D(E(c)), c) - PSNR(D(E(T(p))), c), what someone who applies
    T to strip the protection gets compared with editing the original."""
    from pca_attack.certify.diagnostics import psnr, roundtrip
    from pca_attack.redteam.channels import apply_transform

    encoder, decoder, clean, protected = _tiny_pair(tiny_vae_dir)
    report = redteam(encoder, clean, protected, decoder=decoder, transforms=["blur-1", "purify"], purify_steps=3)
    none, blurred, purified = report.row("none"), report.row("blur-1"), report.row("purify")
    assert none.roundtrip_damage_vs_original_db == pytest.approx(none.roundtrip_damage_db)
    assert purified.roundtrip_damage_vs_original_db == pytest.approx(purified.roundtrip_damage_db)  # T(c) = c
    c4, p4 = clean[None] if clean.dim() == 3 else clean, protected
    expected = (psnr(roundtrip(encoder, decoder, c4)[0], c4[0])
                - psnr(roundtrip(encoder, decoder, apply_transform("blur-1", p4, 0))[0], c4[0]))
    assert blurred.roundtrip_damage_vs_original_db == pytest.approx(expected, abs=1e-4)
    assert blurred.roundtrip_damage_vs_original_db != pytest.approx(blurred.roundtrip_damage_db)
    assert "damage vs original dB" in report.to_markdown()


def test_excess_damage_is_measured_against_the_nearer_of_clean_and_protected(tiny_vae_dir: Path) -> None:
    """The excess damage counts only what the round trip loses beyond reproducing either image:
    PSNR(D(E(T(c))), T(c)) - max(PSNR(D(E(T(p))), T(c)), PSNR(D(E(T(p))), T(p))), never above the damage."""
    from pca_attack.certify.diagnostics import psnr, roundtrip

    encoder, decoder, clean, protected = _tiny_pair(tiny_vae_dir)
    report = redteam(encoder, clean, protected, decoder=decoder, transforms=["blur-1"])
    none = report.row("none")
    round_p = roundtrip(encoder, decoder, protected)[0]
    nearer = max(psnr(round_p, clean[0] if clean.dim() == 4 else clean), psnr(round_p, protected[0]))
    assert none.roundtrip_excess_db == pytest.approx(none.roundtrip_psnr_clean_db - nearer, abs=1e-4)
    for row in report.rows:
        assert row.roundtrip_excess_db <= row.roundtrip_damage_db + 1e-9
    assert "excess damage dB" in report.to_markdown()
