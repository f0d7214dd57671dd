"""How visible a perturbation is: pixel and perceptual metrics that need no downloaded weights.

* PSNR and SSIM: scikit-image (``peak_signal_noise_ratio``, ``structural_similarity``; 7x7 window);
* MS-SSIM: torchmetrics' definition (Wang, Simoncelli & Bovik 2003), with as many of the five standard scales as the
  image size allows (the betas of the dropped coarse scales are left out and the rest renormalised);
* VIF-P, the pixel-domain visual information fidelity (Sheikh & Bovik 2006): torchmetrics' definition, on the luma of
  the images on the 0-255 scale (as the reference implementation and piq's ``vif_p``); 1 = identical,
  lower = information lost. It is the perceptual index of the certificate: it ships without weights.
* the colour shift: the perturbation's mean per channel (0-255 scale), globally and the largest over
  ``window`` x ``window`` tiles, the measure of a colour cast.

Memory: MS-SSIM and VIF-P are computed here in float64 with separable Gaussian filters (``_blur``: shifted slices
added in place), equal to torchmetrics' functions to ~1e-14 relative (tested against them). torchmetrics'
float64 ``conv2d`` unfolds k^2 copies of its input: 5 GB and 2.4 GB per megapixel on whole images, 291 MB and
118 MB per 256-px tile, at 3.75 s and 1.78 s per tile on one thread; the separable filters take 30 MB and
5 MB at 0.06 s and 0.03 s (issue 12). Images larger than ``METRIC_TILE`` pixels on a
side are measured tile by tile (``METRIC_TILE`` squares, edge tiles as they fall) and the values
averaged with the tiles' areas as weights (the metrics' definition on large images, kept).
For SSIM this equals the whole-image value up to the windows that straddle a tile border; MS-SSIM's coarse
scales then see one tile at a time.

LPIPS is not computed: its backbone weights would have to be downloaded, which this engine never does.
(piq's HaarPSI / GMSD were the first choice, but piq imports torchvision at import time, which would tie
the install to one torch build.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, finest scale first
MS_SSIM_KERNEL = 11
VIF_MIN_SIDE = 41  # the VIF-P filters need at least this many pixels per side
METRIC_TILE = 256  # larger images are measured in tiles of this side (see the module docstring)
SHIFT_BAND_ROWS = 256  # rows of float64 scratch at a time in ``colour_shift``


def tiled_mean(
    fn: Callable[[Any, Any], float | None], reference: Any, test: Any, *, axes: tuple[int, int] = (-2, -1),
    tile: int = METRIC_TILE,
) -> float | None:
    """``fn(reference, test)`` on the whole pair when both sides fit in ``tile``, else the area-weighted mean of
    ``fn`` over ``tile`` x ``tile`` crops (tiles where ``fn`` is None are left out; None when all are).

    reference, test: tensors (3, H, W) or arrays (H, W, 3); ``axes`` names their height and width axes.
    """
    h, w = reference.shape[axes[0]], reference.shape[axes[1]]
    if h <= tile and w <= tile:
        return fn(reference, test)
    values, weights = [], []
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            index: list[Any] = [slice(None)] * reference.ndim
            index[axes[0]], index[axes[1]] = slice(top, top + tile), slice(left, left + tile)
            value = fn(reference[tuple(index)], test[tuple(index)])
            if value is not None:
                values.append(value)
                weights.append(min(tile, h - top) * min(tile, w - left))
    return float(np.average(values, weights=weights)) if values else None


def _hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor in [0, 1] -> (H, W, 3) float64 array."""
    return image.detach().double().cpu().permute(1, 2, 0).numpy()


def psnr_db(reference: torch.Tensor, test: torch.Tensor) -> float | None:
    """PSNR (dB) of two (3, H, W) images in [0, 1]; None when identical."""
    a, b = _hwc(reference), _hwc(test)
    if np.array_equal(a, b):
        return None
    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


