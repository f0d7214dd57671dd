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
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pca_attack.attack.tiling import TileGrid, tiled_posterior
from pca_attack.errors import ConfigError, ImageTooLargeError
from pca_attack.models.encoder import Encoder

DEFAULT_FRACTION = 0.15  # of the memory free at start-up, when no budget is given
HEADROOM = 1.2  # planned estimate x HEADROOM must fit: allocator slack and what the probes do not see
MIN_HALO_LATENTS = 4  # tiles read at least this many latent rows/columns of context around their core
MAX_HALO_LATENTS = 8  # and at most this many (global layers would otherwise ask for the whole image)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class MemoryBudgetError(ImageTooLargeError):
    """The image cannot be protected within the memory budget, even in tiles (CLI exit 2, HTTP 413)."""


def parse_size(text: str | float | int) -> int:
    """'1.5GB', '800M', '2GiB' or a number of bytes -> bytes."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
        unit = match.group(2).lower() if match else "?"
        if match is None or unit not in _UNITS:
            raise ConfigError(f"memory size {text!r} not understood; write e.g. 1.5GB, 800MB or 2GiB")
        value = float(match.group(1)) * _UNITS[unit]
    if not value > 0:
        raise ConfigError(f"memory size must be positive, got {text!r}")
    return int(value)


def format_size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def memory_in_use(device: torch.device) -> int:
    """What the process holds now: resident set on the CPU, allocated tensors on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    import psutil

    return int(psutil.Process().memory_info().rss)


def memory_free(device: torch.device) -> int:
    """Memory the system could still give: available RAM, or free VRAM on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def default_budget(device: torch.device) -> int:
    """What the process may hold in all when no budget is given: now + a safe fraction of what is free."""
    return memory_in_use(device) + int(DEFAULT_FRACTION * memory_free(device))


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of tensor storage created inside the mode and still alive; remembers the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for item in tree_leaves(out):
            if isinstance(item, torch.Tensor):
                storage = item.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self.live:
                    self.live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        for key in [k for k, (r, _) in self.live.items() if r.expired()]:
            self.current -= self.live.pop(key)[1]
        return out


def measure_peak(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes ``fn`` allocates on ``device`` beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    with LiveTensorBytes() as tracker:
        fn()
    return tracker.peak


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

    @property
    def state_per_pixel(self) -> float:
        """Bytes the loop keeps per pixel of the whole batch, beyond the step itself."""
        return max(0.0, self.loop.per_pixel - self.step.per_pixel)

    def estimate(self, height: int, width: int, batch: int = 1, tile_pixels: int | None = None) -> float:
        """Peak bytes of an attack on (batch, 3, height, width): untiled, or with tiles of ``tile_pixels``."""
        pixels = height * width * batch
        if tile_pixels is None:
            return self.loop(pixels)
        return self.loop.fixed + self.state_per_pixel * pixels + self.step.per_pixel * tile_pixels * batch


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
    from pca_attack.attack.tiling import TiledObjective

    device, f = encoder.device, encoder.downsample_factor
    objective = TiledObjective(encoder)
    generator = torch.Generator().manual_seed(0)
    sides = _probe_sizes(f)
    step, loop, forward = [], [], []
    for side in sides:
        x = torch.rand(1, 3, side, side, generator=generator)
        x_dev = x.to(device)
        attack = Protector(encoder, AttackConfig(steps=2))
        step.append(measure_peak(partial(objective.loss_and_grad, x_dev, 1e-8, generator, 1.0), device))
        loop.append(measure_peak(partial(attack.protect, x), device))
        forward.append(measure_peak(partial(_posterior_no_grad, encoder, x_dev), device))
    x_dev = torch.rand(1, 3, sides[1], sides[1], generator=generator).to(device)
    start = time.perf_counter()
    objective.loss_and_grad(x_dev, 1e-8, generator, 1.0)
    seconds = (time.perf_counter() - start) / sides[1] ** 2
    px = [s * s for s in sides]
    halo = min(MAX_HALO_LATENTS * f, max(MIN_HALO_LATENTS * f, receptive_radius(encoder, sides[1])))
    step_line, forward_line, loop_line = (Line.fit(px[0], p[0], px[1], p[1]) for p in (step, forward, loop))
    return MemoryModel(step_line, forward_line, loop_line, seconds_per_pixel=seconds, factor=f, halo=halo)


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

    @property
    def tiles(self) -> int:
        return 1 if self.grid is None else len(self.grid)

    @property
    def tile_side(self) -> int | None:
        return None if self.grid is None else self.grid.tile_side

    def describe(self) -> str:
        how = "untiled" if self.grid is None else f"{self.tiles} tiles of {self.tile_side} px"
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
    """Untiled when the whole batch fits in ``available`` bytes, else the largest square tiles that fit.

    ``extra_pixels``: pixels of a further whole-image encoder pass per step (the editor-resolution term).
    Raises ``MemoryBudgetError`` when not even the smallest tiles fit.
    """
    f, halo = model.factor, model.halo
    extra = model.step.per_pixel * extra_pixels * batch
    seconds = model.seconds_per_pixel * steps * batch

    def plan(grid: TileGrid | None, estimate: float) -> AttackPlan:
        read = height * width if grid is None else grid.pixels_read()
        return AttackPlan(height, width, batch, grid, int(estimate), int(available),
                          seconds * (read + extra_pixels))

    whole = model.estimate(height, width, batch) + extra
    if whole * HEADROOM <= available:
        return plan(None, whole)
    state = model.estimate(height, width, batch, 0) + extra
    room = available / HEADROOM - state
    side = math.sqrt(room / (model.step.per_pixel * batch)) if room > 0 and model.step.per_pixel > 0 else 0.0
    core = int((side - 2 * halo) // f) * f
    if core < f:
        raise _refusal(model, height, width, batch, available)
    grid = TileGrid(height, width, f, min(core, f * math.ceil(max(height, width) / f)), halo)
    tile_pixels = min(height, grid.tile_side) * min(width, grid.tile_side)
    return plan(grid, model.estimate(height, width, batch, tile_pixels) + extra)


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
