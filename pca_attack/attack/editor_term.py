"""The editor-resolution term of the collapse objective (``--editor-resolution N``).

An editor given a large photo first downscales it to about N px on the long side and encodes that copy, so
the attack also collapses the copy: the term is the collapse loss of ``resize(x)`` (a differentiable,
antialiased downscale), weighted by full-size latents per downscaled one, and its gradient flows back through
the resize to the full-size image. An image not larger than N has no term (the editor encodes it as it is).

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

from pca_attack.attack.losses import half_safe_scale, pca_loss
from pca_attack.models.encoder import Encoder, Posterior

if TYPE_CHECKING:
    from pca_attack.attack.tiling import TileGrid  # tiling builds this term: imported for types only

Resize = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) -> (B, 3, h, w), differentiable


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


def copy_grid(grid: TileGrid, height: int, width: int) -> TileGrid:
    """The main grid's tiling (core, halo, statistics, checkpointing) applied to a (height, width) copy."""
    return replace(grid, height=height, width=width)


class EditorTerm:
    """The loss (B,) of the editor's downscaled copy and its gradient w.r.t. the full-size image."""

    def __init__(self, encoder: Encoder, resize: Resize, tiled: Callable[[TileGrid], CopyObjective]) -> None:
        self.encoder = encoder
        self.resize = resize
        self.target: float | torch.Tensor | None = None  # the copy's own target (``prepare``)
        self._tiled = tiled  # builds the copy's tiled objective
        self._grid: TileGrid | None = None  # the main image's grid (None: untiled)
        self._copy: CopyObjective | None = None

    @property
    def grid(self) -> TileGrid | None:
        return self._grid

    @grid.setter
    def grid(self, grid: TileGrid | None) -> None:
        """A new main grid (a new image): the copy's objective and statistics are rebuilt on next use."""
        self._grid, self._copy = grid, None

    def _copy_objective(self, small: torch.Tensor) -> CopyObjective | None:
        """The copy's tiled objective when the main image is tiled (None: encode the copy whole)."""
        if self._grid is None:
            return None
        height, width = small.shape[-2:]
        grid = self._copy.grid if self._copy is not None else None
        if grid is None or (grid.height, grid.width) != (height, width):
            self._copy = self._tiled(copy_grid(self._grid, height, width))
        return self._copy

    @torch.no_grad()
    def prepare(self, x: torch.Tensor, target: float | torch.Tensor) -> None:
        """Fix the copy's target from the clean images x (B, 3, H, W): the same scalar, or (adaptive) the
        clean copy's own posterior variance."""
        if not isinstance(target, torch.Tensor):
            self.target = target
            return
        small = self.resize(x)  # (B, 3, h, w)
        if small is x:  # not larger than the editor's size: no copy to collapse (``evaluate``)
            self.target = None
            return
        copy = self._copy_objective(small)
        _, logvar = self.encoder.posterior(small) if copy is None else copy.posterior(small)
        self.target = None if logvar is None else logvar.float().exp()

    def evaluate(
        self, x: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator | None, sign: float | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The term (B,) fp32, and with ``sign`` the gradient of ``sign * term.sum()`` w.r.t. x (B, 3, H, W)."""
        wanted = self.target if self.target is not None else target
        whole = x.detach().requires_grad_(sign is not None)
        small = self.resize(whole)  # (B, 3, h, w), attached to ``whole`` when a gradient is wanted
        if small is whole:  # not larger than the editor's size: the editor encodes the image itself, which the
            return torch.zeros(x.shape[0], device=x.device), None  # main objective attacks already: no term
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
