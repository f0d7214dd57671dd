"""Differentiable stand-ins for edge-preserving cleaners, for expectation over transformations (EoT).

An AdverseCleaner-style cleaner (repeated bilateral filtering, then a guided filter steered by the input;
``pca_attack.redteam.channels.cleaner`` is the real one, on skimage and numpy) removes about half of the
protection's round-trip damage on TAEF2. Both filters are smooth functions of the pixels, so the attack can
see through them: ``bilateral`` and ``guided_filter`` here are torch versions of the same formulas, and
``RandomCleaner`` draws their strength per call.

Memory: a bilateral pass builds a graph of about 70 image-sized tensors (25 window offsets). Each pass runs
under activation checkpointing (``torch.utils.checkpoint``): the forward keeps only its input, and the backward
re-runs one pass at a time, after the encoder's activations are freed. The whole cleaner then keeps about 23
image-sized tensors for the backward (291 without checkpointing; ``tests/engine/test_eot_filters.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

GRAY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, the guide of the guided filter


def spatial_weights(radius: int, sigma: float) -> list[list[float]]:
    """The (2r+1, 2r+1) spatial weights skimage's ``denoise_bilateral`` (>= 0.19) applies: it builds its table
    as exp(-d^2 / 2 sigma^2) on the grid -(r+1)..r (one row and column more than the window) and reads it
    row-major with the window's stride, so the weights are not symmetric. Reproduced so that the stand-in
    matches the red team's filter (100 dB PSNR on chelsea), not an idealised one."""
    win = 2 * radius + 1
    grid = range(-win // 2, win // 2 + 1)  # -(r+1)..r
    table = [math.exp(-(r * r + c * c) / (2 * sigma**2)) for r in grid for c in grid]  # row-major, (win+1)^2
    return [[table[kr * win + kc] for kc in range(win)] for kr in range(win)]


def bilateral(x: torch.Tensor, sigma_color: float, sigma_spatial: float = 2.0, radius: int = 2) -> torch.Tensor:
    """skimage's ``denoise_bilateral`` of (B, C, H, W) in [0, 1] (window 2r+1, zero padding, its default):
    weight = spatial_weights(r, sigma_spatial) x exp(-(||x_i - x_j|| / C)^2 / 2 sigma_color^2), the colour
    distance taken over the C channels together and divided by C as skimage's lookup table does; same shape."""
    h, w = x.shape[-2:]
    channels = x.shape[1]
    spatial = spatial_weights(radius, sigma_spatial)
    padded = F.pad(x, (radius, radius, radius, radius))  # (B, C, H+2r, W+2r)
    numerator = torch.zeros_like(x)  # (B, C, H, W)
    denominator = torch.zeros_like(x[:, :1])  # (B, 1, H, W)
    for kr in range(2 * radius + 1):
        for kc in range(2 * radius + 1):
            neighbour = padded[..., kr: kr + h, kc: kc + w]  # (B, C, H, W)
            colour = (neighbour - x).square().sum(dim=1, keepdim=True) / channels**2  # (B, 1, H, W)
            weight = spatial[kr][kc] * torch.exp(-colour / (2 * sigma_color**2))  # (B, 1, H, W)
            numerator = numerator + weight * neighbour
            denominator = denominator + weight
    return numerator / denominator


def box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window of (B, C, H, W) with reflect padding; same shape."""
    pad_mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    padded = F.pad(x, (radius, radius, radius, radius), mode=pad_mode)
    return F.avg_pool2d(padded, 2 * radius + 1, stride=1)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter of src (B, C, H, W) steered by guide (B, 1, H, W); same shape as src."""
    mean_g, mean_s = box(guide, radius), box(src, radius)
    cov = box(guide * src, radius) - mean_g * mean_s  # (B, C, H, W)
    var = box(guide * guide, radius) - mean_g.square()  # (B, 1, H, W)
    a = cov / (var + eps)
    b = mean_s - a * mean_g
    return box(a, radius) * guide + box(b, radius)


def cleaner(x: torch.Tensor, iterations: int = 4, sigma_color: float = 0.05, sigma_spatial: float = 2.0,
            eps: float = 16.0 / 255.0**2) -> torch.Tensor:
    """AdverseCleaner-style cleaning of (B, 3, H, W) in [0, 1]: ``iterations`` bilateral passes (5x5), then a
    guided filter (radius 4) of the result steered by the input's luma; same shape, in [0, 1]."""
    y = x
    for _ in range(iterations):
        if y.requires_grad:
            y = checkpoint(bilateral, y, sigma_color, sigma_spatial, use_reentrant=False)  # type: ignore[assignment]
        else:
            y = bilateral(y, sigma_color, sigma_spatial)
    gray = (x * x.new_tensor(GRAY).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)  # (B, 1, H, W)
    return guided_filter(gray, y, radius=4, eps=eps).clamp(0.0, 1.0)


@dataclass(frozen=True)
class RandomCleaner:
    """``cleaner`` with 2-4 bilateral passes and a colour sigma drawn from [low, high] (0-1 scale)."""

    low: float = 0.03
    high: float = 0.08
    min_iterations: int = 2
    max_iterations: int = 4

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        iterations = int(torch.randint(self.min_iterations, self.max_iterations + 1, (), generator=generator))
        sigma = self.low + (self.high - self.low) * float(torch.rand((), generator=generator))
        return cleaner(x, iterations, sigma)


__all__ = ["RandomCleaner", "bilateral", "box", "cleaner", "guided_filter", "spatial_weights"]
