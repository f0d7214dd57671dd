"""Bookkeeping of the PGD loop: the loss trace, the best iterate per image, and early stop.

Kept apart so the loop in ``pgd.py`` reads like torchattacks' PGD. Objectives are "lower is better"
(the loss times the preset's sign).
"""

from __future__ import annotations

import math

import torch

from pca_attack.attack.config import AttackConfig


class BestIterate:
    """Remembers, per image, the iterate with the lowest objective seen so far and when it was seen."""

    def __init__(self, x_start: torch.Tensor, config: AttackConfig) -> None:
        batch, device = x_start.shape[0], x_start.device
        self.config = config
        self.best = x_start.clone()  # (B, 3, H, W)
        self.best_obj = torch.full((batch,), math.inf, device=device)  # (B,)
        self.best_step = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
        self.stale = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) steps without progress
        self.trace: list[torch.Tensor] = []  # per step: (B,) fp32 loss on the CPU
        self.steps_run = 0

    def observe(self, step: int, x_adv: torch.Tensor, loss: torch.Tensor, sign: float) -> None:
        """Record the loss (B,) of the iterate (B, 3, H, W) that step ``step`` started from."""
        obj = sign * loss
        self.trace.append(loss.float().cpu())
        tol = self.config.early_stop_tol * self.best_obj.abs().clamp(min=1e-12)
        improved = obj < self.best_obj - tol
        self.stale = torch.where(improved, torch.zeros_like(self.stale), self.stale + 1)
        better = obj < self.best_obj
        self.best = torch.where(better.view(-1, 1, 1, 1), x_adv, self.best)
        self.best_obj = torch.where(better, obj, self.best_obj)
        self.best_step = torch.where(better, torch.full_like(self.best_step, step), self.best_step)
        self.steps_run = step + 1

    def should_stop(self) -> bool:
        """True when early stop is on and no image improved for ``early_stop_patience`` steps."""
        patience = self.config.early_stop_patience
        return bool(patience) and bool((self.stale >= patience).all())

    def choose(self, x_last: torch.Tensor, last_obj: torch.Tensor | None) -> torch.Tensor:
        """The iterate to return (B, 3, H, W): the best one, or the last when it is better or keep_best is off.

        ``last_obj`` is the objective of the last iterate (None when keep_best is off: it is not needed).
        """
        everyone = torch.ones_like(self.best_obj, dtype=torch.bool)
        take_last = everyone if last_obj is None else last_obj < self.best_obj  # (B,)
        self.best_step = torch.where(take_last, torch.full_like(self.best_step, self.steps_run), self.best_step)
        if bool(take_last.all()):  # one side whole: no mixed copy of the images
            return x_last
        if not bool(take_last.any()):
            return self.best
        return torch.where(take_last.view(-1, 1, 1, 1), x_last, self.best)

    def loss_trace(self, batch: int) -> torch.Tensor:
        """(B, steps_run) fp32 losses, one column per step."""
        return torch.stack(self.trace, dim=1) if self.trace else torch.zeros(batch, 0)
