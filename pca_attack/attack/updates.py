"""PGD update rules: how far each pixel moves at each step, given the gradient of the collapse loss.

* ``SignUpdate`` is the reference rule: every pixel moves by the same step along ``-sign(grad)``, the step
  constant (the reference) or on a cosine schedule.
* ``RpropUpdate`` (the engine default) is sign-Rprop (Riedmiller & Braun, 1993; the variant without
  backtracking): every pixel keeps its own step, multiplied by ``etas[1]`` while its gradient sign holds and
  by ``etas[0]`` when it flips, clamped to a range. Pixels pushing into a corner of the budget get there in
  a few steps; pixels oscillating around an interior optimum get finer moves. It costs two extra tensors of
  the image's size and no extra forward or backward pass. Measured in ``benchmarks/efficacy.py``
  (``steps_to_reference_summary``).

Both return the move to subtract from the iterate, (B, 3, H, W) on the [0, 1] scale; projection onto the
budget stays in the attack loop. ``torch.optim.Rprop`` is not used: it zeroes the gradient after a sign flip
(Rprop-minus), which measured worse here, and it cannot tie channels of grayscale images.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from pca_attack.attack.config import AttackConfig


def step_size(config: AttackConfig, step: int) -> float:
    """Sign-rule step (0-255 scale) at iteration ``step``: constant (the reference), or a cosine decay from
    ``step_peak`` x step down to step / 2 (big moves first, fine moves at the end)."""
    if config.step_schedule == "constant" or config.steps <= 1:
        return config.step
    start, end = config.step * config.step_peak, config.step / 2.0
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * step / (config.steps - 1)))


class Update(Protocol):
    """One PGD update rule: ``move(grad, step)`` -> (B, 3, H, W) move to subtract from the iterate."""

    def move(self, grad: torch.Tensor, step: int) -> torch.Tensor: ...


class SignUpdate:
    """The reference rule: x <- x - step_size(step) * sign(grad), the same step for every pixel."""

    def __init__(self, config: AttackConfig) -> None:
        self.config = config

    def move(self, grad: torch.Tensor, step: int) -> torch.Tensor:
        return step_size(self.config, step) / 255.0 * grad.sign()  # (B, 3, H, W)


class RpropUpdate:
    """Sign-Rprop: a step per pixel, grown while the gradient sign holds, shrunk when it flips.

    Starts at ``rprop_init x step``; bounded by ``rprop_range x step`` (all on the 0-255 scale of ``step``).
    """

    def __init__(self, config: AttackConfig, like: torch.Tensor) -> None:
        shrink, grow = config.rprop_etas
        low, high = config.rprop_range
        self.shrink, self.grow = shrink, grow
        self.low, self.high = low * config.step / 255.0, high * config.step / 255.0
        self.size = torch.full_like(like, config.rprop_init * config.step / 255.0)  # (B, 3, H, W) per-pixel step
        self.previous_sign = torch.zeros_like(like)  # (B, 3, H, W); 0 before the first step

    def move(self, grad: torch.Tensor, step: int) -> torch.Tensor:
        sign = grad.sign()  # (B, 3, H, W)
        agreement = sign * self.previous_sign  # +1 held, -1 flipped, 0 first step or zero gradient
        factor = torch.where(agreement > 0, self.grow, torch.where(agreement < 0, self.shrink, 1.0))
        self.size = (self.size * factor).clamp(self.low, self.high)  # (B, 3, H, W)
        self.previous_sign = sign
        return self.size * sign


def make_update(config: AttackConfig, like: torch.Tensor) -> Update:
    """The update rule named by ``config.update`` for iterates shaped like ``like`` (B, 3, H, W)."""
    if config.update == "rprop":
        return RpropUpdate(config, like)
    return SignUpdate(config)
