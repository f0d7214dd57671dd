"""Gradient smoothing (``AttackConfig.smoothing``): the low-pass itself, and an attack whose perturbation it makes
coarser with the budget still held on the bytes."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pca_attack import AttackConfig, Engine, Protector, load_encoder
from pca_attack.attack.lowpass import lowpass
from pca_attack.errors import ConfigError


@pytest.mark.parametrize("size", [(5, 7), (40, 50)])
def test_a_constant_stays_constant_up_to_the_borders(size: tuple[int, int]) -> None:
    ones = torch.full((1, 3, *size), 2.5)  # smaller than the kernel (radius 12) in the first case
    assert torch.allclose(lowpass(ones, 4.0), ones, atol=1e-5)


def test_it_is_a_linear_blur_that_removes_fine_texture() -> None:
    a, b = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))[:, None].unbind(0)
    assert torch.allclose(lowpass(2 * a - b, 1.5), 2 * lowpass(a, 1.5) - lowpass(b, 1.5), atol=1e-5)
    checker = (torch.arange(32)[:, None] + torch.arange(48)[None]).remainder(2).float().expand(1, 3, 32, 48) * 2 - 1
    smooth = lowpass(checker, 2.0).abs()
    assert smooth[..., 6:-6, 6:-6].max() < 1e-3 and smooth.max() < 0.05  # the finest texture is gone
    assert lowpass(a, 2.0).std() < 0.3 * a.std()  # white noise loses most of its energy


def test_zero_is_off_and_the_input_is_never_modified() -> None:
    grad = torch.randn(1, 3, 16, 16)
    kept = grad.clone()
    assert lowpass(grad, 0.0) is grad
    lowpass(grad, 1.0)
    assert torch.equal(grad, kept)


def _high_share(delta: torch.Tensor) -> float:
    """Share of the perturbation's energy above a 2-pixel Gaussian low-pass: (B, 3, H, W) -> a number."""
    return float((delta - lowpass(delta, 2.0)).pow(2).sum() / delta.pow(2).sum())


def test_smoothing_makes_the_perturbation_coarser(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    x = torch.round(torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(1)) * 255) / 255
    plain = Protector(encoder, AttackConfig(steps=6)).protect(x)
    smooth = Protector(encoder, AttackConfig(steps=6, smoothing=4.0)).protect(x)
    assert _high_share(smooth.images - x) < 0.5 * _high_share(plain.images - x)
    assert smooth.final_loss.item() < smooth.clean_loss.item()  # it still collapses


def test_smoothed_output_holds_the_budget_on_the_bytes(
    tiny_vae_dir: Path, photo: Callable[..., np.ndarray]
) -> None:
    engine = Engine.from_spec(str(tiny_vae_dir), device="cpu")
    source = photo(37, 53)
    buffer = io.BytesIO()
    Image.fromarray(source).save(buffer, format="PNG")
    out = engine.protect_bytes(buffer.getvalue(), AttackConfig(steps=4, eps=8, smoothing=3.0))
    written = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB")).astype(int)
    assert written.shape == source.shape and np.abs(written - source.astype(int)).max() <= 8
    assert out.certificate.budget_ok and out.certificate.smoothing == 3.0


@pytest.mark.parametrize("sigma", [-1.0, 16.5])
def test_out_of_range_sigma_is_refused_with_the_range(sigma: float) -> None:
    with pytest.raises(ConfigError, match="smoothing=.*up to 16"):
        AttackConfig(smoothing=sigma)

