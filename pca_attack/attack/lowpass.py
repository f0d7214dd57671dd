"""Low-pass filtering of the attack's gradient: a perturbation with coarser structure, which cheap filters keep.

The plain attack's perturbation is a fine, pixel-scale texture: exactly what a Gaussian blur, a downscale or a
bilateral cleaner removes, and on TAEF2 such filters strip about half of the round-trip damage. Passing each
step's gradient through a Gaussian of ``sigma`` pixels before the update (``AttackConfig.smoothing``) moves the
image along the steepest direction *among smooth perturbations*, so the perturbation lives in the frequencies
those filters let through (the translation-invariant attack of Dong et al., "Evading defenses to transferable
adversarial examples by translation-invariant attacks", CVPR 2019, applies the same kernel for transfer).
Measured on TAEF2 in ``benchmarks/eot_channels.py --smoothing``.

The blur is a normalised convolution with zero padding: the sum of the kernel weights that fall inside the image
divides each output, so pixels near a border are averaged over the image only (no reflect copy of the
gradient, any image size, even one smaller than the kernel). Separable: two 1-D passes and two 1-D weight
vectors, so the scratch is one gradient-sized tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TRUNCATE = 3.0  # kernel radius in sigmas


def gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(2r + 1,) normalised 1-D Gaussian, r = ceil(TRUNCATE * sigma)."""
    radius = max(1, math.ceil(TRUNCATE * sigma))
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-(t**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def _pass(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, C, H, W) convolved with ``kernel`` along H (dim 2) or W (dim 3), zero padding, same shape."""
    channels, radius = x.shape[1], kernel.numel() // 2
    shape = (channels, 1, kernel.numel(), 1) if dim == 2 else (channels, 1, 1, kernel.numel())
    padding = (radius, 0) if dim == 2 else (0, radius)
    return F.conv2d(x, kernel.view(1, 1, *shape[2:]).expand(shape), padding=padding, groups=channels)


def _coverage(length: int, kernel: torch.Tensor) -> torch.Tensor:
    """(length,) sum of the kernel weights inside [0, length) around each position (1 away from the border)."""
    ones = torch.ones(1, 1, 1, length, device=kernel.device, dtype=kernel.dtype)
    return _pass(ones, kernel, 3).view(length)


def lowpass(grad: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian low-pass of (B, C, H, W) with std ``sigma`` pixels (normalised at the borders); same shape, a new
    tensor. ``sigma`` 0 returns ``grad`` itself."""
    if sigma <= 0:
        return grad
    height, width = grad.shape[-2:]
    kernel = gaussian_kernel(sigma, grad.device, grad.dtype)  # (k,)
    out = _pass(_pass(grad, kernel, 2), kernel, 3)  # (B, C, H, W)
    rows, cols = _coverage(height, kernel), _coverage(width, kernel)  # (H,), (W,)
    return out.div_(rows.view(height, 1)).div_(cols.view(1, width))
