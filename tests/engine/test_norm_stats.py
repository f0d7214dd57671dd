"""Whole-image GroupNorm statistics and attention context for tiles; gradient checkpointing of the encoder.

Tolerances: a float32 forward of the same image in different tile shapes differs by summation order only
(relative 1e-6 per element, the loss sums a few thousand of them), and a halo that holds nearly all of the
receptive field leaves a residue far below 1e-4. Without the whole-image statistics the same tiles miss the
untiled loss by percent (asserted, so the equality is not automatic).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.norm_stats import WholeImageNorm, context_layers
from pca_attack.attack.pgd import Protector
from pca_attack.attack.tiling import TiledObjective, TileGrid, measure_norm, tiled_posterior
from pca_attack.models.encoder import Encoder, load_encoder
from pca_attack.models.tiny_ae import Block

HALO = 16  # the GN encoder below reads at most 9 px around a latent's own 4x4 block (see test_tiling.py)


def gn_encoder() -> Encoder:
    """An f4 Gaussian encoder of convolutions and GroupNorms (finite receptive field, global statistics)."""
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.GroupNorm(4, 8), nn.SiLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8), nn.SiLU(),
        nn.Conv2d(8, 4, 3, padding=1),
    )
    config = {"latent_channels": 2, "block_out_channels": (8, 8, 8)}
    return Encoder(body, None, name="gn-f4", config=config, device=torch.device("cpu"), dtype=torch.float32)


def image(height: int = 46, width: int = 38, batch: int = 2, seed: int = 1) -> torch.Tensor:
    x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    ramp = torch.linspace(0, 1, width)  # uneven statistics across the image: tiles see different ones
    return (0.6 * x + 0.4 * ramp).clamp(0, 1)


def losses(encoder: Encoder, x: torch.Tensor, grid: TileGrid) -> tuple[float, float, float]:
    """Untiled loss, tiled with whole-image statistics, tiled with each tile's own (first image)."""
    whole = float(TiledObjective(encoder).loss(x, 1e-8, None)[0])
    tiled = float(TiledObjective(encoder, grid=grid).loss(x, 1e-8, None)[0])
    local = TiledObjective(encoder, grid=grid)
    local.norm = None
    return whole, tiled, float(local.loss(x, 1e-8, None)[0])


