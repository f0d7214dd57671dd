"""Tiled attack: the tiled loss and gradient equal the untiled ones where the halo covers the receptive field;
every latent position is counted once; progress fires once per step (and per tile); editor resolution."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.eot import resize_long_side
from pca_attack.attack.pgd import Protector
from pca_attack.attack.progress import StepProgress
from pca_attack.attack.tiling import TiledObjective, TileGrid, tiled_posterior
from pca_attack.errors import ConfigError
from pca_attack.models.encoder import Encoder

# Receptive field of the conv-only encoder below: 3x3 (3 px), 3x3/2 (5), 3x3/2 (9), 3x3 at stride 4 (17):
# every latent reads at most 9 px on either side of its own 4x4 block, so a halo of 16 px (4 latents)
# holds its whole receptive field and tiling is exact up to float rounding. (Encoders with GroupNorm or
# attention are global: there the tiled loss is an approximation, measured in benchmarks/large_images.py.)
HALO = 16


def conv_encoder() -> Encoder:
    """An f4 Gaussian encoder made only of convolutions (finite receptive field, no norm, no attention)."""
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(8, 4, 3, padding=1),
    )
    config = {"latent_channels": 2, "block_out_channels": (8, 8, 8)}
    return Encoder(body, None, name="conv-f4", config=config, device=torch.device("cpu"), dtype=torch.float32)


def image(height: int = 46, width: int = 38, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


def four_tiles(x: torch.Tensor) -> TileGrid:
    grid = TileGrid(x.shape[-2], x.shape[-1], factor=4, core=24, halo=HALO)  # latent 12x10 -> 2x2 cores
    assert len(grid) == len(grid.tiles()) == 4
    return grid


@pytest.mark.parametrize("core_width", [0, 40, 136])
def test_tile_cores_cover_every_latent_once(core_width: int) -> None:
    grid = TileGrid(203, 517, factor=8, core=64, halo=32, core_width=core_width)
    count = torch.zeros(grid.latent_shape)
    for tile in grid.tiles():
        count[tile.latent_rows, tile.latent_cols] += 1
        assert tile.rows.start % 8 == 0 and tile.cols.start % 8 == 0  # aligned to the encoder's factor
        assert tile.core_rows.stop - tile.core_rows.start == tile.latent_rows.stop - tile.latent_rows.start
    assert bool((count == 1).all())
    assert len(grid) == len(grid.tiles())
    assert grid.pixels_read() == sum((t.rows.stop - t.rows.start) * (t.cols.stop - t.cols.start) for t in grid.tiles())
    assert max((t.rows.stop - t.rows.start) * (t.cols.stop - t.cols.start) for t in grid.tiles()) == math.prod(
        grid.tile_shape)


def test_rectangular_cores_give_the_untiled_loss_and_gradient() -> None:
    """Rows x columns cores (``core_width``) split the latent as square ones do: 3 x 2 tiles of 4 x 7 latents."""
    encoder, x = conv_encoder(), image(48, 56)
    protector = Protector(encoder, AttackConfig())
    target, generator = protector.target_variance(x), torch.Generator().manual_seed(0)
    loss, grad = TiledObjective(encoder).loss_and_grad(x, target, generator, 1.0)
    grid = TileGrid(48, 56, factor=4, core=16, halo=HALO, core_width=28)
    assert len(grid) == len(grid.tiles()) == 6 and grid.tile_shape == (min(48, 16 + 2 * HALO), min(56, 28 + 2 * HALO))
    loss_t, grad_t = TiledObjective(encoder, grid=grid).loss_and_grad(x, target, generator, 1.0)
    torch.testing.assert_close(loss_t, loss, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(grad_t, grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max()))


@pytest.mark.parametrize("preset", ["pca-", "adaptive", "pca+"])
def test_tiled_loss_and_gradient_equal_untiled_on_four_tiles(preset: str) -> None:
    encoder, x = conv_encoder(), image()
    cfg = AttackConfig(preset=preset)
    protector = Protector(encoder, cfg)
    target = protector.target_variance(x)
    generator = torch.Generator().manual_seed(0)
    whole = TiledObjective(encoder)
    loss, grad = whole.loss_and_grad(x, target, generator, 1.0)  # (B,), (B, 3, H, W)
    tiled = TiledObjective(encoder, grid=four_tiles(x))
    loss_t, grad_t = tiled.loss_and_grad(x, target, generator, 1.0)
    torch.testing.assert_close(loss_t, loss, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(grad_t, grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max()))
    torch.testing.assert_close(tiled.loss(x, target, None), loss, rtol=1e-5, atol=0.0)


def test_too_small_a_halo_is_not_exact() -> None:
    """The equality above is not automatic: without context around each core the loss changes."""
    encoder, x = conv_encoder(), image()
    target = 1e-8
    loss, _ = TiledObjective(encoder).loss_and_grad(x, target, torch.Generator(), 1.0)
    bare = TiledObjective(encoder, grid=TileGrid(x.shape[-2], x.shape[-1], factor=4, core=24, halo=0))
    loss_t, _ = bare.loss_and_grad(x, target, torch.Generator(), 1.0)
    assert not torch.allclose(loss_t, loss, rtol=1e-5, atol=0.0)


def test_tiled_posterior_stitches_the_untiled_posterior() -> None:
    encoder, x = conv_encoder(), image()
    mean, logvar = encoder.posterior(x)
    mean_t, logvar_t = tiled_posterior(encoder, x, four_tiles(x))
    assert logvar_t is not None
    torch.testing.assert_close(mean_t, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logvar_t, logvar, rtol=1e-5, atol=1e-6)


def test_tiled_attack_matches_untiled_attack() -> None:
    encoder, x = conv_encoder(), image()
    cfg = AttackConfig(steps=3)
    plain = Protector(encoder, cfg).protect(x)
    tiled = Protector(encoder, cfg).protect(x, tiles=four_tiles(x))
    torch.testing.assert_close(tiled.loss_trace, plain.loss_trace, rtol=1e-4, atol=0.0)
    assert float((tiled.images - plain.images).abs().max()) <= 1 / 255 + 1e-6  # rounding ties at most


@pytest.mark.parametrize("keep_best", [True, False])
def test_a_tiled_attack_ends_with_one_loss_evaluation_the_final_loss_of_the_returned_image(
    keep_best: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each tiled loss-only pass streams the whole-image statistics: the last iterate's loss (keep_best) is
    measured on the image grid and is then the final loss of the returned bytes, not a second pass."""
    encoder, x = conv_encoder(), image()
    calls: list[int] = []  # loss-only passes, with or without the posterior kept for the certificate
    for name in ("loss", "loss_and_posterior"):
        def counted(self: TiledObjective, *args: Any, _pass: Any = getattr(TiledObjective, name), **kwargs: Any) -> Any:
            calls.append(1)
            return _pass(self, *args, **kwargs)

        monkeypatch.setattr(TiledObjective, name, counted)
    cfg = AttackConfig(steps=3, keep_best=keep_best)
    untiled = Protector(encoder, cfg).protect(x)
    assert len(calls) == 1 + int(keep_best)  # untiled: unchanged (the raw last iterate, then the bytes)
    calls.clear()
    tiled = Protector(encoder, cfg).protect(x, tiles=four_tiles(x))
    assert len(calls) == 1 and torch.equal(tiled.best_step, torch.full((2,), 3))  # the last iterate, measured once
    judge = Protector(encoder, cfg)
    exact = judge.loss(tiled.images, judge.target_variance(x))
    torch.testing.assert_close(tiled.final_loss, exact, rtol=1e-4, atol=0.0)
    torch.testing.assert_close(tiled.final_loss, untiled.final_loss, rtol=1e-3, atol=0.0)


