"""The measurements behind a model's ``MemoryModel``: small probes of memory, time and receptive field.

``probe(encoder)`` runs the loss and input gradient of one step (plain and with gradient checkpointing), a
two-step attack and a no-grad forward, each at two sizes, and fits ``bytes = fixed + per_pixel * pixels`` to
the measured peaks (``pca_attack.attack.sizes.measure_peak``). It also times a step, a checkpointed step, a
forward and one streaming measurement of the whole-image statistics over four tiles
(``pca_attack.attack.norm_stats``), and measures the receptive radius that sets the tiles' halo.
``pca_attack.attack.memory.memory_model`` calls it once per loaded encoder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial

import torch

from pca_attack.attack.memory import MAX_HALO_LATENTS, MIN_HALO_LATENTS, Line, MemoryModel
from pca_attack.attack.norm_stats import WholeImageNorm
from pca_attack.attack.sizes import measure_peak
from pca_attack.attack.tiling import TiledObjective, TileGrid, measure_norm
from pca_attack.models.encoder import Encoder


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
    forward_s, layers, stream = _timed_statistics(encoder, x_dev, halo)
    return MemoryModel(step_line, forward_line, loop_line, seconds_per_pixel=seconds[0], factor=f, halo=halo,
                       checkpointed=ckpt_line, checkpoint_time=max(1.0, seconds[1] / max(seconds[0], 1e-12)),
                       forward_seconds_per_pixel=forward_s, context_layers=layers, stream_passes=stream)


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
