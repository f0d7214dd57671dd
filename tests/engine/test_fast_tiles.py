"""The fast mode's generator runs large images in tiles (memory of one tile) with the whole-image result."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pca_attack.fast.generator as generator
from pca_attack.fast.generator import PerturbationNet, logits_in_tiles, perturbation


def _random_net(pattern: int) -> PerturbationNet:
    torch.manual_seed(0)
    net = PerturbationNet(width=8, blocks=3, pattern=pattern)
    nn.init.normal_(net.head.weight, std=0.3)  # the head starts at zero: make the image-conditioned part count
    if pattern:
        nn.init.normal_(net.pattern)
    return net.eval()


@pytest.mark.parametrize("pattern", [0, 32, 48])
def test_tiled_logits_equal_the_whole_image_pass(monkeypatch: pytest.MonkeyPatch, pattern: int) -> None:
    monkeypatch.setattr(generator, "UNTILED_PIXELS", 0)  # tile even this small image
    net = _random_net(pattern)
    x = torch.rand(1, 3, 200, 264)  # (B, 3, H, W), multiples of 4; 64-px cores: 4 x 5 tiles
    with torch.no_grad():
        whole, tiled = net(x), logits_in_tiles(net, x, core=64, halo=64)
    assert tiled.shape == whole.shape
    assert torch.allclose(tiled, whole, atol=1e-5), float((tiled - whole).abs().max())


def test_a_halo_smaller_than_the_receptive_field_would_show(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above can fail: with 4 px of context the tiles' borders differ from the whole pass."""
    monkeypatch.setattr(generator, "UNTILED_PIXELS", 0)
    net = _random_net(0)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert not torch.allclose(logits_in_tiles(net, x, core=64, halo=4), net(x), atol=1e-5)


def test_small_images_run_in_one_pass_and_any_size_gets_its_perturbation(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _random_net(32)
    calls: list[tuple[int, ...]] = []
    net.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))
    x = torch.rand(1, 3, 61, 90)  # odd size: padded to a multiple of 4 and cropped back
    with torch.no_grad():
        delta = perturbation(net, x, torch.tensor([False]), 16.0)
    assert calls == [(1, 3, 64, 92)] and delta.shape == x.shape and float(delta.abs().max()) < 16 / 255
    monkeypatch.setattr(generator, "UNTILED_PIXELS", 0)
    with torch.no_grad():
        tiled = perturbation(net, x, torch.tensor([False]), 16.0)
    assert torch.allclose(tiled, delta, atol=1e-6)


def test_the_memory_benchmark_measures_both_passes_in_fresh_processes() -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "fast_memory.py"
    run = subprocess.run([sys.executable, str(script), "--size", "96x64"], capture_output=True, text=True, check=True)
    result = json.loads(run.stdout)
    for mode in ("tiles", "whole"):
        assert result[mode]["peak_rss_gb"] >= result[mode]["before_gb"] > 0, result