@pytest.mark.parametrize("tiled", [False, True])
def test_progress_fires_once_per_step_and_once_per_tile(tiled: bool) -> None:
    encoder, x = conv_encoder(), image(batch=1)
    events: list[StepProgress] = []
    grid = four_tiles(x) if tiled else None
    Protector(encoder, AttackConfig(steps=3)).protect(x, tiles=grid, progress=events.append)
    tiles = 4 if tiled else 1
    ends = [e for e in events if e.end_of_step]
    assert [e.step for e in ends] == [1, 2, 3]
    assert all(e.loss is not None and e.tiles == tiles for e in ends)
    assert len(events) == 3 * tiles
    assert [e.fraction for e in events] == sorted(e.fraction for e in events)
    assert events[-1].fraction == 1.0 and events[-1].eta_s() == 0.0


def test_editor_resolution_adds_the_downscaled_loss_and_its_gradient() -> None:
    encoder, x = conv_encoder(), image(192, 128, batch=1)
    small = resize_long_side(x, 64)
    assert small.shape[-2:] == (64, 43)
    assert resize_long_side(x, 200) is x  # never upscaled
    plain = Protector(encoder, AttackConfig())
    editor = Protector(encoder, AttackConfig(editor_resolution=64))
    generator = torch.Generator()
    editor.tiled.prepare(x, 1e-8)
    loss_p, grad_p = plain.loss_and_grad(x, 1e-8, generator, 1.0)
    loss_e, grad_e = editor.loss_and_grad(x, 1e-8, generator, 1.0)
    mean, logvar = encoder.posterior(small)
    from pca_attack.attack.losses import pca_loss

    expected = loss_p + (192 * 128) / (64 * 43) * pca_loss(mean, logvar, 1e-8)
    torch.testing.assert_close(loss_e, expected, rtol=1e-5, atol=0.0)
    assert torch.isfinite(grad_e).all() and not torch.allclose(grad_e, grad_p)
    with pytest.raises(ConfigError, match="editor_resolution"):
        AttackConfig(editor_resolution=10)


