"""The shrink pass: keeps at least the requested share of the collapse, with a smaller perturbation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pca_attack import AttackConfig, Protector, load_encoder
from pca_attack.attack.budget import LinfBudget
from pca_attack.attack.shrink import Shrinker


def test_shrinker_on_a_saturating_objective_keeps_the_share_and_shrinks() -> None:
    """A toy objective that saturates: -sum(tanh(4 * eta) * w) over a few salient pixels."""
    g = torch.Generator().manual_seed(0)
    x = torch.round((0.3 + 0.4 * torch.rand(2, 3, 32, 32, generator=g)) * 255) / 255
    weight = torch.zeros(2, 3, 32, 32)
    weight[:, :, :8, :8] = 1.0  # only the top-left tile matters

    def objective(images: torch.Tensor) -> torch.Tensor:  # lower is better
        return -(torch.tanh(40 * (images - x)) * weight).flatten(1).sum(dim=1)

    def gradient(images: torch.Tensor) -> torch.Tensor:
        images = images.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(images).sum(), images)
        return grad

    budget = LinfBudget(x, 16.0, torch.zeros(2, dtype=torch.bool))
    x_adv = budget.project(x + 1.0)  # every pixel at +16/255
    shrunk = Shrinker(budget, torch.full((2,), 255.0), objective)(x_adv, gradient, 0.9)
    gain_full = objective(x) - objective(x_adv)
    gain_shrunk = objective(x) - objective(shrunk)
    assert (gain_shrunk >= 0.9 * gain_full - 1e-6).all()
    assert ((shrunk - x).flatten(1).norm(dim=1) < 0.5 * (x_adv - x).flatten(1).norm(dim=1)).all()
    assert ((shrunk - x).abs() <= 16 / 255 + 1e-6).all() and torch.equal(torch.round(shrunk * 255) / 255, shrunk)


@pytest.mark.parametrize("share", [0.95, 0.8])
def test_protect_with_shrink_keeps_the_share_of_the_collapse(tiny_vae_dir: Path, share: float) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    x = torch.round(torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(3)) * 255) / 255
    full = Protector(encoder, AttackConfig(steps=8)).protect(x)
    shrunk = Protector(encoder, AttackConfig(steps=8, shrink=share)).protect(x)
    gain_full = full.clean_loss - full.final_loss  # pca- minimises: the gain is the loss drop
    gain_shrunk = shrunk.clean_loss - shrunk.final_loss
    assert (gain_full > 0).all()
    assert (gain_shrunk >= share * gain_full * (1 - 1e-4)).all(), (gain_shrunk / gain_full)
    l2 = lambda r: (r.images - x).flatten(1).norm(dim=1)  # noqa: E731
    assert (l2(shrunk) < l2(full)).all(), (l2(shrunk), l2(full))
    assert ((shrunk.images - x).abs() * 255 <= 16 + 1e-4).all()


def test_shrink_with_jnd_and_colour_neutral_keeps_the_bound_on_the_grid(tiny_vae_dir: Path) -> None:
    from pca_attack.attack.budget import jnd_map

    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    x = torch.round(torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(4)) * 255) / 255
    config = AttackConfig(steps=6, budget="jnd", colour_neutral=True, shrink=0.9)
    out = Protector(encoder, config).protect(x).images
    assert ((out - x).abs() * 255 <= torch.floor(jnd_map(x, 16.0) + 1e-6) + 1e-4).all()
    assert torch.equal(torch.round(out * 255) / 255, out)
