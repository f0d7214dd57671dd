"""The PGD loop's own whole-image memory (``pca_attack.attack.loop_memory``): measured per configuration, it is
the peak of a tiled attack with a cheap encoder on a large image, and the planner counts it."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pca_attack.attack.config import REFERENCE_CONFIG, AttackConfig
from pca_attack.attack.loop_memory import loop_bytes_per_pixel
from pca_attack.attack.memory import (
    HEADROOM,
    Line,
    MemoryBudgetError,
    MemoryModel,
    measure_peak,
    memory_model,
    plan_attack,
)
from pca_attack.attack.pgd import Protector
from pca_attack.attack.tiling import TileGrid
from pca_attack.models.encoder import load_encoder

IMAGE = 3 * 4  # bytes per pixel of one float32 RGB image


def test_the_loop_holds_a_few_whole_images() -> None:
    """x, the iterate and the best iterate at least; the update, projection and rounding work in place or in
    bands, so the default loop stays within 6 whole images (it held 12 before; 144 B/px) and Rprop, which keeps
    two more (its step sizes and last signs), within 9. While a tile is encoded it holds less than its peak,
    but at least x, the iterate and the tiled gradient's accumulator."""
    for config in (AttackConfig(), REFERENCE_CONFIG, AttackConfig(update="rprop"), AttackConfig(budget="jnd")):
        loop = loop_bytes_per_pixel(config, 8, 4)
        assert 3 * IMAGE <= loop.between_steps <= 9 * IMAGE, (config.update, config.budget, loop)
        assert 3 * IMAGE <= loop.during_tiles <= loop.between_steps, (config.update, config.budget, loop)
    assert loop_bytes_per_pixel(AttackConfig(), 8, 4).between_steps <= 6.05 * IMAGE  # + (B,) and latent tensors


def test_tiles_are_sized_by_what_the_loop_holds_beside_them() -> None:
    """The tiles' room is the budget less the loop's state DURING the tiles; its larger whole-image phase
    between the steps holds no activations, so it only has to fit on its own (it shrank 12 MP TAEF2 tiles from
    728 to 648 px when it was subtracted too). Planned and estimated with the measured state of the tile phase."""
    encoder_factor, side, steps = 8, 4000, 2
    base = replace(_synthetic_model(encoder_factor), loop_image_per_pixel=72.0, loop_tile_per_pixel=52.0)
    available = 2.1e9
    plan = plan_attack(base, 3000, side, steps=steps, available=available)
    assert plan.grid is not None
    tile = math.prod(plan.grid.tile_shape) * base.step.per_pixel * base.tile_overhead
    state = base.loop.fixed + 52.0 * 3000 * side
    assert plan.estimated_bytes == pytest.approx(state + tile, rel=1e-6)
    assert (state + tile) * HEADROOM <= available  # the tile phase fits with headroom ...
    allowance = (available / HEADROOM - state) / (base.step.per_pixel * base.tile_overhead)  # a tile's pixels
    assert math.prod(plan.grid.tile_shape) > 0.97 * allowance  # ... and uses the budget
    between = base.loop.fixed + 72.0 * 3000 * side  # sized by the between-steps state, the tiles would be smaller
    assert (available / HEADROOM - between) / (base.step.per_pixel * base.tile_overhead) < 0.8 * allowance
    assert base.loop_image_per_pixel * 3000 * side * HEADROOM <= available


def _synthetic_model(factor: int) -> MemoryModel:
    """A TAEF2-like memory model (its measured step and loop lines), without loading a model."""
    return MemoryModel(step=Line(112.0, 2018.0), forward=Line(0.0, 1036.0), loop=Line(137.0, 2042.0),
                       seconds_per_pixel=1.1e-5, factor=factor, halo=88, forward_seconds_per_pixel=4.7e-6,
                       tile_overhead=1.04)