@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("preset", ["pca-", "adaptive"])
def test_an_image_not_larger_than_the_editor_size_is_attacked_exactly_as_without_the_term(
    preset: str, tiled: bool
) -> None:
    """The editor encodes such an image as it is: no copy, no second encoder pass, the plain loss and gradient
    bit for bit, and no extra pixels in the memory plan."""
    from pca_attack.attack.editor_term import editor_pixels

    encoder, x = conv_encoder(), image(96, 64, batch=1)
    grid = TileGrid(96, 64, factor=4, core=24, halo=HALO) if tiled else None
    target = Protector(encoder, AttackConfig(preset=preset)).target_variance(x)
    results = []
    for side in (None, 128):
        objective = TiledObjective(encoder, grid=grid, editor_resolution=side)
        objective.prepare(x, target)
        calls: list[int] = []
        hook = encoder.register_forward_pre_hook(lambda _m, _a, seen=calls: seen.append(1))
        try:
            results.append((*objective.loss_and_grad(x, target, torch.Generator(), 1.0), len(calls)))
        finally:
            hook.remove()
    (loss_p, grad_p, calls_p), (loss_e, grad_e, calls_e) = results
    assert torch.equal(loss_p, loss_e) and torch.equal(grad_p, grad_e) and calls_p == calls_e
    assert editor_pixels(96, 64, 128) == 0 and editor_pixels(96, 64, None) == 0 and editor_pixels(192, 128, 64) > 0


@pytest.mark.parametrize("preset", ["pca-", "adaptive"])
def test_tiled_attack_encodes_the_editor_copy_in_tiles_with_the_untiled_loss_and_gradient(preset: str) -> None:
    """A tiled attack tiles the editor's downscaled copy too (the main grid's core and halo), sums its tiles'
    gradient and sends it back through the resize: the same loss and gradient as encoding the copy whole, and
    no encoder pass is ever larger than a tile."""
    encoder, x = conv_encoder(), image(192, 128, batch=1)
    config = AttackConfig(preset=preset, editor_resolution=96)
    target = Protector(encoder, config).target_variance(x)
    whole = TiledObjective(encoder, editor_resolution=96)
    whole.prepare(x, target)
    loss, grad = whole.loss_and_grad(x, target, torch.Generator(), 1.0)
    grid = TileGrid(192, 128, factor=4, core=24, halo=HALO)
    tiled = TiledObjective(encoder, grid=grid, editor_resolution=96)
    sides: list[tuple[int, int]] = []
    hook = encoder.register_forward_pre_hook(lambda _m, args: sides.append(tuple(args[0].shape[-2:])))
    try:
        tiled.prepare(x, target)
        loss_t, grad_t = tiled.loss_and_grad(x, target, torch.Generator(), 1.0)
    finally:
        hook.remove()
    assert max(h * w for h, w in sides) <= (24 + 2 * HALO) ** 2  # the 96x64 copy was not encoded whole
    assert tiled.editor is not None and tiled.editor.grid is grid
    torch.testing.assert_close(loss_t, loss, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(grad_t, grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max()))
    torch.testing.assert_close(tiled.loss(x, target, None), loss, rtol=1e-5, atol=0.0)
