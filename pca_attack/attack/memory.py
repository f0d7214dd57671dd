"""How much memory an attack takes, measured once per loaded model, and how to run within a budget.

``memory_model(encoder)`` runs small probes once (``pca_attack.attack.probe``: the loss and input gradient
of one step, and a two-step attack, each at two sizes) and fits a line ``bytes = fixed + per_pixel * pixels``
to the measured peaks (``pca_attack.attack.sizes.measure_peak``); the difference of the two slopes is what the
loop keeps per pixel of the whole image (the clean image, the iterate, the gradient, the best iterate);
``pca_attack.attack.loop_memory`` measures the loop's own whole-image bytes per configuration. The probe also
times a step, a forward and one streaming measurement of the whole-image statistics, so a plan's time counts the
statistics passes the tiled path runs (``MemoryModel.attack_seconds``). ``plan_attack`` then picks the untiled
attack when it fits, else the largest tiles that fit, else refuses with ``MemoryBudgetError`` before any work.

A budget counts the whole process (``budget - memory in use now`` is what the attack may take), so
``--max-memory 1.5GB`` bounds the resident size; the default is ``sizes.DEFAULT_FRACTION`` of the memory
free now (RAM on the CPU, VRAM on CUDA), on the CPU at most ``sizes.DEFAULT_CPU_CAP``, plus what the process uses.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pca_attack.attack.norm_stats import WholeImageNorm
from pca_attack.attack.sizes import (  # noqa: F401 (re-exported: the budget's units and measurements)
    default_budget,
    format_size,
    measure_peak,
    memory_free,
    memory_in_use,
    parse_size,
)
from pca_attack.attack.tile_cores import balanced_cores
from pca_attack.attack.tiling import TileGrid, measure_norm, tiled_posterior
from pca_attack.errors import ImageTooLargeError
from pca_attack.models.encoder import Encoder

if TYPE_CHECKING:
    from pca_attack.attack.config import AttackConfig

HEADROOM = 1.2  # planned estimate x HEADROOM must fit: allocator slack and what the probes do not see
TILED_GRADIENT_BYTES_PER_PIXEL = 3 * 4  # a tiled step's whole-image gradient accumulator (not in the probes)
MIN_HALO_LATENTS = 4  # tiles read at least this many latent rows/columns of context around their core
MAX_HALO_LATENTS = 16  # and at most this many (the measured halo, ``pca_attack.attack.probe.tiling_halo``)
GRADIENT_HALO_LATENTS = 8  # the gradient-mass radius, a floor of the halo, counts up to this many
HALO_TOLERANCE = 1e-2  # the halo: the smallest whose tile posterior is within this of the untiled one (rel. L2)

class MemoryBudgetError(ImageTooLargeError):
    """The image cannot be protected within the memory budget, even in tiles (CLI exit 2, HTTP 413)."""


@dataclass(frozen=True)
class Line:
    """bytes = fixed + per_pixel * pixels (pixels of the batch: height * width * batch)."""

    fixed: float
    per_pixel: float

    @classmethod
    def fit(cls, px1: int, y1: int, px2: int, y2: int) -> Line:
        slope = max(0.0, (y2 - y1) / (px2 - px1))
        return cls(max(0.0, y1 - slope * px1), slope)

    def __call__(self, pixels: float) -> float:
        return self.fixed + self.per_pixel * pixels


@dataclass(frozen=True)
class MemoryModel:
    """Measured memory and time of one model's attack step (see the module docstring)."""

    step: Line  # loss + input gradient of one step (encoder forward + backward)
    forward: Line  # the posterior alone, without gradient (certificates, diagnostics, red team)
    loop: Line  # a whole untiled attack (loop state + one step + the final measurements)
    seconds_per_pixel: float  # one step's wall time per input pixel, at the larger probe
    factor: int  # the encoder's spatial factor
    halo: int  # pixels of context a tile reads around its core (measured receptive radius, multiple of f)
    checkpointed: Line | None = None  # the step with gradient checkpointing of the encoder's blocks (None: n/a)
    checkpoint_time: float = 1.0  # wall time of a checkpointed step / a plain one
    forward_seconds_per_pixel: float = 0.0  # one no-grad forward's wall time per input pixel
    context_layers: int = 0  # GroupNorm and self-attention layers (0: tiles need no whole-image statistics)
    stream_passes: float = 0.0  # one streaming measurement of those statistics, in forwards of the pixels it reads
    attention_seconds: float = 0.0  # self-attention: seconds per (query, key) pair of latent tokens, all layers
    tile_overhead: float = 1.0  # a tile's step with the whole-image statistics patched in / the plain step, bytes
    loop_image_per_pixel: float = 0.0  # the loop's own whole-image peak per pixel, set per config (loop_memory)
    loop_tile_per_pixel: float = 0.0  # what the loop holds per pixel while a tile is encoded, set per config too
    context_per_pixel: float = 0.0  # a tile's step: bytes per WHOLE-image pixel of its context (attention's keys)

    @property
    def state_per_pixel(self) -> float:
        """Bytes the loop keeps per pixel of the whole batch, beyond the step itself."""
        return max(0.0, self.loop.per_pixel - self.step.per_pixel)

    def tiled_state(self, pixels: int) -> float:
        """Bytes held beside a tile's step: the loop's (``loop_memory``; else the probes' state + the accumulator)
        and the whole image's context the step reads (``context_per_pixel``)."""
        per_pixel = self.loop_tile_per_pixel or self.state_per_pixel + TILED_GRADIENT_BYTES_PER_PIXEL
        return self.loop.fixed + (per_pixel + self.context_per_pixel) * pixels

    def step_per_pixel(self, checkpoint: bool = False) -> float:
        """Bytes per pixel of one step's encoder pass, plain or checkpointed."""
        return self.checkpointed.per_pixel if checkpoint and self.checkpointed is not None else self.step.per_pixel

    def estimate(
        self, height: int, width: int, batch: int = 1, tile_pixels: int | None = None, checkpoint: bool = False
    ) -> float:
        """Peak bytes of an attack on (batch, 3, height, width): untiled, or with tiles of ``tile_pixels``;
        ``checkpoint``: with gradient checkpointing of the encoder's blocks."""
        pixels = height * width * batch
        between_steps = self.loop.fixed + self.loop_image_per_pixel * pixels  # update, rounding: no activations
        if tile_pixels is None and not checkpoint:
            return max(self.loop(pixels), between_steps)
        if tile_pixels is None:  # untiled, checkpointed
            return max(self.loop.fixed + (self.state_per_pixel + self.step_per_pixel(True)) * pixels, between_steps)
        per_step = tile_pixels * batch * self.step_per_pixel(checkpoint) * self.tile_overhead  # frozen statistics
        return max(self.tiled_state(pixels) + per_step, between_steps)

    def estimate_grid(self, grid: TileGrid, batch: int = 1) -> float:
        """Peak bytes of a tiled attack on ``grid``: the tiles' steps, or the whole-image no-grad pass that
        measures the GroupNorm statistics when the grid allows one (``TileGrid.whole_pass``)."""
        height, width = grid.height, grid.width
        tile = math.prod(grid.tile_shape)
        steps = self.estimate(height, width, batch, tile, grid.checkpoint)
        if not grid.whole_pass:
            return steps
        return max(steps, self.estimate(height, width, batch, 0) + self.forward.per_pixel * height * width * batch)

    def statistics_seconds(self, grid: TileGrid, batch: int = 1) -> float:
        """Wall time of one exact measurement of the whole-image statistics for ``grid`` (0: none needed):
        a no-grad forward of the whole image (``whole_pass``), else the measured streaming passes."""
        if self.context_layers == 0 or len(grid) == 1:
            return 0.0
        pixels = grid.height * grid.width if grid.whole_pass else self.stream_passes * grid.pixels_read()
        return self.forward_seconds_per_pixel * pixels * batch

    def attack_seconds(self, grid: TileGrid | None, height: int, width: int, *, batch: int = 1, steps: int = 1,
                       evaluations: int = 2, checkpoint: bool = False) -> float:
        """Wall time of an attack: ``steps`` gradient passes and ``evaluations`` loss-only passes (best iterate,
        final loss, ...) over the pixels the tiles read, plus the statistics passes the tiled path runs:
        before every pass (``stats="exact"``), or once and before each loss-only pass (``"lagged"``)."""
        read = (height * width if grid is None else grid.pixels_read()) * batch
        slower = self.checkpoint_time if checkpoint else 1.0
        seconds = steps * self.seconds_per_pixel * read * slower + evaluations * self.forward_seconds_per_pixel * read
        seconds += batch * self.quadratic_seconds(grid, height, width, steps=steps, evaluations=evaluations)
        if grid is None:
            return seconds
        stats_passes = evaluations + (steps if grid.stats == "exact" else 1)
        return seconds + stats_passes * self.statistics_seconds(grid, batch)

    def quadratic_seconds(self, grid: TileGrid | None, height: int, width: int, *, steps: int,
                          evaluations: int) -> float:
        """The self-attention's time over T latent tokens of one image, which per-pixel costs do not grow
        with: untiled, 3 T^2 per step (forward and backward) and T^2 per loss-only pass; tiled, per step each
        tile's tokens against the T keys plus 3 x its own tokens squared (the straight-through local part), and
        T^2 per statistics measurement (the layer evaluated once over the whole image; loss-only passes crop)."""
        if self.attention_seconds == 0.0:
            return 0.0
        f2 = self.factor**2
        tokens = math.ceil(height / self.factor) * math.ceil(width / self.factor)
        if grid is None:
            return self.attention_seconds * tokens**2 * (3 * steps + evaluations)
        local = sum(((t.rows.stop - t.rows.start) * (t.cols.stop - t.cols.start) / f2) ** 2 for t in grid.tiles())
        measurements = evaluations + (steps if grid.stats == "exact" else 1)
        pairs = steps * (grid.pixels_read() / f2 * tokens + 3 * local) + measurements * tokens**2
        return self.attention_seconds * pairs


