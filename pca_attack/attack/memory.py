"""How much memory an attack takes, measured once per loaded model, and how to run within a budget.

``memory_model(encoder)`` runs small probes (the loss and input gradient of one step, and a two-step attack,
each at two sizes) and fits a line ``bytes = fixed + per_pixel * pixels`` to the measured peaks: on CUDA
``torch.cuda.max_memory_allocated``; on the CPU the peak of live tensor storage counted by a
``TorchDispatchMode`` (every tensor an operation returns, forward and backward, until it is freed). The
difference of the two slopes is what the loop keeps per pixel of the whole image (the clean image, the
iterate, the gradient, update state, the best iterate). ``plan_attack`` then picks the untiled attack
when it fits, else the largest tiles that fit, else refuses with ``MemoryBudgetError`` before any work.

A budget counts the whole process (``budget - memory in use now`` is what the attack may take), so
``--max-memory 1.5GB`` bounds the resident size; the default is ``DEFAULT_FRACTION`` of the memory free
now (RAM on the CPU, VRAM on CUDA) plus what the process already uses.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial

import torch

from pca_attack.attack.sizes import (  # noqa: F401 (re-exported: the budget's units and measurements)
    DEFAULT_FRACTION,
    LiveTensorBytes,
    default_budget,
    format_size,
    measure_peak,
    memory_free,
    memory_in_use,
    parse_size,
)
from pca_attack.attack.tiling import TiledObjective, TileGrid, tiled_posterior
from pca_attack.errors import ImageTooLargeError
from pca_attack.models.encoder import Encoder

HEADROOM = 1.2  # planned estimate x HEADROOM must fit: allocator slack and what the probes do not see
MIN_HALO_LATENTS = 4  # tiles read at least this many latent rows/columns of context around their core
MAX_HALO_LATENTS = 8  # and at most this many (global layers would otherwise ask for the whole image)

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

    @property
    def state_per_pixel(self) -> float:
        """Bytes the loop keeps per pixel of the whole batch, beyond the step itself."""
        return max(0.0, self.loop.per_pixel - self.step.per_pixel)

    def step_per_pixel(self, checkpoint: bool = False) -> float:
        """Bytes per pixel of one step's encoder pass, plain or checkpointed."""
        return self.checkpointed.per_pixel if checkpoint and self.checkpointed is not None else self.step.per_pixel

    def estimate(
        self, height: int, width: int, batch: int = 1, tile_pixels: int | None = None, checkpoint: bool = False
    ) -> float:
        """Peak bytes of an attack on (batch, 3, height, width): untiled, or with tiles of ``tile_pixels``;
        ``checkpoint``: with gradient checkpointing of the encoder's blocks."""
        pixels = height * width * batch
        if tile_pixels is None and not checkpoint:
            return self.loop(pixels)
        per_step = (pixels if tile_pixels is None else tile_pixels * batch) * self.step_per_pixel(checkpoint)
        return self.loop.fixed + self.state_per_pixel * pixels + per_step

    def estimate_grid(self, grid: TileGrid, batch: int = 1) -> float:
        """Peak bytes of a tiled attack on ``grid``: the tiles' steps, or the whole-image no-grad pass that
        measures the GroupNorm statistics when the grid allows one (``TileGrid.whole_pass``)."""
        height, width = grid.height, grid.width
        tile = min(height, grid.tile_side) * min(width, grid.tile_side)
        steps = self.estimate(height, width, batch, tile, grid.checkpoint)
        if not grid.whole_pass:
            return steps
        return max(steps, self.estimate(height, width, batch, 0) + self.forward.per_pixel * height * width * batch)


def _probe_sizes(factor: int) -> tuple[int, int]:
    side = factor * max(4, math.ceil(64 / factor))
    return side, 2 * side


def receptive_radius(encoder: Encoder, side: int, mass: float = 0.9) -> int:
    """Pixels around a latent position that hold ``mass`` of its input gradient, a multiple of f.

    Measured on a ``side`` x ``side`` probe. Convolutions give a finite radius; GroupNorm and attention make
    every latent depend a little on every pixel (the radius then grows with the probe), so for such
    encoders the halo taken from it is a choice, clamped to [MIN_HALO_LATENTS, MAX_HALO_LATENTS] latents."""
    f = encoder.downsample_factor
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(encoder.device)
    x.requires_grad_(True)
    mean, _ = encoder.posterior(x)  # (1, C, side/f, side/f)
    centre = mean.shape[-1] // 2
    (grad,) = torch.autograd.grad(mean[..., centre, centre].float().sum(), x)
    weight = grad.abs().sum(dim=(0, 1)).cpu()  # (side, side)
    middle = centre * f + f // 2
    total = float(weight.sum()) or 1.0
    for radius in range(f, side, f):
        lo, hi = max(0, middle - radius), middle + radius
        if float(weight[lo:hi, lo:hi].sum()) >= mass * total:
            return radius
    return side // 2