def test_whole_image_phase_is_planned_where_it_is_the_peak(tiny_ae_dir: Path) -> None:
    """A convolution-only tiny autoencoder on 768 x 768 in small tiles: the tiles' activations are small, the
    loop's whole-image tensors are the peak. The estimate with the measured term is within 30% of the measured
    peak; without it the estimate is too low."""
    encoder = load_encoder(str(tiny_ae_dir), device="cpu")
    config = AttackConfig(steps=2)
    base = memory_model(encoder)
    loop = loop_bytes_per_pixel(config, base.factor, encoder.latent_channels)
    model = replace(base, loop_image_per_pixel=loop.between_steps, loop_tile_per_pixel=loop.during_tiles)
    side = 768
    grid = TileGrid(side, side, base.factor, 128, base.halo)
    attack = Protector(encoder, config)

    def run() -> None:
        attack.protect(torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)), tiles=grid)

    measured = measure_peak(run, encoder.device)
    estimate = model.estimate_grid(grid)
    assert abs(estimate - measured) <= 0.3 * measured, (estimate, measured)
    assert base.estimate_grid(grid) < 0.8 * measured  # the probes alone miss the loop's whole-image work


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_the_loop_holds_no_more_resident_memory_than_it_measured() -> None:
    """The loop's bytes are measured by counting the tensors operations return; an operation's hidden scratch
    would escape that count (``F.interpolate`` in the colour-neutral projection held a second whole image: 12 MP
    under --max-memory 1.5GB peaked 4 MB over). The resident high-water mark of a real tiled run of the loop on a
    stub encoder stays within the measured between-steps bytes (it was 17% over)."""
    from pca_attack.attack.loop_memory import stub_encoder
    from pca_attack.attack.sizes import bound_heap

    def resident(field: str) -> int:
        line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith(field))
        return int(line.split()[1]) * 1024

    assert bound_heap()  # what a budgeted CPU run does: freed blocks go back to the system
    config, (height, width) = AttackConfig(steps=2), (1152, 1536)
    stub = stub_encoder(8, 32, torch.device("cpu"))
    loop = loop_bytes_per_pixel(config, 8, 32)
    grid = TileGrid(height, width, 8, 256, 64, stats="lagged")
    attack = Protector(stub, config)
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    attack.protect(x[..., :256, :256].clone(), tiles=TileGrid(256, 256, 8, 64, 8))  # warm-up: lazy state
    del x
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = resident("VmRSS")
    attack.protect(torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)), tiles=grid)
    grown = resident("VmHWM") - before
    assert grown <= 1.05 * loop.between_steps * height * width + 4e6, (grown / (height * width), loop)


def test_a_budget_below_the_loop_itself_is_refused_before_any_work(tiny_ae_dir: Path) -> None:
    """Tiles cannot shrink the loop's whole-image tensors: a budget they exceed is a refusal, not a plan."""
    encoder = load_encoder(str(tiny_ae_dir), device="cpu")
    config = AttackConfig(steps=2)
    base = memory_model(encoder)
    loop = loop_bytes_per_pixel(config, base.factor, encoder.latent_channels)
    model = replace(base, loop_image_per_pixel=loop.between_steps, loop_tile_per_pixel=loop.during_tiles)
    side = 2048
    loop_only = model.loop.fixed + model.loop_image_per_pixel * side * side
    with pytest.raises(MemoryBudgetError, match="raise the budget"):
        plan_attack(model, side, side, steps=2, available=loop_only)  # the loop alone, without headroom


def test_the_probe_measures_the_whole_image_context_a_tile_step_holds(tiny_vae_dir: Path, tiny_ae_dir: Path) -> None:
    """A self-attention's gradient pass keeps keys and values of every token of the image (and their gradients):
    bytes per pixel of the WHOLE image that a tile's step holds, invisible to probes whose context is the tile
    (the demo VAE at 12 MP peaked 0.65 GB over its plan). The probe measures them for an attention VAE (16
    channels: ~6 x 16 x 4 B per 64-pixel token), finds none for a convolution-only encoder, and the planner
    counts them beside every tile."""
    from pca_attack.attack.probe import context_bytes_per_pixel

    attention = load_encoder(str(tiny_vae_dir), device="cpu")
    measured = context_bytes_per_pixel(attention)
    assert 2.0 < measured < 20.0, measured
    assert memory_model(attention).context_per_pixel == measured
    assert context_bytes_per_pixel(load_encoder(str(tiny_ae_dir), device="cpu")) == 0.0
    base = replace(_synthetic_model(8), loop_image_per_pixel=72.0, loop_tile_per_pixel=52.0)
    with_context = replace(base, context_per_pixel=40.0)
    assert with_context.tiled_state(12_000_000) - base.tiled_state(12_000_000) == 40.0 * 12_000_000
    plain, counted = (plan_attack(m, 3000, 4000, steps=2, available=2.06e9) for m in (base, with_context))
    assert plain.grid is not None and counted.grid is not None
    assert math.prod(counted.grid.tile_shape) < math.prod(plain.grid.tile_shape)  # less room beside the context
