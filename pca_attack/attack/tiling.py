"""The collapse loss and its input gradient computed tile by tile: the memory of one tile for any image.

The latent grid of an (H, W) image (``ceil(H/f) x ceil(W/f)`` for an encoder of spatial factor f) is cut
into *cores* (square, or rows x columns balanced so the tiles read the fewest pixels:
``pca_attack.attack.tile_cores``). Each tile is its core's pixels plus a *halo* (a multiple of f) on every
side, clipped to the image. The encoder sees the whole tile, but only the tile's core latents enter the loss, so every
latent position is counted exactly once, and the total is the untiled loss wherever the halo covers the
encoder's receptive field (exactly so for convolution-only encoders). GroupNorm layers normalise every
tile with the WHOLE image's statistics and self-attention layers attend to the whole image's context
(``pca_attack.attack.norm_stats``): measured exactly before every pass (``TileGrid.stats="exact"``: one
no-grad pass of the whole image when it fits, else one streaming tile pass per layer), or, for images whose
streaming would cost too much, measured once and then carried one step stale from each gradient pass
(``"lagged"``; loss-only evaluations are still exact). Gradients of the tiles are
summed into one full-size gradient (the sum of the core losses is the objective, so the sum of their
gradients is its gradient) and the PGD loop updates the whole image once per step.

``TiledObjective`` is what ``Protector`` asks for the loss and the gradient: untiled or tiled, with
EoT (the same random draws replayed for every tile of a step) and the optional editor-resolution term
(``--editor-resolution``: the loss of the image after the differentiable downscale an editor applies).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from pca_attack.attack.editor_term import EditorTerm
from pca_attack.attack.losses import half_safe_scale, pca_loss
from pca_attack.attack.norm_stats import Region, WholeImageNorm, measure
from pca_attack.models.encoder import Encoder, Posterior

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
TileCallback = Callable[[int, int], None]  # (tiles done, tiles in all) within the current step


@dataclass(frozen=True)
class Tile:
    """One tile: the input pixels it reads and the core latents it owns."""

    rows: slice  # input pixel rows of the full image
    cols: slice  # input pixel columns
    core_rows: slice  # core latent rows inside the tile's own latent
    core_cols: slice
    latent_rows: slice  # the same core latents inside the full image's latent
    latent_cols: slice


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles of an (height, width) image aligned to the encoder's factor.

    core: height of a tile's core in pixels (a multiple of factor), and its width unless ``core_width`` is
    given; halo: pixels read around it (a multiple of factor, ideally >= the encoder's receptive radius).
    """

    height: int
    width: int
    factor: int
    core: int
    halo: int
    whole_pass: bool = False  # the GroupNorm statistics may come from one no-grad pass of the whole image
    checkpoint: bool = False  # gradient checkpointing of the encoder's blocks in each tile's pass
    stats: str = "exact"  # GroupNorm statistics: "exact" (measured before every pass) or "lagged" (see below)
    core_width: int = 0  # a core's width in pixels (0: ``core``, square cores)

    def __post_init__(self) -> None:
        cores = (self.core, self.cols_core)
        if min(cores) <= 0 or any(c % self.factor for c in cores) or self.halo < 0 or self.halo % self.factor:
            raise ValueError(f"cores {cores} and halo={self.halo} must be positive multiples of factor={self.factor}")

    @property
    def cols_core(self) -> int:
        """A core's width in pixels."""
        return self.core_width or self.core

    @property
    def latent_shape(self) -> tuple[int, int]:
        return math.ceil(self.height / self.factor), math.ceil(self.width / self.factor)

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(height, width) of the largest tile in pixels: core plus halo on both sides, clipped to the image."""
        return min(self.height, self.core + 2 * self.halo), min(self.width, self.cols_core + 2 * self.halo)

    @property
    def tile_side(self) -> int:
        """Largest tile side in pixels (core plus halo on both sides, clipped to the image)."""
        return max(self.tile_shape)

    def _spans(self, size: int, latent: int, core: int) -> Iterator[tuple[slice, slice, slice]]:
        step, f = core // self.factor, self.factor
        for l0 in range(0, latent, step):
            l1 = min(l0 + step, latent)
            i0, i1 = max(0, l0 * f - self.halo), min(size, l1 * f + self.halo)
            offset = (l0 * f - i0) // f
            yield slice(i0, i1), slice(offset, offset + l1 - l0), slice(l0, l1)

    def tiles(self) -> list[Tile]:
        lh, lw = self.latent_shape
        return [
            Tile(rows, cols, core_r, core_c, lat_r, lat_c)
            for rows, core_r, lat_r in self._spans(self.height, lh, self.core)
            for cols, core_c, lat_c in self._spans(self.width, lw, self.cols_core)
        ]

    def __len__(self) -> int:
        lh, lw = self.latent_shape
        return math.ceil(lh * self.factor / self.core) * math.ceil(lw * self.factor / self.cols_core)

    def region(self, tile: Tile) -> Region:
        """The tile's core in pixels of its own (padded) encoder input, and where that input sits."""
        f = self.factor
        height = math.ceil((tile.rows.stop - tile.rows.start) / f) * f
        width = math.ceil((tile.cols.stop - tile.cols.start) / f) * f
        full = (self.latent_shape[0] * f, self.latent_shape[1] * f)
        return Region((tile.core_rows.start * f, tile.core_rows.stop * f),
                      (tile.core_cols.start * f, tile.core_cols.stop * f),
                      height, width, tile.rows.start, tile.cols.start, full)

    def whole_region(self) -> Region:
        """The whole padded image as one core."""
        height, width = (side * self.factor for side in self.latent_shape)
        return Region((0, height), (0, width), height, width)

    def pixels_read(self) -> int:
        """Input pixels the encoder sees per step over all tiles (halo overlap included)."""
        lh, lw = self.latent_shape
        rows = sum(r.stop - r.start for r, _, _ in self._spans(self.height, lh, self.core))
        return rows * sum(c.stop - c.start for c, _, _ in self._spans(self.width, lw, self.cols_core))