def loss_evaluations(config: AttackConfig, tiled: bool = False) -> int:
    """Loss-only passes of the whole image an attack runs besides its steps: the final loss, the last iterate
    (``keep_best``), the clean loss (unless the first step traced it) and the adaptive target's posterior.
    ``tiled``: one pass serves the last iterate and the final loss, without EoT and shrink
    (``Protector._one_final_pass``; a second one only where an earlier iterate is returned)."""
    clean_traced = not config.random_start and config.eot is None
    shared = tiled and config.keep_best and config.eot is None and not config.shrink
    return (1 + int(config.keep_best) - int(shared) + int(not clean_traced)
            + int(config.loss_preset.target_variance is None))


_models: weakref.WeakKeyDictionary[Encoder, MemoryModel] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def memory_model(encoder: Encoder) -> MemoryModel:
    """The memory model of a loaded encoder, measured on first use (or read from disk) and remembered."""
    with _lock:
        model = _models.get(encoder)
        if model is None:
            from pca_attack.attack.probe_cache import cached_probe  # measured, or read from an earlier run

            model = _models[encoder] = cached_probe(encoder)
        return model


@dataclass(frozen=True)
class AttackPlan:
    """How one micro-batch is attacked: untiled, or in tiles, with the estimate it was planned on."""

    height: int
    width: int
    batch: int
    grid: TileGrid | None  # None: untiled
    estimated_bytes: int  # peak the attack is expected to add to the process
    budget_bytes: int  # what the attack may add (the budget less what is in use)
    estimated_s: float  # wall time of the attack's steps
    checkpoint: bool = False  # gradient checkpointing of the encoder's blocks (fits where the plain step won't)
    factor: int = 8  # the encoder's spatial factor

    @property
    def run_grid(self) -> TileGrid | None:
        """What ``Protector.protect(tiles=...)`` runs: the tiles, or, for a checkpointed untiled attack, one
        tile that is the whole image (it carries the checkpoint flag)."""
        if self.grid is not None or not self.checkpoint:
            return self.grid
        return TileGrid(self.height, self.width, self.factor, self.factor * math.ceil(
            max(self.height, self.width) / self.factor), 0, checkpoint=True)

    @property
    def tiles(self) -> int:
        return 1 if self.grid is None else len(self.grid)

    @property
    def tile_side(self) -> int | None:
        return None if self.grid is None else self.grid.tile_side

    def describe(self) -> str:
        tile = self.grid and self.grid.tile_shape  # (height, width): "of 728 px" when square, else "of 704x728 px"
        how = f"{self.tiles} tiles of {tile[1]}{'' if tile[0] == tile[1] else f'x{tile[0]}'} px" if tile else "untiled"
        how += ", checkpointed" if self.checkpoint else ""
        return (
            f"{self.width}x{self.height}" + (f" x{self.batch}" if self.batch > 1 else "")
            + f": {how}, ~{format_size(self.estimated_bytes)} of {format_size(self.budget_bytes)} free in the budget"
            + f", ~{self.estimated_s:.0f} s"
        )


