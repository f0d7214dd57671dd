"""The editor-resolution term of the collapse objective (``--editor-resolution N``).

An editor given a large photo first downscales it to about N px on the long side and encodes that copy, so
the attack also collapses the copy: the term is the collapse loss of ``resize(x)`` (a differentiable,
antialiased downscale), weighted by full-size latents per downscaled one, and its gradient flows back through
the resize to the full-size image. An image not larger than N has no term (the editor encodes it as it is).
With ``editor_spread`` s > 0, each gradient pass draws the copy's long side from five sizes N/(1+s)..N(1+s)
(``pca_attack.attack.eot.editor_sizes``; the editor's exact size is not known), each with its own target and
tiled objective, kept once built; a loss-only pass without a generator (the final loss) measures size N.

* **Untiled attack**: the copy is encoded whole, in one graph from x through the resize and the encoder.
* **Tiled attack**: the copy is encoded in tiles of the main grid's core and halo (with its own whole-image
  statistics, measured as the main grid's are), its gradient summed over those tiles, then sent back through
  the resize (a linear map: its backward holds no activations). A step's editor pass thus needs the memory
  of one tile, not of the copy's whole encoder pass (~1.9 GB for a 1024 px copy with TAEF2), and it runs
  before the main tiles: its full-size gradient is where their gradients are then summed, so it costs no
  extra whole-image buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import torch

from pca_attack.attack.eot import downscaled, editor_sizes, resize_long_side
from pca_attack.attack.losses import half_safe_scale, pca_loss
from pca_attack.models.encoder import Encoder, Posterior

if TYPE_CHECKING:
    from pca_attack.attack.tiling import TileGrid  # tiling builds this term: imported for types only

class CopyObjective(Protocol):
    """The tiled objective of the downscaled copy (``pca_attack.attack.tiling.TiledObjective``)."""

    grid: TileGrid | None

    def posterior(self, x: torch.Tensor) -> Posterior: ...

    def loss(
        self, x: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor: ...

    def loss_and_grad(
        self, x: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator, sign: float
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def editor_weight(height: int, width: int, small: torch.Tensor) -> float:
    """Weight of the editor-resolution loss: full-size latent elements per downscaled one (equal say)."""
    return (height * width) / float(small.shape[-2] * small.shape[-1])


def editor_pixels(height: int, width: int, long_side: int | None, spread: float = 0.0) -> int:
    """Pixels of the largest editor-resolution copy (0 without one, or when the image is not larger than N: no
    copy); with ``spread``, of the largest drawn size that still downscales the image."""
    if long_side is None or not downscaled(height, width, long_side):
        return 0
    side = max(s for s in editor_sizes(long_side, spread) if downscaled(height, width, s))  # N among them
    scale = side / max(height, width)
    return max(8, round(height * scale)) * max(8, round(width * scale))


def copy_grid(grid: TileGrid, height: int, width: int) -> TileGrid:
    """The main grid's tiling (core, halo, statistics, checkpointing) applied to a (height, width) copy."""
    return replace(grid, height=height, width=width)


class EditorTerm:
    """The loss (B,) of the editor's downscaled copy and its gradient w.r.t. the full-size image."""

    def __init__(self, encoder: Encoder, long_side: int, spread: float,
                 tiled: Callable[[TileGrid], CopyObjective]) -> None:
        self.encoder = encoder
        self.long_side = long_side  # N: the term applies to images larger than it
        self.sizes = editor_sizes(long_side, spread)  # the long sides a gradient pass draws from (N alone: spread 0)
        self._tiled = tiled  # builds a copy's tiled objective
        self._grid: TileGrid | None = None  # the main image's grid (None: untiled)
        self._copies: dict[tuple[int, int], CopyObjective] = {}  # (h, w) of a copy -> its tiled objective
        self._targets: dict[int, torch.Tensor | None] = {}  # long side -> the clean copy's variance (adaptive)
        self._clean: torch.Tensor | None = None  # (B, 3, H, W) clean images, for adaptive targets (``prepare``)

    @property
    def grid(self) -> TileGrid | None:
        return self._grid

    @grid.setter
    def grid(self, grid: TileGrid | None) -> None:
        """A new main grid (a new image): the copies' objectives and statistics are rebuilt on next use."""
        self._grid, self._copies = grid, {}

    def _copy_objective(self, small: torch.Tensor) -> CopyObjective | None:
        """The copy's tiled objective when the main image is tiled (None: encode the copy whole)."""
        if self._grid is None:
            return None
        height, width = small.shape[-2:]
        if (height, width) not in self._copies:
            self._copies[(height, width)] = self._tiled(copy_grid(self._grid, height, width))
        return self._copies[(height, width)]

    def prepare(self, x: torch.Tensor, target: float | torch.Tensor) -> None:
        """Keep the clean images x (B, 3, H, W) when the target is adaptive: each copy's target is then the clean
        copy's own posterior variance, measured at its first use (a scalar target is the same for every copy)."""
        self._clean = x if isinstance(target, torch.Tensor) else None
        self._targets = {}

    @torch.no_grad()
    def _target(self, side: int, target: float | torch.Tensor) -> float | torch.Tensor:
        """The copy's target at ``side``: the scalar target, or the clean copy's posterior variance."""
        if self._clean is None:
            return target
        if side not in self._targets:
            small = resize_long_side(self._clean, side)  # (B, 3, h, w)
            copy = self._copy_objective(small)
            _, logvar = self.encoder.posterior(small) if copy is None else copy.posterior(small)
            self._targets[side] = None if logvar is None else logvar.float().exp()
        wanted = self._targets[side]
        return target if wanted is None else wanted

    def _draw(self, generator: torch.Generator | None) -> int:
        """This pass's long side: N, or one of ``sizes`` drawn with the pass's generator."""
        if len(self.sizes) == 1 or generator is None:
            return self.long_side
        return self.sizes[int(torch.randint(len(self.sizes), (), generator=generator))]

    def evaluate(
        self, x: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator | None, sign: float | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The term (B,) fp32, and with ``sign`` the gradient of ``sign * term.sum()`` w.r.t. x (B, 3, H, W)."""
        none = torch.zeros(x.shape[0], device=x.device), None
        if not downscaled(x.shape[-2], x.shape[-1], self.long_side):  # the editor encodes the image itself,
            return none  # which the main objective attacks already: no term
        side = self._draw(generator)
        whole = x.detach().requires_grad_(sign is not None)
        small = resize_long_side(whole, side)  # (B, 3, h, w), attached to ``whole`` when a gradient is wanted
        if small is whole:  # a drawn size not smaller than the image: no copy this pass
            return none
        wanted = self._target(side, target)
        weight = editor_weight(x.shape[-2], x.shape[-1], small)
        copy = self._copy_objective(small)
        if copy is None:  # one graph: x -> resize -> encoder
            mean, logvar = self.encoder.posterior(small)
            term = weight * pca_loss(mean, logvar, wanted)  # (B,)
            if sign is None:
                return term.detach().float(), None
            scale = half_safe_scale(self.encoder.dtype, target)
            (grad,) = torch.autograd.grad((sign * scale * term).sum(), whole)  # (B, 3, H, W)
            return term.detach().float(), grad / scale
        if sign is None:
            return weight * copy.loss(small.detach(), wanted, None), None
        assert generator is not None  # a gradient pass always has one (the EoT draws)
        loss, grad_small = copy.loss_and_grad(small.detach(), wanted, generator, sign * weight)  # (B,), (B, 3, h, w)
        (grad,) = torch.autograd.grad(small, whole, grad_small)  # back through the resize: (B, 3, H, W)
        return weight * loss, grad