def ssim(reference: torch.Tensor, test: torch.Tensor) -> float:
    """SSIM (scikit-image, 7x7 window or the image's side if smaller) of two (3, H, W) images in [0, 1]."""
    a, b = _hwc(reference), _hwc(test)
    side = min(a.shape[0], a.shape[1])
    win = min(7, side if side % 2 == 1 else side - 1)
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0, win_size=win))


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian window (size,) float64; the 2-D windows of MS-SSIM and VIF-P are its outer
    product with itself (``exp(-(a + b)) = exp(-a) exp(-b)``), so filtering with it along rows then columns
    equals torchmetrics' 2-D filter up to float64 rounding."""
    dist = torch.arange((1 - size) / 2, (1 + size) / 2, 1, dtype=torch.float64)
    window = torch.exp(-((dist / sigma) ** 2) / 2)
    return window / window.sum()


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Valid 2-D filtering of x (..., H, W) float64 with the separable ``window`` (n,): (..., H-n+1, W-n+1).

    Shifted slices accumulated in place: the scratch is two output-sized maps, where the float64 ``conv2d``
    torchmetrics runs unfolds n^2 copies of the input (~290 MB for MS-SSIM on a 256-px tile, issue 12)."""
    n = window.numel()
    rows = x[..., : x.shape[-2] - n + 1, :] * window[0]
    for i in range(1, n):
        rows.add_(x[..., i : x.shape[-2] - n + 1 + i, :], alpha=float(window[i]))
    out = rows[..., : rows.shape[-1] - n + 1] * window[0]
    for i in range(1, n):
        out.add_(rows[..., i : rows.shape[-1] - n + 1 + i], alpha=float(window[i]))
    return out


def _ssim_and_cs(preds: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """torchmetrics' SSIM (Gaussian sigma 1.5, 11 taps, reflect padding, data range 1) of (1, 3, H, W) float64
    pairs, and its contrast-sensitivity term inside the padding; both through a ReLU (its MS-SSIM default)."""
    pad, c1, c2 = MS_SSIM_KERNEL // 2, 0.01**2, 0.03**2
    preds = F.pad(preds, (pad, pad, pad, pad), mode="reflect")
    target = F.pad(target, (pad, pad, pad, pad), mode="reflect")
    maps = torch.cat((preds, target, preds * preds, target * target, preds * target))  # (5, 3, H+2p, W+2p)
    mu_p, mu_t, pp, tt, pt = _blur(maps, _gaussian(MS_SSIM_KERNEL, 1.5))  # each (3, H, W)
    upper = 2 * (pt - mu_p * mu_t) + c2
    lower = (pp - mu_p**2).clamp(min=0.0) + (tt - mu_t**2).clamp(min=0.0) + c2
    full = ((2 * mu_p * mu_t + c1) * upper) / ((mu_p**2 + mu_t**2 + c1) * lower)  # (3, H, W)
    cs = (upper / lower)[..., pad:-pad, pad:-pad]
    return max(0.0, float(full.mean())), max(0.0, float(cs.mean()))


def ms_ssim(reference: torch.Tensor, test: torch.Tensor) -> float | None:
    """MS-SSIM of two (3, H, W) images in [0, 1] with the scales their size allows; None below two scales.
    torchmetrics' ``multiscale_structural_similarity_index_measure`` (defaults, float64), computed with
    separable filters (``_blur``)."""
    side = min(reference.shape[-2:])

    def fits(n: int) -> bool:  # torchmetrics' size rule for n scales
        return side >= 2**n and side // max(1, n - 1) ** 2 > MS_SSIM_KERNEL - 1

    scales = 0
    while scales < len(MS_SSIM_BETAS) and fits(scales + 1):
        scales += 1
    if scales < 2:
        return None
    kept = MS_SSIM_BETAS[:scales]
    betas = kept if scales == len(MS_SSIM_BETAS) else tuple(b / sum(kept) for b in kept)
    preds, target = test[None].double().cpu(), reference[None].double().cpu()  # (1, 3, H, W)
    terms = []
    for scale in range(scales):
        sim, cs = _ssim_and_cs(preds, target)
        terms.append(sim if scale == scales - 1 else cs)
        preds, target = F.avg_pool2d(preds, (2, 2)), F.avg_pool2d(target, (2, 2))
    powers = torch.tensor(betas).double()  # float32 betas, as torchmetrics holds them
    return float(torch.prod(torch.tensor(terms, dtype=torch.float64) ** powers))


def _luma_255(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (1, 1, H, W) BT.601 luma on the 0-255 scale, float64."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)
    return (image.double().cpu() * weights).sum(dim=0)[None, None] * 255.0


def _vif_terms(ref: torch.Tensor, dist: torch.Tensor, window: torch.Tensor) -> tuple[float, float]:
    """One VIF-P scale of (1, 1, h, w) float64 lumas: the distorted and the reference information (torchmetrics)."""
    eps, noise = 1e-10, 2.0
    mu_r, mu_d = _blur(ref, window), _blur(dist, window)
    sigma_r = (_blur(ref * ref, window) - mu_r**2).clamp(min=0.0)
    sigma_d = (_blur(dist * dist, window) - mu_d**2).clamp(min=0.0)
    sigma_rd = _blur(ref * dist, window) - mu_r * mu_d
    g = sigma_rd / (sigma_r + eps)
    sv = sigma_d - g * sigma_rd
    flat = sigma_r < eps
    g[flat], sv[flat], sigma_r[flat] = 0, sigma_d[flat], 0
    still = sigma_d < eps
    g[still], sv[still] = 0, 0
    negative = g < 0
    sv[negative], g[negative] = sigma_d[negative], 0
    sv = sv.clamp(min=eps)
    kept = torch.log10(1.0 + g**2 * sigma_r / (sv + noise)).sum()
    return float(kept), float(torch.log10(1.0 + sigma_r / noise).sum())


def vif(reference: torch.Tensor, test: torch.Tensor) -> float | None:
    """VIF-P of two (3, H, W) images in [0, 1] (luma, 0-255 scale); None when a side is under 41 pixels or the
    reference carries no information (flat: torchmetrics returns NaN there; ``tiled_mean`` leaves such tiles
    out). torchmetrics' ``visual_information_fidelity`` (float64), computed with separable filters (``_blur``)."""
    if min(reference.shape[-2:]) < VIF_MIN_SIDE:
        return None
    ref, dist = _luma_255(reference), _luma_255(test)  # (1, 1, H, W)
    kept, total = 0.0, 0.0
    for scale in range(4):
        n = 2 ** (4 - scale) + 1
        window = _gaussian(n, n / 5)
        if scale > 0:
            ref, dist = _blur(ref, window)[..., ::2, ::2], _blur(dist, window)[..., ::2, ::2]
        part, whole = _vif_terms(ref, dist, window)
        kept, total = kept + part, total + whole
    return kept / total if total > 0 else None


