"""Visibility metrics agree with the libraries' own functions and with values known in closed form."""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    visual_information_fidelity,
)

from pca_attack.certify.metrics import colour_shift, ms_ssim, psnr_db, ssim, vif, visibility


def fixed_pair(height: int = 192, width: int = 192, noise: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth image and a noisy copy, both (3, H, W) in [0, 1] (seeded)."""
    g = torch.Generator().manual_seed(7)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    ref = torch.stack([0.5 + 0.3 * torch.sin(6 * xx), 0.4 + 0.3 * yy, 0.3 + 0.2 * torch.cos(5 * xx * yy)])
    test = (ref + noise * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    return ref, test


def test_metrics_agree_with_the_libraries_on_a_fixed_pair() -> None:
    ref, test = fixed_pair()
    a, b = ref.double().permute(1, 2, 0).numpy(), test.double().permute(1, 2, 0).numpy()
    assert math.isclose(psnr_db(ref, test), peak_signal_noise_ratio(a, b, data_range=1.0), rel_tol=1e-9)
    expected_ssim = structural_similarity(a, b, channel_axis=2, data_range=1.0, win_size=7)
    assert math.isclose(ssim(ref, test), expected_ssim, rel_tol=1e-9)
    expected_ms = multiscale_structural_similarity_index_measure(test[None].double(), ref[None].double(), data_range=1)
    assert math.isclose(ms_ssim(ref, test), float(expected_ms), rel_tol=1e-6)  # 192 px: all five scales
    w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)
    luma = lambda t: ((t.double() * w).sum(0) * 255)[None, None]  # noqa: E731
    assert math.isclose(vif(ref, test), float(visual_information_fidelity(luma(test), luma(ref))), rel_tol=1e-9)


def test_closed_form_values() -> None:
    ref, _ = fixed_pair(64, 64)
    shifted = ref.clone()
    shifted[1] += 2 / 255  # green + 2 grey levels, nothing clipped
    assert math.isclose(psnr_db(ref, shifted), 10 * math.log10(1 / ((2 / 255) ** 2 / 3)), rel_tol=1e-6)
    shift = colour_shift(ref, shifted, window=32)
    assert np.allclose(shift["global"], [0, 2, 0], atol=1e-3) and np.allclose(shift["window_max"], [0, 2, 0], atol=1e-3)
    same = visibility(ref, ref)
    assert same["psnr_db"] is None and math.isclose(same["ssim"], 1.0) and math.isclose(same["ms_ssim"], 1.0)
    assert math.isclose(same["vif"], 1.0, rel_tol=1e-6)


def test_more_noise_scores_worse_and_small_images_degrade_gracefully() -> None:
    ref, light = fixed_pair(noise=0.01)
    _, heavy = fixed_pair(noise=0.05)
    lo, hi = visibility(ref, light), visibility(ref, heavy)
    for key in ("psnr_db", "ssim", "ms_ssim", "vif"):
        assert lo[key] > hi[key], key
    tiny_ref, tiny_test = fixed_pair(10, 30)
    tiny = visibility(tiny_ref, tiny_test)
    assert tiny["vif"] is None and tiny["ms_ssim"] is None and tiny["ssim"] < 1.0
    for height in (12, 41, 64, 91, 96, 161):  # every size picks a number of scales the library accepts
        mid_ref, mid_test = fixed_pair(height, 120)
        assert 0 < ms_ssim(mid_ref, mid_test) < 1, height


def test_large_images_are_measured_in_tiles_with_bounded_memory() -> None:
    """Above METRIC_TILE per side the perceptual metrics run tile by tile: the value is the area-weighted
    mean of the tiles' values, and SSIM stays close to the whole-image value."""
    from pca_attack.certify.metrics import METRIC_TILE, ssim, tiled_mean

    g = torch.Generator().manual_seed(1)
    side = METRIC_TILE * 2 + 40  # 2 full tiles and an edge strip per side
    a = torch.rand(3, side, side - 24, generator=g)
    b = (a + 0.03 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    whole = ssim(a, b)
    tiled = tiled_mean(ssim, a, b)
    assert tiled is not None and abs(tiled - whole) < 0.01
    crops = [(a[:, :METRIC_TILE, :METRIC_TILE], b[:, :METRIC_TILE, :METRIC_TILE])]
    assert tiled_mean(ssim, *crops[0]) == ssim(*crops[0])  # one tile: the plain value
    assert tiled_mean(lambda r, t: None, a, b) is None
