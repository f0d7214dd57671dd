"""A small fully-convolutional image -> perturbation network and its use inside the L-inf budget.

The network sees the image in [-1, 1], works at full, 1/2 and 1/4 resolution (a U-Net with residual blocks at
the bottom) and returns an unbounded map; ``perturbation`` squashes it to the budget with ``eps * tanh``, ties
it across channels for grayscale images and accepts any size (reflect-padded to a multiple of 4, cropped back).
``generator_image`` adds it to the image and rounds onto the image's integer grid with the budget re-enforced
(``pca_attack.attack.budget.quantize``), so the budget holds on the bytes as for PGD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pca_attack.attack.budget import quantize
from pca_attack.models.encoder import pad_to_multiple

MULTIPLE = 4  # two stride-2 stages


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PerturbationNet(nn.Module):
    """(B, 3, H, W) in [0, 1], H and W multiples of 4 -> (B, 3, H, W) unbounded perturbation logits."""

    def __init__(self, width: int = 32, blocks: int = 3, centred: bool = False) -> None:
        super().__init__()
        self.width, self.blocks = width, blocks
        self.centred = centred  # subtract each image's mean logit per channel: no constant colour shift
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.SiLU())
        self.down1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU())
        self.down2 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.SiLU())
        self.middle = nn.Sequential(*[_Residual(4 * width) for _ in range(blocks)])
        self.up2 = nn.Conv2d(4 * width, 2 * width, 3, padding=1)
        self.up1 = nn.Conv2d(2 * width, width, 3, padding=1)
        self.head = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.stem(x * 2.0 - 1.0)  # (B, w, H, W)
        s2 = self.down1(s1)  # (B, 2w, H/2, W/2)
        s4 = self.middle(self.down2(s2))  # (B, 4w, H/4, W/4)
        u2 = F.silu(self.up2(F.interpolate(s4, scale_factor=2.0, mode="nearest")) + s2)  # (B, 2w, H/2, W/2)
        u1 = F.silu(self.up1(F.interpolate(u2, scale_factor=2.0, mode="nearest")) + s1)  # (B, w, H, W)
        return self.head(u1)  # (B, 3, H, W)


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def perturbation(net: PerturbationNet, x: torch.Tensor, grayscale: torch.Tensor, eps_255: float) -> torch.Tensor:
    """The generator's perturbation of x (B, 3, H, W) in [0, 1]: (B, 3, H, W) with |delta| < eps/255,
    channel-tied where ``grayscale`` (B,) is True. Differentiable in the network's parameters."""
    height, width = x.shape[-2:]
    raw = net(pad_to_multiple(x, MULTIPLE))[..., :height, :width]  # (B, 3, H, W)
    gray = grayscale.to(x.device).view(-1, 1, 1, 1)
    if net.centred:  # a constant shift (darken everything) is the trivial universal answer: forbid it
        raw = raw - raw.mean(dim=(2, 3), keepdim=True)
    raw = torch.where(gray, raw.mean(dim=1, keepdim=True).expand_as(raw), raw)
    return eps_255 / 255.0 * torch.tanh(raw)


@torch.no_grad()
def generator_image(
    net: PerturbationNet, x: torch.Tensor, grayscale: torch.Tensor, levels: torch.Tensor, eps_255: float
) -> torch.Tensor:
    """x (B, 3, H, W) on its grid -> the protected image (B, 3, H, W) on the same grid, |q - x| <= eps on it."""
    net_param = next(net.parameters())
    x_net = x.to(net_param.device, net_param.dtype)
    delta = perturbation(net, x_net, grayscale, eps_255).to(x.device, torch.float32)  # (B, 3, H, W)
    return quantize((x + delta).clamp(0.0, 1.0), x, eps_255, levels.to(x.device, torch.float32))
