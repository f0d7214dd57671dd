"""What the PGD loop itself holds per image pixel, apart from any encoder's activations.

A tiled attack's peak is the larger of two phases: a tile's forward + backward beside the loop's state (the
probes of ``pca_attack.attack.probe`` measure it), and the whole-image work between the tiles — the update
rule, the budget projection and rounding, the best-iterate copies, the final measurement — when no
activations are alive. The second phase is invisible at probe sizes, where the step dominates, but it grows
with the image while a tile does not: with a cheap encoder and a large photo it is the peak (a tiny GroupNorm
VAE at 768 x 768 in 64-px tiles: 116 bytes per pixel measured against 48 planned).

``loop_bytes_per_pixel`` measures it for one configuration by running the real loop, tiled, on a stub encoder
whose activations are negligible (an average pool and a 1x1 convolution to the latent), at two sizes, and
fitting the slopes of two numbers: the loop's peak (the whole-image phase) and what it holds whenever the
encoder is called (the state a real tile's forward + backward sits beside: the clean image, the iterate, the
best iterate, the tiled gradient's accumulator...). It takes 0.1-2 s and is remembered per (configuration less
its step count, factor, latent channels, device): requests that differ only in steps share one measurement.

An EoT transform is the other per-configuration cost: its graph lives beside the encoder's activations for the
whole step and its time adds to every draw, both in proportion to the pixels the encoder reads (a tile's, not the
whole image's), so ``for_config`` adds them to the step's bytes and seconds per pixel
(``pca_attack.attack.eot_cost`` measures them per preset).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from pca_attack.attack.memory import Line, MemoryModel
from pca_attack.attack.sizes import measure_peak_and_state
from pca_attack.attack.tiling import TileGrid
from pca_attack.models.encoder import Encoder

if TYPE_CHECKING:
    from pca_attack.attack.config import AttackConfig

PROBE_SIDES = (256, 512)  # sides of the two probe images in pixels (rounded up to the factor), tiled in 8 latents


def stub_encoder(factor: int, latent_channels: int, device: torch.device) -> Encoder:
    """An encoder with the real one's factor and latent channels and (almost) no activations."""
    body = nn.Sequential(nn.AvgPool2d(factor), nn.Conv2d(3, 2 * latent_channels, 1))
    return Encoder(body, None, name="loop-memory-stub", config={}, device=device, dtype=torch.float32,
                   latent_channels=latent_channels, downsample_factor=factor, family="stub")


class LoopBytes(NamedTuple):
    """Bytes per image pixel (batch 1) the PGD loop holds beyond a tile's activations."""

    between_steps: float  # its peak: the whole-image work between the tiles (update, projection, rounding)
    during_tiles: float  # what it holds while a tile is encoded (the tile's step adds its own activations)


def loop_bytes_per_pixel(config: AttackConfig, factor: int, latent_channels: int, device: str = "cpu") -> LoopBytes:
    """The PGD loop's own bytes per image pixel of a tiled attack with ``config`` (batch 1)."""
    # every buffer exists by step 2; an EoT transform acts inside a tile's step (``transform_bytes_per_pixel``
    # counts it), not on the loop's whole-image tensors, and running it here cost minutes for ``cleaner``
    return _measured(replace(config, steps=2, eot=None, eot_samples=1), factor, latent_channels, device)


@functools.lru_cache(maxsize=32)
def _measured(probe_config: AttackConfig, factor: int, latent_channels: int, device: str) -> LoopBytes:
    from pca_attack.attack.pgd import Protector  # pgd imports the planner's modules

    stub = stub_encoder(factor, latent_channels, torch.device(device))
    measured = []
    sides = [-(-side // factor) * factor for side in PROBE_SIDES]
    for side in sides:
        grid = TileGrid(side, side, factor, 8 * factor, 0)
        attack = Protector(stub, probe_config)

        def run(side: int = side, grid: TileGrid = grid, attack: Protector = attack) -> None:
            x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))  # counted: the batch
            attack.protect(x.to(stub.device), tiles=grid)

        measured.append(measure_peak_and_state(run, stub.device, stub))
    area = sides[1] ** 2 - sides[0] ** 2
    peak, during = ((b - a) / area for a, b in zip(*measured, strict=True))
    return LoopBytes(max(0.0, peak), max(0.0, during))


def for_config(model: MemoryModel, config: AttackConfig, latent_channels: int, device: str = "cpu") -> MemoryModel:
    """``model`` with what ``config`` adds: the loop's own whole-image bytes (``loop_bytes_per_pixel``), and the
    EoT transform's graph on every line that holds a step and its time on every step (``eot_cost``)."""
    from pca_attack.attack.eot_cost import transform_bytes_per_pixel, transform_seconds_per_pixel

    loop = loop_bytes_per_pixel(config, model.factor, latent_channels, device)
    extra = transform_bytes_per_pixel(config.eot)

    def plus(line: Line) -> Line:
        return Line(line.fixed, line.per_pixel + extra)

    return replace(model, loop_image_per_pixel=loop.between_steps, loop_tile_per_pixel=loop.during_tiles,
                   step=plus(model.step), loop=plus(model.loop),
                   seconds_per_pixel=model.seconds_per_pixel + transform_seconds_per_pixel(config.eot, device),
                   checkpointed=None if model.checkpointed is None else plus(model.checkpointed))
