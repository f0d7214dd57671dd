"""The gradient a tile's self-attention sends to OTHER tiles' keys and values, handed to those tiles.

In a tiled gradient pass a tile's queries attend to the whole image's keys and values (its own core live,
every other position from the recorded context, a constant). The untiled gradient also flows from those
queries into the other positions' keys and values, and from there into the pixels of the tiles they belong
to; a tile cannot push it there itself. Without it, on the demo VAE (one mid-block attention) the tiled input
gradient of a 512x384 image in 6 tiles had cosine 0.43 with the untiled one, and the perturbation it drew
was twice as large for the same loss; with it, 0.98 (``benchmarks/large_images.py --parts agreement``).

``KeyGradients`` keeps, per attention layer, one whole-image buffer (B, C, H', W') of that gradient on the
layer's normalised input (what keys and values are projected from):

* after each tile's backward, a hook adds the gradient of its keys' input at every position OUTSIDE its core;
* before a tile's forward, ``take`` reads its core's part, zeroes it there, and adds it to the gradient of
  the tile's live core in the coming backward.

So a tile receives, once, the latest contribution of every other tile: this step's from the tiles before it,
the previous step's from the tiles after it (one buffer, no second copy; the first step lacks the latter).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Where = tuple[slice, slice]  # a core's rows and columns on the layer's whole-image grid


class _AddGradient(torch.autograd.Function):
    """Identity in the forward; adds a fixed tensor to the gradient in the backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        ctx.extra = extra  # type: ignore[attr-defined]
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad + ctx.extra.to(grad.dtype), None  # type: ignore[attr-defined]


class KeyGradients:
    """Per attention layer, the whole-image buffer of gradients other tiles sent to its keys' input."""

    def __init__(self) -> None:
        self.buffers: dict[int, torch.Tensor] = {}  # layer index -> (B, C, H', W') fp32

    def forget(self) -> None:
        """A new image: nothing received yet."""
        self.buffers = {}

    def take(self, index: int, core: torch.Tensor, where: Where) -> torch.Tensor:
        """``core`` (B, C, h, w), the tile's live normalised core, with what other tiles sent it added to its
        gradient; that part of the buffer is zeroed (received once)."""
        buffer = self.buffers.get(index)
        if buffer is None or buffer.shape[:2] != core.shape[:2]:
            return core
        received = buffer[(..., *where)].clone()  # (B, C, h, w)
        buffer[(..., *where)] = 0.0
        return _AddGradient.apply(core, received)

    def recorder(self, index: int, context: torch.Tensor, where: Where) -> Callable[[torch.Tensor], None]:
        """A hook for the whole-image keys' input (B, C, H', W') of one tile: adds its gradient outside the
        tile's core (``where``) into the buffer of ``context``'s shape."""

        def record(grad: torch.Tensor) -> None:
            buffer = self.buffers.get(index)
            if buffer is None or buffer.shape != context.shape:
                buffer = self.buffers[index] = torch.zeros(context.shape, device=grad.device)
            own = buffer[(..., *where)].clone()  # (B, C, h, w): the tile's own core is not sent to itself
            buffer.add_(grad.detach().float())
            buffer[(..., *where)] = own

        return record