@torch.no_grad()
def _posterior_no_grad(encoder: Encoder, x: torch.Tensor) -> object:
    return encoder.posterior(x)


def probe(encoder: Encoder) -> MemoryModel:
    """Measure ``encoder``'s memory model (a few small forward + backward passes)."""
    from pca_attack.attack.config import AttackConfig
    from pca_attack.attack.pgd import Protector

    device, f = encoder.device, encoder.downsample_factor
    objective = TiledObjective(encoder)
    generator = torch.Generator().manual_seed(0)
    sides = _probe_sizes(f)
    step, loop, forward, checkpointed = [], [], [], []
    for side in sides:
        x = torch.rand(1, 3, side, side, generator=generator)
        x_dev = x.to(device)
        attack = Protector(encoder, AttackConfig(steps=2))
        step.append(measure_peak(partial(objective.loss_and_grad, x_dev, 1e-8, generator, 1.0), device))
        objective.checkpoint = True
        checkpointed.append(measure_peak(partial(objective.loss_and_grad, x_dev, 1e-8, generator, 1.0), device))
        objective.checkpoint = False
        loop.append(measure_peak(partial(attack.protect, x), device))
        forward.append(measure_peak(partial(_posterior_no_grad, encoder, x_dev), device))
    x_dev = torch.rand(1, 3, sides[1], sides[1], generator=generator).to(device)
    seconds = [_timed(objective, x_dev, generator, checkpoint) / sides[1] ** 2 for checkpoint in (False, True)]
    px = [s * s for s in sides]
    halo = min(MAX_HALO_LATENTS * f, max(MIN_HALO_LATENTS * f, receptive_radius(encoder, sides[1])))
    step_line, forward_line, loop_line, ckpt_line = (
        Line.fit(px[0], p[0], px[1], p[1]) for p in (step, forward, loop, checkpointed)
    )
    return MemoryModel(step_line, forward_line, loop_line, seconds_per_pixel=seconds[0], factor=f, halo=halo,
                       checkpointed=ckpt_line, checkpoint_time=max(1.0, seconds[1] / max(seconds[0], 1e-12)))


def _timed(objective: TiledObjective, x: torch.Tensor, generator: torch.Generator, checkpoint: bool) -> float:
    """Seconds of one loss-and-gradient evaluation, plain or checkpointed."""
    objective.checkpoint = checkpoint
    start = time.perf_counter()
    objective.loss_and_grad(x, 1e-8, generator, 1.0)
    objective.checkpoint = False
    return time.perf_counter() - start


_models: weakref.WeakKeyDictionary[Encoder, MemoryModel] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def memory_model(encoder: Encoder) -> MemoryModel:
    """The memory model of a loaded encoder, measured on first use and remembered."""
    with _lock:
        model = _models.get(encoder)
        if model is None:
            model = _models[encoder] = probe(encoder)
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
        how = "untiled" if self.grid is None else f"{self.tiles} tiles of {self.tile_side} px"
        how += ", checkpointed" if self.checkpoint else ""
        return (
            f"{self.width}x{self.height}" + (f" x{self.batch}" if self.batch > 1 else "")
            + f": {how}, ~{format_size(self.estimated_bytes)} of {format_size(self.budget_bytes)} free in the budget"
            + f", ~{self.estimated_s:.0f} s"
        )


