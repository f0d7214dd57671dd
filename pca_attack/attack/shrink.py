"""The shrink pass: after PGD, the smallest perturbation that keeps a given share of the achieved collapse.

The collapse loss saturates with the budget (issue 13: eps 4 -> 16 buys little loss but costs ~10 dB of
pixel PSNR), so a large part of PGD's perturbation buys almost nothing. Two searches, each a vectorised
bisection per image over forward passes only (no gradient), every candidate projected onto the budget and
rounded to the image grid before it is judged, so what is kept is what is written:

1. **prune**: rank ``block`` x ``block`` tiles by first-order saliency ``|grad . eta|`` (one backward pass at
   the PGD result) and keep the fewest most-salient tiles that still hold ``1 - (1 - share) / 2`` of the gain;
2. **scale**: multiply what is left by the smallest factor in [0, 1] that still holds ``share`` of the gain.

Gain is measured on the objective (the loss times the preset's sign, lower is better):
``gain(p) = obj(x) - obj(p)``; the result keeps ``gain >= share * gain(PGD result)`` for every image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pca_attack.attack.budget import Budget

Objective = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) images -> (B,) objective, lower is better
Gradient = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) images -> (B, 3, H, W) objective gradient


class Shrinker:
    """Shrinks a batch of PGD results inside ``budget`` (see the module docstring)."""

    def __init__(
        self, budget: Budget, levels: torch.Tensor, objective: Objective, *, block: int = 8, rounds: int = 6
    ) -> None:
        self.budget = budget
        self.x = budget.x  # (B, 3, H, W) clean images
        self.levels = levels  # (B,) grid size per image
        self.objective = objective
        self.block = block
        self.rounds = rounds

    def realise(self, eta: torch.Tensor) -> torch.Tensor:
        """A perturbation (B, 3, H, W) made feasible: projected onto the budget and rounded to the grid."""
        return self.budget.to_grid(self.budget.project(self.x + eta), self.levels)

    def __call__(self, x_adv: torch.Tensor, gradient: Gradient, share: float) -> torch.Tensor:
        """The shrunk images (B, 3, H, W) on the grid; ``x_adv`` (B, 3, H, W) is PGD's (quantised) result."""
        obj_clean = self.objective(self.x)  # (B,)
        obj_adv = self.objective(x_adv)
        gain = obj_clean - obj_adv  # (B,) > 0 where PGD made progress
        if not bool((gain > 0).any()):
            return x_adv
        eta = x_adv - self.x  # (B, 3, H, W)
        with torch.enable_grad():  # the caller may run under no_grad
            grad = gradient(x_adv)  # (B, 3, H, W)
        saliency = (grad * eta).sum(dim=1, keepdim=True).abs()  # (B, 1, H, W)
        pruned_need = obj_clean - (1.0 - (1.0 - share) / 2.0) * gain
        eta = self._bisect(lambda k: self._prune(eta, saliency, k), pruned_need, x_adv) - self.x
        shrunk = self._bisect(lambda a: self.realise(eta * a.view(-1, 1, 1, 1)), obj_clean - share * gain, eta + self.x)
        keep = (gain > 0).view(-1, 1, 1, 1)
        return torch.where(keep, shrunk, x_adv)

    def _prune(self, eta: torch.Tensor, saliency: torch.Tensor, keep_share: torch.Tensor) -> torch.Tensor:
        """Keep the ``keep_share`` (B,) most salient tiles of ``eta``; realised images (B, 3, H, W)."""
        h, w = eta.shape[-2:]
        tiles = F.avg_pool2d(saliency, self.block, ceil_mode=True)  # (B, 1, h', w')
        flat = tiles.flatten(1)  # (B, n)
        ranked, _ = flat.sort(dim=1, descending=True)
        count = (keep_share * flat.shape[1]).ceil().clamp(1, flat.shape[1]).long()  # (B,)
        threshold = ranked.gather(1, (count - 1).view(-1, 1))  # (B, 1)
        mask = (tiles >= threshold.view(-1, 1, 1, 1)).to(eta.dtype)  # (B, 1, h', w')
        mask = F.interpolate(mask, scale_factor=self.block, mode="nearest")[..., :h, :w]  # (B, 1, H, W)
        return self.realise(eta * mask)

    def _bisect(
        self, candidate: Callable[[torch.Tensor], torch.Tensor], need: torch.Tensor, fallback: torch.Tensor
    ) -> torch.Tensor:
        """Smallest t in [0, 1] per image with objective(candidate(t)) <= need; candidate(t) at that t
        (``fallback`` (B, 3, H, W), the t = 1 result, where no smaller t qualifies)."""
        batch = need.shape[0]
        low = torch.zeros(batch, device=need.device)
        high = torch.ones(batch, device=need.device)
        best = fallback
        for _ in range(self.rounds):
            mid = (low + high) / 2.0
            images = candidate(mid)  # (B, 3, H, W)
            ok = self.objective(images) <= need  # (B,)
            best = torch.where(ok.view(-1, 1, 1, 1), images, best)
            high = torch.where(ok, mid, high)
            low = torch.where(ok, low, mid)
        return best