def colour_shift(reference: torch.Tensor, test: torch.Tensor, window: int = 64) -> dict[str, list[float]]:
    """Mean of (test - reference) per channel on the 0-255 scale: ``global`` (3 values) and ``window_max``
    (per channel, the largest |mean| over non-overlapping ``window`` tiles, or the global one if smaller).
    float64 in bands of whole windows' rows: four whole-image float64 copies were 1.15 GB at 12 MP."""
    height, width = reference.shape[-2:]
    rows = window * max(1, SHIFT_BAND_ROWS // window)  # a band holds whole windows
    total = torch.zeros(3, dtype=torch.float64)  # (3,) sum of the differences, 0-255 scale
    worst = torch.zeros(3, dtype=torch.float64)  # (3,) largest |window mean|
    tiled = min(height, width) >= window
    for top in range(0, height, rows):
        band = slice(top, top + rows)
        diff = (test[:, band].double() - reference[:, band].double()).cpu().mul_(255.0)  # (3, rows, W)
        total += diff.sum(dim=(1, 2))
        whole = diff.shape[1] // window * window  # avg_pool2d drops a last partial window, as on the whole image
        if tiled and whole:
            means = F.avg_pool2d(diff[None, :, :whole], window)[0]  # (3, rows // window, W // window)
            worst = torch.maximum(worst, means.abs().flatten(1).amax(dim=1))
    overall = total / (height * width)  # (3,)
    if not tiled:
        worst = overall.abs()
    return {"global": [round(float(v), 4) for v in overall], "window_max": [round(float(v), 4) for v in worst]}


def visibility(reference: torch.Tensor, test: torch.Tensor) -> dict[str, float | None]:
    """PSNR, SSIM, MS-SSIM and VIF-P of two (3, H, W) images in [0, 1], as one dict."""
    return {
        "psnr_db": psnr_db(reference, test),
        "ssim": tiled_mean(ssim, reference, test),
        "ms_ssim": tiled_mean(ms_ssim, reference, test),
        "vif": tiled_mean(vif, reference, test),
    }