def _refusal(model: MemoryModel, height: int, width: int, batch: int, available: float) -> MemoryBudgetError:
    f, halo = model.factor, model.halo
    smallest = model.estimate(height, width, batch, (f + 2 * halo) ** 2) * HEADROOM
    per_pixel = model.state_per_pixel * batch * HEADROOM
    room = available / HEADROOM - model.loop.fixed - model.step.per_pixel * batch * (f + 2 * halo) ** 2
    scale = math.sqrt(max(0.0, room) / (per_pixel * height * width)) if per_pixel > 0 else 0.0
    hint = f" or downscale it to about {int(max(height, width) * scale)} px on the long side" if scale > 0.05 else ""
    return MemoryBudgetError(
        f"a {width}x{height} image needs at least {format_size(smallest)} to protect, even in the smallest "
        f"tiles, but only {format_size(max(0.0, available))} of the memory budget is free; raise the budget "
        f"(--max-memory / PCA_MAX_MEMORY){hint}"
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
) -> AttackPlan:
    """Untiled when the whole batch fits in ``available`` bytes, else untiled with gradient checkpointing when
    that fits (exact, no tiles), else the faster of the largest square tiles that fit, plain or
    checkpointed (time: pixels read x the measured cost of checkpointing; checkpointed tiles are bigger).

    ``extra_pixels``: pixels of a further whole-image encoder pass per step (the editor-resolution term).
    Raises ``MemoryBudgetError`` when not even the smallest tiles fit.
    """
    extra = model.step.per_pixel * extra_pixels * batch
    seconds = model.seconds_per_pixel * steps * batch

    def plan(grid: TileGrid | None, checkpoint: bool) -> AttackPlan:
        read = height * width if grid is None else grid.pixels_read()
        estimate = (model.estimate(height, width, batch, None, checkpoint) if grid is None
                    else model.estimate_grid(grid, batch)) + extra
        slower = model.checkpoint_time if checkpoint else 1.0
        return AttackPlan(height, width, batch, grid, int(estimate), int(available),
                          seconds * (read * slower + extra_pixels), checkpoint, model.factor)

    if (model.estimate(height, width, batch) + extra) * HEADROOM <= available:
        return plan(None, False)
    options = [False] if model.checkpointed is None else [False, True]
    candidates: list[AttackPlan] = []
    if True in options and (model.estimate(height, width, batch, None, True) + extra) * HEADROOM <= available:
        return plan(None, True)
    for checkpoint in options:
        grid = _largest_tiles(model, height, width, batch, available, extra, checkpoint)
        if grid is not None:
            candidates.append(plan(grid, checkpoint))
    if not candidates:
        raise _refusal(model, height, width, batch, available)
    return min(candidates, key=lambda p: p.estimated_s)


def _largest_tiles(
    model: MemoryModel, height: int, width: int, batch: int, available: float, extra: float, checkpoint: bool
) -> TileGrid | None:
    """The grid of the largest square tiles whose step fits beside the loop's state (None: none fits)."""
    f, halo = model.factor, model.halo
    state = model.estimate(height, width, batch, 0) + extra
    room = available / HEADROOM - state
    per_pixel = model.step_per_pixel(checkpoint) * batch
    side = math.sqrt(room / per_pixel) if room > 0 and per_pixel > 0 else 0.0
    core = int((side - 2 * halo) // f) * f
    if core < f:
        return None
    whole_pass = (model.forward(height * width * batch) + state) * HEADROOM <= available
    return TileGrid(height, width, f, min(core, f * math.ceil(max(height, width) / f)), halo,
                    whole_pass=whole_pass, checkpoint=checkpoint, stats="exact" if whole_pass else "lagged")


def editor_pixels(height: int, width: int, long_side: int | None) -> int:
    """Pixels of the editor-resolution copy (0 without one; no upscaling)."""
    if long_side is None or max(height, width) <= long_side:
        return 0 if long_side is None else height * width
    scale = long_side / max(height, width)
    return max(8, round(height * scale)) * max(8, round(width * scale))


# -- measurements outside the attack (certificates, diagnostics, red team) within the same budget ---------
_available: ContextVar[float | None] = ContextVar("pca_memory_available", default=None)


@contextmanager
def memory_scope(available: float) -> Iterator[None]:
    """Inside: ``posterior_in_budget`` tiles any image whose encoder pass would not fit in ``available``."""
    token = _available.set(available)
    try:
        yield
    finally:
        _available.reset(token)


@torch.no_grad()
def posterior_in_budget(encoder: Encoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``encoder.posterior(x)``, stitched from tiles when a ``memory_scope`` is open and x would not fit.

    Sized by the measured forward pass without gradient (``MemoryModel.forward``).
    """
    available = _available.get()
    if available is None:
        return encoder.posterior(x)
    model = memory_model(encoder)
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    if model.forward(height * width * batch) * HEADROOM <= available:
        return encoder.posterior(x)
    side = math.sqrt(max(0.0, available / HEADROOM - model.forward.fixed) / (model.forward.per_pixel * batch))
    core = max(model.factor, int((side - 2 * model.halo) // model.factor) * model.factor)
    return tiled_posterior(encoder, x, TileGrid(height, width, model.factor, core, model.halo))


def decoder_fits(encoder: Encoder, pixels: int, available: float) -> bool:
    """Whether a whole-image decode may run: taken as twice the measured encoder forward (decoders are the
    heavier half of a VAE), which must fit in ``available`` bytes."""
    return 2 * memory_model(encoder).forward(pixels) * HEADROOM <= available