def _refusal(model: MemoryModel, height: int, width: int, batch: int, available: float) -> MemoryBudgetError:
    """Smallest tiles do not fit: say what would (a larger budget, a smaller image)."""
    f, halo = model.factor, model.halo
    smallest = model.estimate(height, width, batch, (f + 2 * halo) ** 2) * HEADROOM
    tiled_state = max(model.tiled_state(1) - model.loop.fixed, model.loop_image_per_pixel)
    per_pixel = tiled_state * batch * HEADROOM
    room = available / HEADROOM - model.loop.fixed - model.step.per_pixel * model.tile_overhead * batch * (
        f + 2 * halo) ** 2
    scale = math.sqrt(max(0.0, room) / (per_pixel * height * width)) if per_pixel > 0 else 0.0
    side = int(max(height, width) * scale)
    hint = f" or downscale it to about {side} px on the long side" if 0.05 < scale < 1 else ""
    return MemoryBudgetError(
        f"a {width}x{height} image needs at least {format_size(smallest)} to protect, even in the smallest "
        f"tiles, but only {format_size(max(0.0, available))} of the memory budget is free; raise the "
        f"budget (--max-memory / PCA_MAX_MEMORY){hint}"
    )


def plan_attack(
    model: MemoryModel,
    height: int,
    width: int,
    *,
    batch: int = 1,
    steps: int = 1,
    available: float,
    extra_pixels: int = 0,
    evaluations: int = 2,
    tiled_evaluations: int | None = None,
) -> AttackPlan:
    """Untiled when the whole batch fits in ``available`` bytes, else untiled with gradient checkpointing when
    that fits (exact, no tiles), else the faster of the largest (balanced) tiles that fit, plain or
    checkpointed (time: pixels read x the measured cost of checkpointing; checkpointed tiles are bigger).

    ``extra_pixels``: pixels of the editor-resolution copy, encoded whole beside an untiled attack, in the
    image's own tiles in a tiled one (``pca_attack.attack.editor_term``: no more memory than a tile's step);
    ``evaluations``: loss-only passes besides the steps (``loss_evaluations``), ``tiled_evaluations`` those of a
    tiled attack (default: the same), each with its statistics pass (``MemoryModel.attack_seconds``).
    Raises ``MemoryBudgetError`` when not even the smallest tiles fit.
    """
    extra = model.step.per_pixel * extra_pixels * batch  # the copy's whole pass (untiled attacks)
    extra_s = model.seconds_per_pixel * steps * batch * extra_pixels

    def plan(grid: TileGrid | None, checkpoint: bool) -> AttackPlan:
        estimate = (model.estimate(height, width, batch, None, checkpoint) + extra if grid is None
                    else model.estimate_grid(grid, batch))
        passes = evaluations if grid is None or tiled_evaluations is None else tiled_evaluations
        read = 1.0 if grid is None else grid.pixels_read() / (height * width)  # the copy's tiles read halos too
        seconds = model.attack_seconds(grid, height, width, batch=batch, steps=steps, evaluations=passes,
                                       checkpoint=checkpoint) + extra_s * read
        return AttackPlan(height, width, batch, grid, int(estimate), int(available), seconds, checkpoint,
                          model.factor)

    if (model.estimate(height, width, batch) + extra) * HEADROOM <= available:
        return plan(None, False)
    options = [False] if model.checkpointed is None else [False, True]
    candidates: list[AttackPlan] = []
    if True in options and (model.estimate(height, width, batch, None, True) + extra) * HEADROOM <= available:
        return plan(None, True)
    for checkpoint in options:
        grid = _largest_tiles(model, height, width, batch, available, checkpoint)
        if grid is not None:
            candidates.append(plan(grid, checkpoint))
    if not candidates:
        raise _refusal(model, height, width, batch, available)
    return min(candidates, key=lambda p: p.estimated_s)


