"""The measurements behind a model's ``MemoryModel``: small probes of memory, time and receptive field.

``probe(encoder)`` runs the loss and input gradient of one step (plain and with gradient checkpointing), a
two-step attack and a no-grad forward, each at two sizes, and fits ``bytes = fixed + per_pixel * pixels`` to
the measured peaks (``pca_attack.attack.sizes.measure_peak``). It also times a step, a checkpointed step, a
forward and one streaming measurement of the whole-image statistics over four tiles
(``pca_attack.attack.norm_stats``), and measures the tiles' halo: the smallest context around a core for
which the tiled posterior is within ``HALO_TOLERANCE`` of the untiled one (``tiling_halo``), at least the
radius holding 90% of a latent's input gradient (``receptive_radius``, at most 8 latents).
``pca_attack.attack.memory.memory_model`` calls it once per loaded encoder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from pca_attack.attack.context_attention import whole_term
from pca_attack.attack.memory import (
    GRADIENT_HALO_LATENTS,
    HALO_TOLERANCE,
    MAX_HALO_LATENTS,
    MIN_HALO_LATENTS,
    Line,
    MemoryModel,
)
from pca_attack.attack.norm_stats import WholeImageNorm, context_layers
from pca_attack.attack.sizes import measure_peak
from pca_attack.attack.tiling import TiledObjective, TileGrid, measure_norm, tiled_posterior
from pca_attack.models.encoder import Encoder


def _probe_sizes(factor: int) -> tuple[int, int]:
    side = factor * max(4, math.ceil(64 / factor))
    return side, 2 * side


def receptive_radius(encoder: Encoder, side: int, mass: float = 0.9) -> int:
    """Pixels around a latent position that hold ``mass`` of its input gradient, a multiple of f.

    Measured on a ``side`` x ``side`` probe. Convolutions give a finite radius; GroupNorm and attention make
    every latent depend a little on every pixel (the radius then grows with the probe), so for such
    encoders the radius grows with the probe; clamped to [MIN_HALO_LATENTS, GRADIENT_HALO_LATENTS] latents it
    is a floor of the halo: a tile that sees more of the image gets a gradient closer to the untiled one."""
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


PROBE_SIDE_MAX = 512  # the halo probe's side in pixels, at most (it bounds the halo to half of it)


def _halo_probe(side: int) -> torch.Tensor:
    """A photo-like (1, 3, side, side) probe: a smooth random field plus fine noise."""
    generator = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(1, 3, max(2, side // 16), max(2, side // 16), generator=generator),
                           size=(side, side), mode="bicubic", align_corners=False)
    return (0.6 * smooth + 0.4 * torch.rand(1, 3, side, side, generator=generator)).clamp(0, 1)


@torch.no_grad()
def tiling_halo(encoder: Encoder, tolerance: float = HALO_TOLERANCE) -> int:
    """The smallest halo (a multiple of f, within [MIN_HALO_LATENTS, MAX_HALO_LATENTS] latents) for which
    a 2 x 2 grid of tiles over a probe gives the posterior mean within ``tolerance`` (relative L2) of the
    untiled one, with the whole image's statistics (``norm_stats``): the convolutions'
    receptive field as the tiles see it, measured. Bisection (the error falls as the halo grows); the
    largest halo when none meets the tolerance."""
    f = encoder.downsample_factor
    side = max(4 * f, min(2 * MAX_HALO_LATENTS * f, PROBE_SIDE_MAX) // (2 * f) * 2 * f)
    x = _halo_probe(side).to(encoder.device)  # (1, 3, side, side)
    mean = encoder.posterior(x)[0].float()  # (1, C, side/f, side/f)
    norm = WholeImageNorm(encoder)
    low, high = MIN_HALO_LATENTS, max(MIN_HALO_LATENTS, min(MAX_HALO_LATENTS, side // 2 // f))
    grid = TileGrid(side, side, f, side // 2, 0, whole_pass=True)
    if norm:
        measure_norm(norm, encoder, x, grid)
    while low < high:
        middle = (low + high) // 2
        grid = TileGrid(side, side, f, side // 2, middle * f, whole_pass=True)
        tiled = tiled_posterior(encoder, x, grid, norm if norm else None)[0].float()  # (1, C, side/f, side/f)
        error = float((tiled - mean).norm() / mean.norm().clamp(min=1e-12))
        low, high = (low, middle) if error <= tolerance else (middle + 1, high)
    return low * f


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
    floor = min(GRADIENT_HALO_LATENTS * f, max(MIN_HALO_LATENTS * f, receptive_radius(encoder, sides[1])))
    halo = max(floor, tiling_halo(encoder))
    step_line, forward_line, loop_line, ckpt_line = (
        Line.fit(px[0], p[0], px[1], p[1]) for p in (step, forward, loop, checkpointed)
    )
    forward_s, layers, stream = _timed_statistics(encoder, x_dev, halo)
    overhead = _tile_overhead(encoder, x_dev, generator, step[1])
    return MemoryModel(step_line, forward_line, loop_line, seconds_per_pixel=seconds[0], factor=f, halo=halo,
                       checkpointed=ckpt_line, checkpoint_time=max(1.0, seconds[1] / max(seconds[0], 1e-12)),
                       forward_seconds_per_pixel=forward_s, context_layers=layers, stream_passes=stream,
                       attention_seconds=_timed_attention(encoder), tile_overhead=overhead,
                       context_per_pixel=context_bytes_per_pixel(encoder) if layers else 0.0)


def context_bytes_per_pixel(encoder: Encoder) -> float:
    """Bytes a tile's step holds per pixel of the WHOLE image for the image's context, beyond the tile's own
    activations: a self-attention's gradient pass projects keys and values from every token of the image and
    keeps them and their gradients (the demo VAE: 54 B/px measured at 12 MP, beyond a plan without this term),
    a term the per-pixel probes cannot see (their context is the tile). Measured as the slope of a lagged tiled
    step's peak over two image sizes with the same tiles (cores of 8 latents), less the same slope for a stub
    encoder of the same factor without context layers (the objective's own whole-image buffers, counted in
    ``loop_memory``); about 0 for GroupNorm-only encoders (their statistics are a few numbers per channel)."""
    from pca_attack.attack.loop_memory import stub_encoder

    f = encoder.downsample_factor
    stub = stub_encoder(f, encoder.latent_channels, encoder.device)
    slopes = []
    for model in (encoder, stub):
        peaks = []
        for side in (16 * f, 32 * f):
            x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(encoder.device)
            tiled = TiledObjective(model, grid=TileGrid(side, side, f, 8 * f, 0, stats="lagged"))
            generator = torch.Generator().manual_seed(0)
            tiled.loss_and_grad(x, 1e-8, generator, 1.0)  # measures the context; the next pass is a step's
            peaks.append(measure_peak(partial(tiled.loss_and_grad, x, 1e-8, generator, 1.0), encoder.device))
        slopes.append((peaks[1] - peaks[0]) / (3 * (16 * f) ** 2))
    return max(0.0, slopes[0] - slopes[1])


def _tile_overhead(encoder: Encoder, x: torch.Tensor, generator: torch.Generator, plain: int) -> float:
    """Peak of a tile's step with the whole-image statistics patched in (``norm_stats``: frozen statistics,
    straight-through terms, recording for the next step), over ``plain``, the peak of the plain step on the
    same pixels: x (1, 3, s, s) in 2 x 2 tiles whose halo reads the whole image, lagged. 1.29 on the demo
    VAE at 128, 256 and 512 px: a 12 MP photo's 880-px tiles took ~1 GB more than planned without it."""
    side, f = x.shape[-1], encoder.downsample_factor
    grid = TileGrid(side, side, f, max(f, side // 2 // f * f), side, stats="lagged")
    tiled = TiledObjective(encoder, grid=grid)
    if tiled.norm is None or len(grid) == 1:
        return 1.0
    tiled.loss_and_grad(x, 1e-8, generator, 1.0)  # measures the statistics; the next pass is a step's
    peak = measure_peak(partial(tiled.loss_and_grad, x, 1e-8, generator, 1.0), encoder.device)
    return max(1.0, peak / max(plain, 1))


ATTENTION_PROBE_TOKENS = 1024  # tokens of the context the self-attention's quadratic cost is timed on


@torch.no_grad()
def _timed_attention(encoder: Encoder) -> float:
    """Seconds per (query, key) token pair of one pass through all the encoder's self-attention layers
    (0 without any): each timed (the faster of two) on random contexts of N and 2N tokens
    (N = ``ATTENTION_PROBE_TOKENS``): t(2N) - 2 t(N) = 2 c N^2 leaves out the projections' linear cost.
    The per-pixel probes above, at 64-128 px, cannot see this quadratic term."""
    side = math.isqrt(ATTENTION_PROBE_TOKENS)
    total = 0.0
    for layer in context_layers(encoder):
        if isinstance(layer, torch.nn.GroupNorm):
            continue
        weight: torch.Tensor = getattr(layer, "to_q").weight  # noqa: B009 (a diffusers Attention)
        times = []
        for rows in (side, 2 * side):  # (1, C, rows, side): N and 2N tokens
            context = torch.randn(1, weight.shape[1], rows, side, device=weight.device, dtype=weight.dtype)
            times.append(min(_seconds(partial(whole_term, layer, context)) for _ in range(2)))
        total += max(times[1] - 2 * times[0], times[1] / 8) / (2 * (side * side) ** 2)  # noise: at least 1/2 of t/N^2
    return total


def _timed_statistics(encoder: Encoder, x: torch.Tensor, halo: int) -> tuple[float, int, float]:
    """Seconds per pixel of a no-grad forward of x (1, 3, s, s) (the faster of two), the encoder's context
    layers, and a streaming measurement of their statistics over 4 tiles of x in forwards of the pixels read."""
    side, f = x.shape[-1], encoder.downsample_factor
    forward = min(_seconds(partial(_posterior_no_grad, encoder, x)) for _ in range(2)) / (side * side)
    norm = WholeImageNorm(encoder)
    if not norm:
        return forward, 0, 0.0
    grid = TileGrid(side, side, f, max(f, side // 2 // f * f), halo)
    stream = _seconds(partial(measure_norm, norm, encoder, x, grid)) / max(forward * grid.pixels_read(), 1e-12)
    return forward, len(norm.layers), stream


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _timed(objective: TiledObjective, x: torch.Tensor, generator: torch.Generator, checkpoint: bool) -> float:
    """Seconds of one loss-and-gradient evaluation, plain or checkpointed."""
    objective.checkpoint = checkpoint
    start = time.perf_counter()
    objective.loss_and_grad(x, 1e-8, generator, 1.0)
    objective.checkpoint = False
    return time.perf_counter() - start
