"""Tiles hand each other the gradient of their attention keys (``pca_attack.attack.key_gradients``).

The bundled demo VAE (one global self-attention in its mid-block) is the model where it matters: without the
exchange its tiled gradient misses the untiled direction by far more (measured on 192x160 in 9 tiles, with the
GroupNorm sums exchanged too: cosine 0.70 without, 0.998 with on the second pass, 0.90 on the first).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pca_attack.attack.key_gradients import KeyGradients
from pca_attack.attack.tiling import TiledObjective, TileGrid
from pca_attack.models.encoder import Encoder, load_encoder


def _image(height: int, width: int) -> torch.Tensor:
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1))  # (1, 3, H, W)
    return (0.6 * x + 0.4 * torch.linspace(0, 1, width)).clamp(0, 1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def _grad(objective: TiledObjective, x: torch.Tensor) -> torch.Tensor:
    return objective.loss_and_grad(x, 1e-8, torch.Generator(), 1.0)[1]  # (1, 3, H, W)


@pytest.fixture(scope="module")
def demo() -> Encoder:
    return load_encoder("demo", device="cpu")


def test_exchanged_key_gradients_bring_the_tiled_gradient_to_the_untiled_one(
    demo: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _image(192, 160)
    grid = TileGrid(192, 160, factor=8, core=64, halo=48)
    assert len(grid) == 9
    untiled = _grad(TiledObjective(demo), x)
    objective = TiledObjective(demo, grid=grid)
    first, second = _grad(objective, x), _grad(objective, x)  # the second pass receives every tile's part
    monkeypatch.setattr(KeyGradients, "take", lambda self, index, core, where: core)
    monkeypatch.setattr(KeyGradients, "recorder", lambda self, index, context, where: lambda grad: None)
    alone = _grad(TiledObjective(demo, grid=grid), x)
    assert _cosine(second, untiled) > 0.98
    assert _cosine(second, untiled) > _cosine(alone, untiled) + 0.1
    assert _cosine(second, untiled) >= _cosine(first, untiled)  # the first pass lacks the later tiles' part


def test_a_checkpointed_tiled_pass_exchanges_the_same_gradients(tiny_vae_dir: Path) -> None:
    """Gradient checkpointing re-runs forwards in the backward: the exchange happens once, as without it."""
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    x = _image(96, 80)
    grid = TileGrid(96, 80, factor=8, core=32, halo=32)
    plain, checkpointed = TiledObjective(encoder, grid=grid), TiledObjective(encoder, grid=grid)
    checkpointed.checkpoint = True
    for _ in range(2):
        expected, got = _grad(plain, x), _grad(checkpointed, x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)


def test_a_tile_receives_what_others_sent_once_and_never_its_own() -> None:
    exchange = KeyGradients()
    context = torch.zeros(1, 2, 4, 6)  # (B, C, H', W')
    left, right = (slice(0, 4), slice(0, 3)), (slice(0, 4), slice(3, 6))
    exchange.recorder(0, context, left)(torch.ones(1, 2, 4, 6))  # the left tile's backward
    core = torch.zeros(1, 2, 4, 3, requires_grad=True)
    received = exchange.take(0, core, right)
    received.sum().backward()
    assert core.grad is not None and torch.equal(core.grad, torch.full((1, 2, 4, 3), 2.0))  # 1 own + 1 received
    assert float(exchange.buffers[0].abs().sum()) == 0.0  # zeroed where taken; the left tile kept its own out
    again = torch.zeros(1, 2, 4, 3, requires_grad=True)
    exchange.take(0, again, right).sum().backward()
    assert again.grad is not None and torch.equal(again.grad, torch.ones(1, 2, 4, 3))  # received once


def test_a_new_image_forgets_what_the_last_one_sent(demo: Encoder) -> None:
    objective = TiledObjective(demo, grid=TileGrid(96, 80, factor=8, core=32, halo=32))
    _grad(objective, _image(96, 80))
    assert objective.norm is not None and objective.norm.key_grads.buffers
    objective.grid = TileGrid(96, 80, factor=8, core=32, halo=32)
    assert not objective.norm.key_grads.buffers