def _largest_tiles(
    model: MemoryModel, height: int, width: int, batch: int, available: float, checkpoint: bool
) -> TileGrid | None:
    """The grid of the largest tiles whose step fits beside the loop's state, rows x columns balanced to read the
    fewest pixels (``balanced_cores``; None: none fits)."""
    f, halo = model.factor, model.halo
    state = model.tiled_state(height * width * batch)  # beside the tile (the steps between: ``fits``)
    room = available / HEADROOM - state
    per_pixel = model.step_per_pixel(checkpoint) * batch * model.tile_overhead
    cores = balanced_cores(height, width, f, halo, room / per_pixel if room > 0 and per_pixel > 0 else 0.0)
    if cores is None:
        return None
    whole_pass = (model.forward(height * width * batch) + state) * HEADROOM <= available
    grid = TileGrid(height, width, f, cores[0], halo, whole_pass=whole_pass, checkpoint=checkpoint,
                    stats="exact" if whole_pass else "lagged", core_width=cores[1])
    fits = model.estimate_grid(grid, batch) * HEADROOM <= available  # the loop's whole-image work too
    return grid if fits else None


# -- measurements outside the attack (certificates, diagnostics, red team) within the same budget ---------
@dataclass(frozen=True)
class MeasureScope:
    """What measurements outside the attack may add: ``available`` bytes when the scope opened, and, with
    ``limit`` (the process's whole budget) and ``device``, no more than is free in it at each measurement
    (a certificate first holds its own copies of the image), never below a quarter of ``available`` (the
    smallest tiles would take hours)."""

    available: float
    limit: float | None = None
    device: torch.device | None = None

    def now(self) -> float:
        if self.limit is None or self.device is None:
            return self.available
        return min(self.available, max(self.available / 4, self.limit - memory_in_use(self.device)))


