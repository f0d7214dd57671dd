"""Low-pass filtering of the attack's gradient (``AttackConfig.smoothing``): a perturbation with coarser structure.

The plain attack's perturbation is a fine, pixel-scale texture, which a Gaussian blur, a downscale or a bilateral
cleaner partly removes. Passing each step's gradient through a Gaussian of ``sigma`` pixels before the update moves
the image along the steepest direction *among smooth perturbations* (the kernel of the translation-invariant attack
of Dong et al., "Evading defenses to transferable adversarial examples by translation-invariant attacks", CVPR
2019). Measured on TAEF2 (``benchmarks/eot_channels.py --smoothing 0,1,2,4,8``, chelsea and coffee at natural
size, docs/smoothing_taef2.json), it is **not a protection gain**, hence a library and benchmark setting, off by
default and not offered by the service or the CLI: the round-trip damage after blurs and cleaners rises (sigma 8:
1.9x after a sigma-1 blur, 2.2x after the cleaner) only because the autoencoder *reproduces* a smooth change, whose
own visibility then counts as damage; the collapse falls (loss reduction 0.83 -> 0.17 at sigma 8) and the excess
damage (``pca_attack.redteam.report``: what the round trip loses beyond reproducing either image) falls with it
(lossless 7.13 -> 0.68 dB). Sigma 1 is the only mixed case: excess damage 1.23x after the blur and 1.26x after a
0.5x downscale, but 0.80x after JPEG q75 and 0.85x after purification.

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
    """(2r + 1,) normalised 1-D Gaussian, r = max(1, ceil(TRUNCATE * sigma)); shared by the EoT blur and the JND
    map's smoothing."""
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
