"""The gradient through a GroupNorm's whole-image statistics, summed over every tile, for tiled passes.

A GroupNorm normalises by the mean and variance of the WHOLE image (``norm_stats``), so every position's
input moves every output of its group through them. The untiled backward of x_hat = (x - mean) * rstd is

    dx = rstd * (g - S1 / N - x_hat * S2 / N),   S1 = sum(g),  S2 = sum(g * x_hat)   over the group's N values

with g the gradient of x_hat. A tile sees its own g only. ``NormGradients`` keeps, per GroupNorm layer, each
tile's latest (S1, S2) over its whole padded input; a tile's backward puts in its own, adds the latest of
every other tile (this step's from the tiles before it, the previous step's from those after it) and applies
the statistics' term at its core's positions (each position of the image once). The estimate it replaces
(the tile's own statistics in gradient, ``norm_stats._straight_through``) divides the tile's own sums by its
own n instead: right only where g is spread evenly over the image.
"""

from __future__ import annotations

from typing import Any

import torch

Sums = tuple[torch.Tensor, torch.Tensor]  # S1, S2: (B, G) each, fp32
Tile = tuple[int, int, int]  # a tile's core's first row and column in the image, and the EoT draw


class NormGradients:
    """Per GroupNorm layer, each tile's latest sums of its gradient (``Sums``), keyed by the tile's position."""

    def __init__(self) -> None:
        self.sums: dict[int, dict[Tile, Sums]] = {}  # layer -> tile (its core's first pixel, EoT draw) -> sums

    def forget(self) -> None:
        """A new image: nothing sent yet."""
        self.sums = {}

    def totals(self, index: int, tile: Tile, own: Sums) -> Sums:
        """``own`` stored as ``tile``'s latest; the sums (B, G) each over every tile's latest of the same draw."""
        layer = self.sums.setdefault(index, {})
        layer[tile] = own
        first, second = own[0].clone(), own[1].clone()
        for key, (s1, s2) in layer.items():
            if key != tile and key[2] == tile[2] and s1.shape == first.shape:  # other tiles, the same draw
                first, second = first + s1, second + s2
        return first, second


class ExchangedNorm(torch.autograd.Function):
    """x_hat = (x - mean) * rstd of a tile's input (B, C, ...) with whole-image statistics (B, G); its backward
    adds the statistics' term of the whole image's gradient at the tile's core (``core``: a 0/1 mask)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, core: torch.Tensor,
                exchange: NormGradients, key: tuple[int, Tile], count: int) -> torch.Tensor:
        per = x.shape[1] // mean.shape[1]
        shape = (*mean.shape[:1], x.shape[1], *[1] * (x.dim() - 2))  # (B, C, 1, ...)
        x_hat = (x.float() - mean.repeat_interleave(per, 1).reshape(shape)) * rstd.repeat_interleave(per, 1).reshape(
            shape)  # (B, C, ...)
        ctx.save_for_backward(x_hat, rstd, core)
        ctx.exchange, ctx.key, ctx.count, ctx.per = exchange, key, count, per
        return x_hat.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_hat, rstd, core = ctx.saved_tensors
        g = grad.float()  # (B, C, ...)
        batch, groups = rstd.shape
        own = (g.reshape(batch, groups, -1).sum(-1), (g * x_hat).reshape(batch, groups, -1).sum(-1))  # (B, G) each
        index, tile = ctx.key
        s1, s2 = ctx.exchange.totals(index, tile, own)
        shape = (batch, g.shape[1], *[1] * (g.dim() - 2))  # (B, C, 1, ...)

        def per_channel(t: torch.Tensor) -> torch.Tensor:
            return t.repeat_interleave(ctx.per, 1).reshape(shape)

        term = (per_channel(s1) + x_hat * per_channel(s2)) / ctx.count  # (B, C, ...)
        dx = per_channel(rstd) * (g - term * core)
        return dx.to(grad.dtype), None, None, None, None, None, None