_scope: ContextVar[MeasureScope | None] = ContextVar("pca_memory_scope", default=None)


@contextmanager
def memory_scope(
    available: float, *, limit: float | None = None, device: torch.device | None = None
) -> Iterator[None]:
    """Inside: ``posterior_in_budget`` tiles any image whose encoder pass would not fit in what the scope
    allows (``MeasureScope``)."""
    token = _scope.set(MeasureScope(available, limit, device))
    try:
        yield
    finally:
        _scope.reset(token)


@torch.no_grad()
def posterior_in_budget(encoder: Encoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``encoder.posterior(x)``, stitched from tiles when a ``memory_scope`` is open and x would not fit.

    Sized by the measured no-grad forward (``MemoryModel.forward``). Tiles use the whole image's GroupNorm statistics
    and attention context (``norm_stats``), so a tiled certificate reports the untiled posterior up to the halo.
    """
    scope = _scope.get()
    if scope is None:
        return encoder.posterior(x)
    available = scope.now()
    model = memory_model(encoder)
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    if model.forward(height * width * batch) * HEADROOM <= available:
        return encoder.posterior(x)
    side = math.sqrt(max(0.0, available / HEADROOM - model.forward.fixed) / (model.forward.per_pixel * batch))
    core = max(model.factor, int((side - 2 * model.halo) // model.factor) * model.factor)
    grid = TileGrid(height, width, model.factor, core, model.halo)
    norm = WholeImageNorm(encoder) if len(grid) > 1 else None
    if not norm:
        return tiled_posterior(encoder, x, grid)
    measure_norm(norm, encoder, x, grid)
    return tiled_posterior(encoder, x, grid, norm)


def decoder_fits(encoder: Encoder, pixels: int, available: float) -> bool:
    """Whether a whole-image decode may run: taken as twice the measured encoder forward (decoders are the
    heavier half of a VAE), which must fit in ``available`` bytes."""
    return 2 * memory_model(encoder).forward(pixels) * HEADROOM <= available
