"""The ``shift`` EoT preset: the content moved by whole pixels against the encoder's grid, as an editor's free crop
moves it (the red team's ``crop-N``)."""

from __future__ import annotations

import torch

from pca_attack.attack.eot import RandomShift, build_eot


def test_a_shift_moves_whole_pixels_keeps_the_shape_and_passes_the_gradient() -> None:
    x = torch.rand(2, 3, 20, 24, requires_grad=True)
    seen = set()
    for seed in range(40):
        y = RandomShift(7)(x, torch.Generator().manual_seed(seed))
        assert y.shape == x.shape
        moves = [(dy, dx) for dy in range(8) for dx in range(8)
                 if torch.equal(y[..., dy:, dx:], x[..., : 20 - dy, : 24 - dx])]  # the same pixels, moved
        assert len(moves) == 1
        dy, dx = moves[0]
        assert torch.equal(y[..., :dy, dx:], x[..., :1, : 24 - dx].expand(-1, -1, dy, -1))  # top row repeated
        assert torch.equal(y[..., dy:, :dx], x[..., : 20 - dy, :1].expand(-1, -1, -1, dx))  # left column too
        seen.add((dy, dx))
    assert len(seen) > 20 and max(max(s) for s in seen) == 7 and min(min(s) for s in seen) == 0
    y.sum().backward()
    assert x.grad is not None and float(x.grad.sum()) == y.numel()  # every output pixel reads one input pixel


def test_the_preset_is_deterministic_for_a_seed() -> None:
    x = torch.rand(1, 3, 16, 16)
    shift = build_eot("shift")
    first = shift(x, torch.Generator().manual_seed(3))
    assert torch.equal(first, shift(x, torch.Generator().manual_seed(3)))
