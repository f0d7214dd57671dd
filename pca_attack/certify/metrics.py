"""How visible a perturbation is: pixel and perceptual metrics that need no downloaded weights.

* PSNR and SSIM: scikit-image (``peak_signal_noise_ratio``, ``structural_similarity``; 7x7 window);
* MS-SSIM: torchmetrics (Wang, Simoncelli & Bovik 2003), with as many of the five standard scales as the
  image size allows (the betas of the dropped coarse scales are left out and the rest renormalised);
* VIF-P, the pixel-domain visual information fidelity (Sheikh & Bovik 2006): torchmetrics, on the luma of
  the images on the 0-255 scale (as the reference implementation and piq's ``vif_p``); 1 = identical,
  lower = information lost. It is the perceptual index of the certificate: it ships without weights.
* the colour shift: the perturbation's mean per channel (0-255 scale), globally and the largest over
  ``window`` x ``window`` tiles, the measure of a colour cast.

Memory: torchmetrics' MS-SSIM and VIF-P work in float64 on whole-image maps and were measured here at about
5 GB and 2.4 GB per megapixel (scikit-image's SSIM about 0.15 GB). Images larger than ``METRIC_TILE`` pixels on a
side are therefore measured tile by tile (``METRIC_TILE`` squares, edge tiles as they fall) and the values
averaged with the tiles' areas as weights: the certificate of a 12 MP photo stays within a few hundred MB.
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


def ms_ssim(reference: torch.Tensor, test: torch.Tensor) -> float | None:
    """MS-SSIM of two (3, H, W) images in [0, 1] with the scales their size allows; None below two scales."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

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
    value = multiscale_structural_similarity_index_measure(
        test[None].double(), reference[None].double(), data_range=1.0, kernel_size=MS_SSIM_KERNEL, betas=betas
    )
    return float(value)


def _luma_255(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (1, 1, H, W) BT.601 luma on the 0-255 scale, float64."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)
    return (image.double().cpu() * weights).sum(dim=0)[None, None] * 255.0


def vif(reference: torch.Tensor, test: torch.Tensor) -> float | None:
    """VIF-P of two (3, H, W) images in [0, 1] (luma, 0-255 scale); None when a side is under 41 pixels."""
    from torchmetrics.functional.image import visual_information_fidelity

    if min(reference.shape[-2:]) < VIF_MIN_SIDE:
        return None
    return float(visual_information_fidelity(_luma_255(test), _luma_255(reference)))


def colour_shift(reference: torch.Tensor, test: torch.Tensor, window: int = 64) -> dict[str, list[float]]:
    """Mean of (test - reference) per channel on the 0-255 scale: ``global`` (3 values) and ``window_max``
    (per channel, the largest |mean| over non-overlapping ``window`` tiles, or the global one if smaller)."""
    diff = (test.double() - reference.double()).cpu() * 255.0  # (3, H, W)
    overall = diff.mean(dim=(1, 2))  # (3,)
    if min(diff.shape[-2:]) >= window:
        tiles = F.avg_pool2d(diff[None], window)[0]  # (3, H // window, W // window)
        worst = tiles.abs().flatten(1).amax(dim=1)  # (3,)
    else:
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