def test_layers_are_found_in_forward_order(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    layers = context_layers(encoder)
    names = {id(m): n for n, m in encoder.named_modules()}
    order = [names[id(m)] for m in layers]
    attention = order.index("encoder.mid_block.attentions.0")
    assert order[attention - 1] == "encoder.mid_block.attentions.0.group_norm"  # its own norm just before
    assert order.index("encoder.mid_block.resnets.0.norm2") < attention < order.index(
        "encoder.mid_block.resnets.1.norm1")
    assert order[-1] == "encoder.conv_norm_out"
    assert not WholeImageNorm(load_encoder(str(tiny_vae_dir), device="cpu").encoder.conv_in)  # type: ignore[arg-type]


def test_streamed_statistics_equal_the_whole_pass() -> None:
    encoder, x = gn_encoder(), image()
    grid = TileGrid(x.shape[-2], x.shape[-1], factor=4, core=16, halo=HALO)
    assert len(grid) > 4
    streamed, whole = WholeImageNorm(encoder), WholeImageNorm(encoder)
    measure_norm(streamed, encoder, x, grid)
    measure_norm(whole, encoder, x, TileGrid(x.shape[-2], x.shape[-1], 4, 16, HALO, whole_pass=True))
    assert set(streamed.frozen) == set(whole.frozen) == {0, 1, 2}
    for index, (mean, var) in whole.frozen.items():
        assert mean.shape == var.shape == (2, encoder.encoder[3 * index + 1].num_groups)  # (B, G)
        torch.testing.assert_close(streamed.frozen[index][0], mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(streamed.frozen[index][1], var, rtol=1e-5, atol=1e-6)


def test_tiled_loss_with_whole_image_statistics_equals_untiled() -> None:
    encoder, x = gn_encoder(), image()
    grid = TileGrid(x.shape[-2], x.shape[-1], factor=4, core=24, halo=HALO)
    whole, tiled, local = losses(encoder, x, grid)
    assert tiled == pytest.approx(whole, rel=1e-5)
    assert abs(local / whole - 1) > 1e-3  # the per-tile statistics are not the image's
    mean, _ = encoder.posterior(x)
    norm = WholeImageNorm(encoder)
    measure_norm(norm, encoder, x, grid)
    torch.testing.assert_close(tiled_posterior(encoder, x, grid, norm)[0], mean, rtol=1e-4, atol=1e-5)


def test_diffusers_vae_tiles_see_whole_image_statistics_and_attention(tiny_vae_dir: Path) -> None:
    """GroupNorm everywhere and a global self-attention in the mid-block (the demo's architecture)."""
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    x = image(192, 160, batch=1)
    grid = TileGrid(192, 160, factor=8, core=64, halo=64)
    assert len(grid) == 9
    whole, tiled, local = losses(encoder, x, grid)
    assert tiled == pytest.approx(whole, rel=1e-4)
    assert abs(local / whole - 1) > 10 * abs(tiled / whole - 1)


def test_loss_only_tiled_passes_evaluate_the_whole_image_attention_once(
    tiny_vae_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loss-only tiled pass (statistics streamed layer by layer, then the loss) evaluates the mid-block
    attention over the whole image ONCE and crops every tile's part from it: the same posterior as the untiled
    encoder, where attention per tile and per streaming pass would re-run the image's keys each time."""
    import pca_attack.attack.norm_stats as norm_stats

    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    x = image(192, 160, batch=1)
    grid = TileGrid(192, 160, factor=8, core=64, halo=96)  # the halo covers this encoder's convolutions
    calls: list[tuple[int, ...]] = []
    whole = norm_stats.whole_term
    monkeypatch.setattr(norm_stats, "whole_term", lambda attn, ctx: calls.append(tuple(ctx.shape)) or whole(attn, ctx))
    norm = WholeImageNorm(encoder)
    measure_norm(norm, encoder, x, grid)  # the layers after the attention stream with the whole-image term
    assert [shape[-2:] for shape in calls] == [(24, 20)]  # once, over the whole (192/8 x 160/8) latent grid
    mean, _ = tiled_posterior(encoder, x, grid, norm)
    assert len(calls) == 1  # the same context: reused by all 9 tiles of the loss pass
    torch.testing.assert_close(mean, encoder.posterior(x)[0], rtol=1e-4, atol=1e-5)
    measure_norm(norm, encoder, (x * 0.5).clamp(0, 1), grid)  # a new image: a new context, a new term
    assert len(calls) == 2


@pytest.mark.parametrize("stats", ["exact", "lagged"])
def test_tiled_attack_with_norm_layers_tracks_the_untiled_attack(stats: str) -> None:
    """Exact statistics: the traced losses are the untiled objective's (the gradient differs only through
    the statistics' own term); lagged ones (one step stale) stay close too."""
    encoder, x = gn_encoder(), image(batch=1)
    grid = TileGrid(x.shape[-2], x.shape[-1], factor=4, core=24, halo=HALO, stats=stats)
    cfg = AttackConfig(steps=4)
    plain = Protector(encoder, cfg).protect(x)
    tiled = Protector(encoder, cfg).protect(x, tiles=grid)
    torch.testing.assert_close(tiled.loss_trace[:, 0], plain.loss_trace[:, 0], rtol=1e-5, atol=0.0)
    assert float(tiled.final_loss[0]) < 0.9 * float(tiled.clean_loss[0])  # it attacks
    assert float(tiled.final_loss[0]) == pytest.approx(float(plain.final_loss[0]), rel=0.02)
    judge = Protector(encoder, cfg)  # the tiled result's final loss is its untiled loss
    untiled_final = float(judge.loss(tiled.images, judge.target_variance(x))[0])
    assert float(tiled.final_loss[0]) == pytest.approx(untiled_final, rel=1e-4)


def _sequential_encoder() -> Encoder:
    """A tiny-autoencoder-like sequential body: convolutions and residual blocks with a pooled GroupNorm."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Block(8, 16), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         Block(8, 16), nn.Conv2d(8, 4, 3, padding=1))
    return Encoder(body, None, name="seq", config={}, device=torch.device("cpu"), dtype=torch.float32,
                   posterior_type="deterministic", signed_input=False, latent_channels=4, downsample_factor=2)


@pytest.mark.parametrize("kind", ["diffusers", "sequential"])
def test_checkpointing_gives_identical_gradients(kind: str, tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu") if kind == "diffusers" else _sequential_encoder()
    x = image(64, 48, batch=1)
    objective = TiledObjective(encoder)
    loss, grad = objective.loss_and_grad(x, 1e-8, torch.Generator(), 1.0)
    objective.checkpoint = True
    counted: list[int] = []
    hook = nn.modules.module.register_module_forward_hook(lambda *_: counted.append(1))
    try:
        loss_c, grad_c = objective.loss_and_grad(x, 1e-8, torch.Generator(), 1.0)
        with_checkpoint = len(counted)
        counted.clear()
        objective.checkpoint = False
        objective.loss_and_grad(x, 1e-8, torch.Generator(), 1.0)
    finally:
        hook.remove()
    assert with_checkpoint > len(counted)  # blocks really ran again in the backward
    assert torch.equal(loss_c, loss) and torch.equal(grad_c, grad)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in encoder.modules())  # switched back
    assert math.isfinite(float(grad.abs().sum()))


def test_other_threads_run_the_plain_encoder_while_a_tiled_pass_holds_the_patch() -> None:
    import threading

    encoder, x = gn_encoder(), image(batch=1)
    expected = encoder.posterior(x)[0]
    norm = WholeImageNorm(encoder)
    norm.frozen = {i: (torch.full((1, m.num_groups), 5.0), torch.ones(1, m.num_groups))
                   for i, m in enumerate(norm.layers)}  # statistics far from this image's
    seen: list[torch.Tensor] = []
    with norm.installed():
        patched = encoder.posterior(x)[0]
        thread = threading.Thread(target=lambda: seen.append(encoder.posterior(x)[0]))
        thread.start()
        thread.join()
    assert not torch.allclose(patched, expected)
    torch.testing.assert_close(seen[0], expected)
    torch.testing.assert_close(encoder.posterior(x)[0], expected)  # removed afterwards


CERTIFIED = ("loss_clean", "loss_protected", "kl_clean", "kl_protected", "target_kl_clean", "target_kl_protected",
             "latent_drift", "mean_energy_clean", "mean_energy_protected")


@pytest.mark.parametrize("kind", ["gn", "diffusers"])
def test_tiled_certificate_equals_the_untiled_one(
    kind: str, tiny_vae_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a memory scope too small for a whole forward, the certificate's posterior is measured in tiles
    with the whole image's statistics (and attention context): its loss, KL, drift and energy figures equal
    the untiled certificate's (to 0.1%); with each tile's own statistics they would not (> 1% off)."""
    import numpy as np

    import pca_attack.attack.memory as memory
    from pca_attack.certify.report import certificate
    from pca_attack.io.images import decode_image
    from tests.conftest import to_bytes

    encoder = gn_encoder() if kind == "gn" else load_encoder(str(tiny_vae_dir), device="cpu")
    model = memory.memory_model(encoder)
    core = 32 if kind == "gn" else 64
    side = core + 2 * model.halo  # the tiles posterior_in_budget will cut
    height, width = side + 2 * core, side + core
    available = memory.HEADROOM * (model.forward.fixed + model.forward.per_pixel * side * side)
    assert model.forward(height * width) * memory.HEADROOM > available  # the whole forward would not fit
    x = image(height, width, batch=1)[0]  # (3, H, W)
    noise = torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(3))) * 8 / 255
    pixels = [np.round(t.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for t in (x, (x + noise).clamp(0, 1))]
    clean, written = (decode_image(to_bytes(Image.fromarray(p))) for p in pixels)

    def certify() -> dict[str, float]:
        cert = certificate(encoder=encoder, config=AttackConfig(), clean=clean, written=written, fmt="png",
                           quality=None, steps_run=1, best_step=0, elapsed_s=0.0)
        return {name: float(getattr(cert, name)) for name in CERTIFIED}

    grids: list[int] = []
    stitch = memory.tiled_posterior
    monkeypatch.setattr(memory, "tiled_posterior", lambda e, x, grid, norm=None: grids.append(len(grid)) or stitch(
        e, x, grid, norm))
    untiled = certify()
    with memory.memory_scope(available):
        tiled = certify()
        assert grids and min(grids) > 1  # both posteriors were measured in tiles
        monkeypatch.setattr(memory, "WholeImageNorm", lambda encoder: None)  # each tile's own statistics
        local = certify()
    for name in CERTIFIED:  # the halo holds the posterior within HALO_TOLERANCE (1%) at the tile borders
        assert tiled[name] == pytest.approx(untiled[name], rel=1e-3, abs=1e-7), name
    assert max(abs(local[n] / untiled[n] - 1) for n in CERTIFIED if untiled[n]) > 1e-2  # not automatic
