"""A small fully-convolutional image -> perturbation network and its use inside the attack's budget.

The network sees the image in [-1, 1], works at full, 1/2 and 1/4 resolution (a U-Net with residual blocks at
the bottom) and returns an unbounded map; an optional learnt image-independent ``pattern`` (period P pixels,
a multiple of the encoders' 8-pixel grid, tiled from the image's top-left corner) is added to it, so the
network only learns the image-conditioned part. ``perturbation`` squashes the map to the budget with
``eps * tanh``, ties it across channels for grayscale images and accepts any size (reflect-padded to a
multiple of 4, cropped back).

``generator_image`` treats the generator's image exactly as the PGD loop treats its iterates: the budget of the
configuration (``make_budget``: the L-inf box or the JND map, colour-neutral by default) projects it, and
``quantize`` rounds it onto the image's integer grid with the bound re-enforced, so the budget holds on the
bytes. ``training_image`` is the differentiable counterpart used in training (box + the colour-neutral mean
removal), so the generator learns under the constraint it is used with (no constant colour shift).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pca_attack.attack.budget import ColourNeutral, LinfBudget, make_budget, quantize
from pca_attack.attack.config import AttackConfig
from pca_attack.models.encoder import pad_to_multiple

MULTIPLE = 4  # two stride-2 stages
UNTILED_PIXELS = 1 << 20  # larger images run the generator in tiles (~450 bytes per pixel at width 16)
TILE_CORE, TILE_HALO = 512, 64  # multiples of 32: the stride-4 grid and the pattern period stay aligned


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

    def __init__(self, width: int = 32, blocks: int = 3, centred: bool = False, pattern: int = 0) -> None:
        super().__init__()
        self.width, self.blocks, self.period = width, blocks, pattern
        self.centred = centred  # subtract each image's mean logit per channel: no constant colour shift
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.SiLU())
        self.down1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU())
        self.down2 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.SiLU())
        self.middle = nn.Sequential(*[_Residual(4 * width) for _ in range(blocks)])
        self.up2 = nn.Conv2d(4 * width, 2 * width, 3, padding=1)
        self.up1 = nn.Conv2d(2 * width, width, 3, padding=1)
        self.head = nn.Conv2d(width, 3, 3, padding=1)
        if pattern:  # image-independent logits, one period (1, 3, P, P), tiled over the image
            self.pattern = nn.Parameter(torch.zeros(1, 3, pattern, pattern))
        nn.init.zeros_(self.head.weight)  # starts as the pattern alone (no random image-conditioned noise)
        nn.init.zeros_(self.head.bias)  # type: ignore[arg-type]  # the head has a bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.stem(x * 2.0 - 1.0)  # (B, w, H, W)
        s2 = self.down1(s1)  # (B, 2w, H/2, W/2)
        s4 = self.middle(self.down2(s2))  # (B, 4w, H/4, W/4)
        u2 = F.silu(self.up2(F.interpolate(s4, scale_factor=2.0, mode="nearest")) + s2)  # (B, 2w, H/2, W/2)
        u1 = F.silu(self.up1(F.interpolate(u2, scale_factor=2.0, mode="nearest")) + s1)  # (B, w, H, W)
        out = self.head(u1)  # (B, 3, H, W)
        if self.period:
            height, width = x.shape[-2:]
            reps = (-(-height // self.period), -(-width // self.period))
            out = out + self.pattern.repeat(1, 1, *reps)[..., :height, :width]  # (1, 3, H, W) broadcast
        return out


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def logits_in_tiles(
    net: PerturbationNet, x: torch.Tensor, core: int = TILE_CORE, halo: int = TILE_HALO
) -> torch.Tensor:
    """``net(x)`` for x (B, 3, H, W), H and W multiples of 4, in overlapping tiles when the image has more than
    ``UNTILED_PIXELS``: each tile is its ``core`` x ``core`` part plus ``halo`` pixels of real context on every
    side (clipped at the image's edges, where the whole image sees the same zero padding), and only the core is
    kept. Tile origins are multiples of the stride-4 grid and of the pattern's period, and the halo covers
    the network's receptive field (~32 px), so the result equals the whole-image pass up to float rounding
    (tested) while the activations held are one tile's: a 12 MP photo took 5.8 GB in one pass (demo generator)."""
    height, width = x.shape[-2:]
    if height * width <= UNTILED_PIXELS:
        return net(x)
    step = MULTIPLE * net.period // math.gcd(MULTIPLE, net.period) if net.period else MULTIPLE  # lcm
    core, halo = -(-core // step) * step, -(-halo // step) * step  # tile origins stay on the pattern's grid
    out = torch.empty(x.shape[0], 3, height, width, device=x.device, dtype=x.dtype)  # (B, 3, H, W)
    for top in range(0, height, core):
        for left in range(0, width, core):
            y0, x0 = max(top - halo, 0), max(left - halo, 0)
            y1, x1 = min(top + core + halo, height), min(left + core + halo, width)
            tile = net(x[..., y0:y1, x0:x1])  # (B, 3, y1 - y0, x1 - x0); its pattern starts at (y0, x0)
            bottom, right = min(top + core, height), min(left + core, width)
            out[..., top:bottom, left:right] = tile[..., top - y0 : bottom - y0, left - x0 : right - x0]
    return out


def perturbation(net: PerturbationNet, x: torch.Tensor, grayscale: torch.Tensor, eps_255: float) -> torch.Tensor:
    """The generator's perturbation of x (B, 3, H, W) in [0, 1]: (B, 3, H, W) with |delta| < eps/255,
    channel-tied where ``grayscale`` (B,) is True. Differentiable in the network's parameters."""
    height, width = x.shape[-2:]
    raw = logits_in_tiles(net, pad_to_multiple(x, MULTIPLE))[..., :height, :width]  # (B, 3, H, W)
    gray = grayscale.to(x.device).view(-1, 1, 1, 1)
    if net.centred:  # a constant shift (darken everything) is the trivial universal answer: forbid it
        raw = raw - raw.mean(dim=(2, 3), keepdim=True)
    raw = torch.where(gray, raw.mean(dim=1, keepdim=True).expand_as(raw), raw)
    return eps_255 / 255.0 * torch.tanh(raw)


def training_image(
    net: PerturbationNet, x: torch.Tensor, grayscale: torch.Tensor, config: AttackConfig, exact: bool = False
) -> torch.Tensor:
    """Differentiable x_adv (B, 3, H, W) for training: the perturbation, made colour-neutral (its mean per
    channel removed, globally and per window, as ``ColourNeutral`` does) when the configuration is, clipped to
    the box and to [0, 1]. ``exact``: the configuration's own budget projection instead (``make_budget``: the
    box and three alternating mean removals, what ``generator_image`` applies at use)."""
    delta = perturbation(net, x, grayscale, config.eps)  # (B, 3, H, W)
    bound = config.eps / 255.0
    if exact and config.colour_neutral:  # LinfBudget.project detaches: its steps, differentiable
        neutral = ColourNeutral(LinfBudget(x, config.eps, grayscale), config.neutral_window)
        delta = (x + delta.clamp(-bound, bound)).clamp(0.0, 1.0) - x  # (B, 3, H, W) inside the box
        for _ in range(neutral.rounds):
            delta = (x + neutral.neutralise(delta).clamp(-bound, bound)).clamp(0.0, 1.0) - x
        return x + delta
    if config.colour_neutral:
        delta = ColourNeutral(LinfBudget(x, config.eps, grayscale), config.neutral_window).neutralise(delta)
    return (x + delta.clamp(-bound, bound)).clamp(0.0, 1.0)


@torch.no_grad()
def generator_image(
    net: PerturbationNet, x: torch.Tensor, grayscale: torch.Tensor, levels: torch.Tensor, config: AttackConfig
) -> torch.Tensor:
    """x (B, 3, H, W) on its grid -> the protected image (B, 3, H, W) on the same grid: projected by the
    configuration's budget as a PGD iterate is, then rounded with |q - x| <= the bound re-enforced."""
    net_param = next(net.parameters())
    x_net = x.to(net_param.device, net_param.dtype)
    gray = grayscale.to(x.device)
    delta = perturbation(net, x_net, gray, config.eps).to(x.device, torch.float32)  # (B, 3, H, W)
    budget = make_budget(config, x, gray)
    projected = budget.project(x + delta)  # (B, 3, H, W): box (or JND map), colour-neutral by default
    return quantize(projected, x, budget.bound_255, levels.to(x.device, torch.float32))
