"""PGD update rules: how far each pixel moves at each step, given the gradient of the collapse loss.

* ``L2Update`` (the engine default since issue 13/14's measurements on TAEF2) is steepest descent for the L2
  norm inside the L-inf box: every image moves along its gradient normalised to a root-mean-square of one,
  times the cosine-scheduled step (``step_size``), so pixels where the encoder is sensitive move more and the
  others less. The sign rules are steepest descent for L-inf: they spend the whole step on every pixel, which
  buys collapse with pixel energy the eye sees (PSNR is an L2 measure). On the real TAEF2 encoder (FLUX.2's
  latent space; ``benchmarks/visibility.py``) it gives more round-trip damage than Rprop at the same pixel
  PSNR, or the same damage about 1 dB less visible, at the same collapse.
* ``SignUpdate`` is the reference rule: every pixel moves by the same step along ``-sign(grad)``, the step
  constant (the reference) or on a cosine schedule.
* ``RpropUpdate`` (the default before issue 13) is sign-Rprop (Riedmiller & Braun, 1993; the variant without
  backtracking): every pixel keeps its own step, multiplied by ``etas[1]`` while its gradient sign holds and
  by ``etas[0]`` when it flips, clamped to a range. Pixels pushing into a corner of the budget get there in
  a few steps; pixels oscillating around an interior optimum get finer moves. It costs two extra tensors of
  the image's size and no extra forward or backward pass. Measured in ``benchmarks/efficacy.py``
  (``steps_to_reference_summary``).

All return the move to subtract from the iterate, (B, 3, H, W) on the [0, 1] scale; projection onto the
budget stays in the attack loop. ``torch.optim.Rprop`` is not used: it zeroes the gradient after a sign flip
(Rprop-minus), which measured worse here, and it cannot tie channels of grayscale images.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from pca_attack.attack.config import AttackConfig


def step_size(config: AttackConfig, step: int) -> float:
    """Sign- and L2-rule step (0-255 scale) at iteration ``step``: constant (the reference), or a cosine decay from
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
        return grad.sign().mul_(step_size(self.config, step) / 255.0)  # (B, 3, H, W)


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
        agreement = self.previous_sign.mul_(sign)  # +1 held, -1 flipped, 0 first step or zero gradient
        held, flipped = agreement > 0, agreement < 0  # (B, 3, H, W) bool
        factor = agreement.fill_(1.0).masked_fill_(held, self.grow).masked_fill_(flipped, self.shrink)
        self.size.mul_(factor).clamp_(self.low, self.high)  # (B, 3, H, W); in place: no whole-image copies
        self.previous_sign = sign
        return self.size * sign


class L2Update:
    """Normalised-gradient (L2 steepest-descent) rule: x <- x - step_size(step) * grad / rms(grad), the root
    mean square taken per image, so ``step`` is the root-mean-square move of one step on the 0-255 scale."""

    def __init__(self, config: AttackConfig) -> None:
        self.config = config

    def move(self, grad: torch.Tensor, step: int) -> torch.Tensor:
        rms = grad.float().pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()  # (B, 1, 1, 1)
        unit = grad / rms.clamp(min=torch.finfo(torch.float32).tiny)  # (B, 3, H, W), rms 1 (0 where grad is 0)
        return unit.mul_(step_size(self.config, step) / 255.0)


def make_update(config: AttackConfig, like: torch.Tensor) -> Update:
    """The update rule named by ``config.update`` for iterates shaped like ``like`` (B, 3, H, W)."""
    if config.update == "rprop":
        return RpropUpdate(config, like)
    if config.update == "l2":
        return L2Update(config)
    return SignUpdate(config)
