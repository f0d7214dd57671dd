"""The PGD loop's own whole-image memory (``pca_attack.attack.loop_memory``): measured per configuration, it is
the peak of a tiled attack with a cheap encoder on a large image, and the planner counts it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pca_attack.attack.config import REFERENCE_CONFIG, AttackConfig
from pca_attack.attack.loop_memory import loop_bytes_per_pixel
from pca_attack.attack.memory import MemoryBudgetError, measure_peak, memory_model, plan_attack
from pca_attack.attack.pgd import Protector
from pca_attack.attack.tiling import TileGrid
from pca_attack.models.encoder import load_encoder

IMAGE = 3 * 4  # bytes per pixel of one float32 RGB image


def test_the_loop_holds_a_few_whole_images() -> None:
    """x, the iterate and the best iterate at least; the update, projection and rounding work in place or in
    bands, so the default loop stays within 6 whole images (it held 12 before; 144 B/px) and Rprop, which keeps
    two more (its step sizes and last signs), within 9."""
    for config in (AttackConfig(), REFERENCE_CONFIG, AttackConfig(update="rprop"), AttackConfig(budget="jnd")):
        per_pixel = loop_bytes_per_pixel(config, 8, 4)
        assert 3 * IMAGE <= per_pixel <= 9 * IMAGE, (config.update, config.budget, per_pixel)
    assert loop_bytes_per_pixel(AttackConfig(), 8, 4) <= 6.05 * IMAGE  # + the small (B,) and latent tensors


def test_whole_image_phase_is_planned_where_it_is_the_peak(tiny_ae_dir: Path) -> None:
    """A convolution-only tiny autoencoder on 768 x 768 in small tiles: the tiles' activations are small, the
    loop's whole-image tensors are the peak. The estimate with the measured term is within 30% of the measured
    peak; without it the estimate is too low."""
    encoder = load_encoder(str(tiny_ae_dir), device="cpu")
    config = AttackConfig(steps=2)
    base = memory_model(encoder)
    model = replace(base, loop_image_per_pixel=loop_bytes_per_pixel(config, base.factor, encoder.latent_channels))
    side = 768
    grid = TileGrid(side, side, base.factor, 128, base.halo)
    attack = Protector(encoder, config)

    def run() -> None:
        attack.protect(torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)), tiles=grid)

    measured = measure_peak(run, encoder.device)
    estimate = model.estimate_grid(grid)
    assert abs(estimate - measured) <= 0.3 * measured, (estimate, measured)
    assert base.estimate_grid(grid) < 0.8 * measured  # the probes alone miss the loop's whole-image work


def test_a_budget_below_the_loop_itself_is_refused_before_any_work(tiny_ae_dir: Path) -> None:
    """Tiles cannot shrink the loop's whole-image tensors: a budget they exceed is a refusal, not a plan."""
    encoder = load_encoder(str(tiny_ae_dir), device="cpu")
    config = AttackConfig(steps=2)
    base = memory_model(encoder)
    model = replace(base, loop_image_per_pixel=loop_bytes_per_pixel(config, base.factor, encoder.latent_channels))
    side = 2048
    loop_only = model.loop.fixed + model.loop_image_per_pixel * side * side
    with pytest.raises(MemoryBudgetError, match="raise the budget"):
        plan_attack(model, side, side, steps=2, available=loop_only)  # the loop alone, without headroom