def _crop_target(target: float | torch.Tensor, tile: Tile) -> float | torch.Tensor:
    """The tile's core part of a per-element target (B, C, h, w); scalars pass through."""
    if isinstance(target, torch.Tensor) and target.dim() == 4:
        return target[..., tile.latent_rows, tile.latent_cols]
    return target


def _core_posterior(
    encoder: Encoder, x_tile: torch.Tensor, tile: Tile
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The core latents of a tile's posterior; logvar is None for a deterministic encoder."""
    mean, logvar = encoder.posterior(x_tile)  # (B, C, th, tw)
    core = (..., tile.core_rows, tile.core_cols)
    return mean[core], None if logvar is None else logvar[core]


def measure_norm(norm: WholeImageNorm, encoder: Encoder, x: torch.Tensor, grid: TileGrid) -> None:
    """Exact whole-image GroupNorm statistics of x (B, 3, H, W): one whole pass when the grid allows it,
    else one streaming tile pass per layer."""
    def pieces() -> Iterator[tuple[torch.Tensor, Region]]:
        return ((x[..., t.rows, t.cols], grid.region(t)) for t in grid.tiles())

    measure(norm, encoder, pieces, (x, grid.whole_region()) if grid.whole_pass else None)


@torch.no_grad()
def tiled_posterior(
    encoder: Encoder, x: torch.Tensor, grid: TileGrid, norm: WholeImageNorm | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 posterior (mean, logvar), each (B, C, ceil(H/f), ceil(W/f)), stitched from the tiles' cores;
    GroupNorm layers use ``norm``'s frozen whole-image statistics when given (tile-local without)."""
    mean: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    with norm.installed() if norm else nullcontext():
        for tile in grid.tiles():
            m, lv = tile_posterior(encoder, x, grid, tile, norm)  # (B, C, ch, cw)
            mean, logvar = _stitch(mean, logvar, m, lv, tile, grid, x.shape[0])
    assert mean is not None
    return mean, logvar


@torch.no_grad()
def tile_posterior(
    encoder: Encoder, x: torch.Tensor, grid: TileGrid, tile: Tile, norm: WholeImageNorm | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One tile's core posterior (B, C, ch, cw) of x (B, 3, H, W); with ``norm`` (installed by the caller) the
    tile is placed in the image, so attention splices its core into the whole image's context."""
    if norm:
        norm.region = grid.region(tile)
    return _core_posterior(encoder, x[..., tile.rows, tile.cols], tile)


def _stitch(
    mean: torch.Tensor | None, logvar: torch.Tensor | None, m: torch.Tensor, lv: torch.Tensor | None,
    tile: Tile, grid: TileGrid, batch: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Write one tile's core posterior (B, C, ch, cw) into the full-size ones (allocated on first use)."""
    if mean is None:
        shape = (batch, m.shape[1], *grid.latent_shape)
        mean = torch.empty(shape, device=m.device)
        logvar = None if lv is None else torch.empty(shape, device=m.device)
    mean[..., tile.latent_rows, tile.latent_cols] = m.float()
    if logvar is not None and lv is not None:
        logvar[..., tile.latent_rows, tile.latent_cols] = lv.float()
    return mean, logvar


class TiledObjective:
    """Loss (B,) and input gradient (B, 3, H, W) of the collapse objective, untiled or tile by tile."""

    def __init__(
        self,
        encoder: Encoder,
        transform: Transform | None = None,
        eot_samples: int = 1,
        grid: TileGrid | None = None,
        editor_resolution: int | None = None,
        editor_spread: float = 0.0,
    ) -> None:
        self.encoder = encoder
        self.transform = transform
        self.eot_samples = eot_samples if transform is not None else 1
        self.norm: WholeImageNorm | None = None  # whole-image GroupNorm statistics (tiled encoders with GN)
        self.editor = None if editor_resolution is None else EditorTerm(
            encoder, editor_resolution, editor_spread, lambda copy: TiledObjective(encoder, grid=copy))
        self.grid = grid
        self.on_tile: TileCallback | None = None
        self.checkpoint = False  # recompute the encoder's blocks in backward (Encoder.checkpointing)
        self._kept: Posterior | None = None  # the posterior a ``loss_and_posterior`` pass stitches (None outside)
        self._keep = False

    @property
    def grid(self) -> TileGrid | None:
        return self._grid

    @grid.setter
    def grid(self, grid: TileGrid | None) -> None:
        """A new grid (a new image) forgets the statistics of the last one."""
        self._grid = grid
        if self.editor is not None:
            self.editor.grid = grid
        if grid is not None and self.norm is None:
            norm = WholeImageNorm(self.encoder)
            self.norm = norm if norm else None
        if self.norm is not None:
            self.norm.reset()
            self.norm.forget_gradients()

    def _norm(self, x: torch.Tensor, fresh: bool = True) -> WholeImageNorm | None:
        """The whole-image statistics for a tiled pass over x (None: untiled or no GroupNorm), measured exactly
        when ``fresh`` or on first use, else the ones the last gradient pass recorded (``lagged``)."""
        if self.grid is None or self.norm is None or len(self.grid) == 1:  # one tile: the image's own statistics
            return None
        if fresh or not self.norm.frozen:
            measure_norm(self.norm, self.encoder, x, self.grid)
        return self.norm

    @property
    def grid_tiles(self) -> int:
        """Tiles per step (1 when untiled)."""
        return 1 if self.grid is None else len(self.grid)

    # -- the target ----------------------------------------------------------------------------------
    @torch.no_grad()
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Full-resolution posterior of (B, 3, H, W), tiled when a grid is set."""
        if self.grid is None:
            return self.encoder.posterior(x)
        return tiled_posterior(self.encoder, x, self.grid, self._norm(x))

    @torch.no_grad()
    def prepare(self, x: torch.Tensor, target: float | torch.Tensor) -> None:
        """Fix the editor term's target from the clean images (``EditorTerm.prepare``)."""
        if self.editor is not None:
            self.editor.prepare(x, target)

    # -- one estimate ---------------------------------------------------------------------------------
    def _draws(self, x: torch.Tensor, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
        """The EoT-transformed inputs of one estimate (the input itself without EoT)."""
        if self.transform is None or generator is None:
            yield x
            return
        for _ in range(self.eot_samples):
            yield self.transform(x, generator)

    def _samples(self, generator: torch.Generator | None) -> int:
        return self.eot_samples if (self.transform is not None and generator is not None) else 1

    def loss(self, x: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per-image objective (B,) fp32 (no gradient)."""
        with torch.no_grad():
            return self._evaluate(x, target, generator, None)[0]

    def loss_and_posterior(
        self, x: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, Posterior | None]:
        """``loss`` and the fp32 posterior of x itself ((mean, logvar), each (B, C, h, w), stitched from the
        tiles' cores as the loss saw them) for the certificate; None when the pass encodes EoT draws of x."""
        self._kept, self._keep = None, self.transform is None or generator is None
        try:
            with torch.no_grad():
                loss = self._evaluate(x, target, generator, None)[0]
            return loss, self._kept
        finally:
            self._kept, self._keep = None, False

    def loss_and_grad(
        self, x: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator, sign: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image objective (B,) and the gradient of ``sign * objective.sum()`` w.r.t. x (B, 3, H, W)."""
        loss, grad = self._evaluate(x, target, generator, sign)
        assert grad is not None
        return loss, grad

    def _evaluate(
        self, x: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator | None, sign: float | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        term: torch.Tensor | None = None  # (B,) the editor-resolution term
        grad: torch.Tensor | None = None  # (B, 3, H, W), summed over tiles
        if self.editor is not None and self.grid is not None:  # tiled: the copy's gradient starts the sum
            term, grad = self.editor.evaluate(x, target, generator, sign)
        total = torch.zeros(x.shape[0], device=x.device)  # (B,)
        tiles = self.grid.tiles() if self.grid is not None else None
        state = generator.get_state() if generator is not None else None
        lagged = self.grid is not None and self.grid.stats == "lagged" and sign is not None
        norm = self._norm(x, fresh=not lagged)  # a loss alone is always measured exactly
        with norm.installed() if norm is not None else nullcontext():
            if norm is not None and lagged:
                norm.start()  # this step's sums: the next step's statistics
            for index, tile in enumerate(tiles or [None]):
                if generator is not None and state is not None:
                    generator.set_state(state)  # every tile sees the same EoT draws
                loss, g = self._tile(x, tile, target, generator, sign)
                if g is not None and tile is None:
                    grad = g
                elif g is not None and tile is not None:
                    grad = torch.zeros_like(x) if grad is None else grad
                    grad[..., tile.rows, tile.cols] += g
                total += loss.detach().float()
                if self.on_tile is not None and tiles is not None:
                    self.on_tile(index + 1, len(tiles))
            if norm is not None and lagged:
                norm.adopt()
        if self.editor is not None and term is None:  # untiled: after the image's own pass, as one graph
            term, g = self.editor.evaluate(x, target, generator, sign)
            grad = grad if g is None or grad is None else grad.add_(g)
        return total if term is None else total + term, grad

    def _tile(
        self, x: torch.Tensor, tile: Tile | None, target: float | torch.Tensor, generator: torch.Generator | None,
        sign: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Loss (B,) of one tile's core (or of the whole image) and its gradient w.r.t. the tile's pixels. Each
        EoT draw is differentiated on its own and its graph freed before the next draw is encoded, so the
        step's memory is one encoder pass whatever ``eot_samples`` is (the gradient of the mean is the mean of
        the gradients)."""
        rows, cols = (tile.rows, tile.cols) if tile is not None else (slice(None), slice(None))
        part = x[..., rows, cols].detach().requires_grad_(sign is not None)
        if self.norm is not None and self.grid is not None and tile is not None:
            self.norm.region = self.grid.region(tile)
        loss = torch.zeros(x.shape[0], device=x.device)  # (B,)
        grad: torch.Tensor | None = None  # (B, 3, h, w)
        samples = self._samples(generator)
        checkpoint = self.checkpoint or (self.grid is not None and self.grid.checkpoint)
        with self.encoder.checkpointing(checkpoint and sign is not None):
            for draw, drawn in enumerate(self._draws(part, generator)):
                if self.norm is not None:
                    self.norm.draw = draw  # EoT: draw r of a tile pairs with draw r of the others
                mean, logvar = self.encoder.posterior(drawn) if tile is None else _core_posterior(
                    self.encoder, drawn, tile
                )
                draw_loss = pca_loss(mean, logvar, target if tile is None else _crop_target(target, tile)) / samples
                if sign is None:
                    loss = loss + draw_loss
                    continue
                g = self._input_gradient(draw_loss, part, target, sign)
                grad = g if grad is None else grad.add_(g)
                loss = loss + draw_loss.detach()
            if sign is None:
                self._keep_posterior(mean, logvar, tile, x.shape[0])
        return loss, grad

    def _input_gradient(self, loss: torch.Tensor, part: torch.Tensor, target: float | torch.Tensor,
                        sign: float) -> torch.Tensor:
        """Gradient (B, 3, h, w) of ``sign * loss.sum()`` w.r.t. ``part``, through an fp16-safe scale."""
        scale = half_safe_scale(self.encoder.dtype, target)
        with self.norm.paused() if self.norm is not None else nullcontext():  # checkpointing re-runs forwards
            (g,) = torch.autograd.grad((sign * scale * loss).sum(), part)  # (B, 3, h, w)
        return g / scale

    def _keep_posterior(self, mean: torch.Tensor, logvar: torch.Tensor | None, tile: Tile | None, batch: int) -> None:
        """Keep a loss-only pass's posterior (B, C, h, w) of the whole image, or stitch in a tile's core."""
        if not self._keep:
            return
        if tile is None or self.grid is None:
            self._kept = mean.float(), None if logvar is None else logvar.float()
            return
        previous = (None, None) if self._kept is None else self._kept
        self._kept = _stitch(previous[0], previous[1], mean, logvar, tile, self.grid, batch)
