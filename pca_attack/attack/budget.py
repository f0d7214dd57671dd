"""Where the perturbation may live: the L-inf budget around the clean image, and rounding to the image grid.

``LinfBudget`` owns everything the PGD loop needs to know about the feasible set: the optional random start,
tying the gradient across channels for grayscale images, and the projection after each update. A new kind of
budget (a per-pixel map, a colour-neutral constraint) is a new class with the same three methods.
"""

from __future__ import annotations

import torch


class LinfBudget:
    """|x_adv - x| <= eps (per pixel, per channel) and x_adv in [0, 1]; grayscale images move channel-tied."""

    def __init__(self, x: torch.Tensor, eps_255: float, grayscale: torch.Tensor) -> None:
        self.x = x  # (B, 3, H, W) clean images in [0, 1]
        self.eps = eps_255 / 255.0
        self.gray = grayscale.view(-1, 1, 1, 1)  # (B, 1, 1, 1) bool

    def start(self, random: bool, generator: torch.Generator) -> torch.Tensor:
        """The first iterate: the clean image, or uniform noise inside the budget (channel-tied for gray)."""
        if not random:
            return self.x.clone()
        noise = torch.empty(self.x.shape).uniform_(-self.eps, self.eps, generator=generator).to(self.x.device)
        return self.project(self.x + self.tie(noise))

    def tie(self, t: torch.Tensor) -> torch.Tensor:
        """Make a (B, 3, H, W) step direction channel-tied on grayscale images (gray stays gray)."""
        return torch.where(self.gray, t[:, :1].expand_as(t), t)

    def tie_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """Gradient of the channel-tied perturbation: the channel sum, broadcast back (B, 3, H, W)."""
        return torch.where(self.gray, grad.sum(dim=1, keepdim=True).expand_as(grad), grad)

    def project(self, x_adv: torch.Tensor) -> torch.Tensor:
        """Back into the ball around x and into [0, 1]; detached."""
        eta = torch.clamp(x_adv - self.x, min=-self.eps, max=self.eps)
        return torch.clamp(self.x + eta, min=0.0, max=1.0).detach()


def quantize(x_adv: torch.Tensor, x: torch.Tensor, eps: float, levels: torch.Tensor) -> torch.Tensor:
    """Round to each image's grid (levels = 255 or 65535) and re-enforce |q - x| <= eps (0-255 scale).

    x_adv, x: (B, 3, H, W) in [0, 1]; levels: (B,) float. Returns (B, 3, H, W) on the grid.
    """
    lv = levels.view(-1, 1, 1, 1).to(x.dtype)  # (B, 1, 1, 1)
    budget = torch.floor(eps / 255.0 * lv + 1e-6)  # (B, 1, 1, 1) in grid steps
    x_int = torch.round(x * lv)  # (B, 3, H, W)
    q_int = torch.round(x_adv * lv)
    q_int = torch.minimum(torch.maximum(q_int, x_int - budget), x_int + budget).clamp(min=0)
    q_int = torch.minimum(q_int, lv)
    return q_int / lv
