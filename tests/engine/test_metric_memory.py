"""The certificate's MS-SSIM and VIF-P: torchmetrics' values, with the memory of separable filters (issue 12)."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    visual_information_fidelity,
)

from pca_attack.attack.sizes import measure_peak
from pca_attack.certify.metrics import METRIC_TILE, MS_SSIM_BETAS, _luma_255, colour_shift, ms_ssim, vif


def _pair(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(height * 1000 + width)
    a = torch.rand(3, height, width, generator=g)
    return a, (a + 0.03 * torch.randn(a.shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("size", [(256, 256), (100, 161), (41, 300), (64, 90)])
def test_separable_metrics_equal_torchmetrics(size: tuple[int, int]) -> None:
    a, b = _pair(*size)
    side = min(size)
    scales = sum(1 for n in range(1, 6) if side >= 2**n and side // max(1, n - 1) ** 2 > 10)
    kept = MS_SSIM_BETAS[:scales]
    betas = kept if scales == 5 else tuple(x / sum(kept) for x in kept)
    expected = multiscale_structural_similarity_index_measure(b[None].double(), a[None].double(), data_range=1.0,
                                                              betas=betas)
    ours_ms, ours_vif = ms_ssim(a, b), vif(a, b)
    assert ours_ms is not None and ours_vif is not None
    assert math.isclose(ours_ms, float(expected), rel_tol=1e-12)
    assert math.isclose(ours_vif, float(visual_information_fidelity(_luma_255(b), _luma_255(a))), rel_tol=1e-12)


def test_a_metric_tile_takes_a_few_maps_and_no_unfolding_convolution(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchmetrics' float64 conv2d unfolds 121 (MS-SSIM) or 289 (VIF-P) copies of its input, outside any
    tensor the process can count (~290 MB and ~120 MB of resident memory per 256-px tile, measured)."""
    a, b = _pair(METRIC_TILE, METRIC_TILE)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a 2-D convolution unfolds the image")

    monkeypatch.setattr(torch.nn.functional, "conv2d", refuse)
    monkeypatch.setattr(torch, "conv2d", refuse)
    tile_f64 = 3 * METRIC_TILE**2 * 8  # one (3, 256, 256) float64 map: 1.5 MB
    assert measure_peak(lambda: ms_ssim(a, b), torch.device("cpu")) < 32 * tile_f64
    assert measure_peak(lambda: vif(a, b), torch.device("cpu")) < 8 * tile_f64


def test_a_flat_reference_tile_has_no_vif_and_is_left_out_of_the_mean() -> None:
    """A uniform region (a black sky in a 12 MP photo's metric tile) carries no information: torchmetrics divides
    0 by 0 (NaN); the certificate leaves that tile out instead of failing or averaging a NaN."""
    from pca_attack.certify.metrics import tiled_mean

    flat = torch.full((3, 64, 64), 0.2)
    assert vif(flat, (flat + 0.01).clamp(0, 1)) is None
    a, b = _pair(METRIC_TILE, 2 * METRIC_TILE)
    a[:, :, METRIC_TILE:] = 0.2  # the right tile is flat
    mixed = tiled_mean(vif, a, b)
    assert mixed is not None and math.isclose(mixed, vif(a[:, :, :METRIC_TILE], b[:, :, :METRIC_TILE]) or 0.0)


@pytest.mark.parametrize(("size", "window"), [((600, 200), 64), ((257, 1030), 64), ((300, 300), 100), ((40, 50), 64)])
def test_colour_shift_in_bands_equals_the_whole_image_formula(size: tuple[int, int], window: int) -> None:
    """Bands of whole windows give the whole-image float64 means exactly (partial last windows dropped as
    avg_pool2d drops them), with the scratch of a band: a 12 MP certificate peaked 0.7 GB higher before."""
    a, b = _pair(*size)
    b = (b + 0.004).clamp(0, 1)  # a small cast to find
    diff = (b.double() - a.double()) * 255.0  # (3, H, W)
    overall = diff.mean(dim=(1, 2))
    if min(size) >= window:
        worst = torch.nn.functional.avg_pool2d(diff[None], window)[0].abs().flatten(1).amax(dim=1)
    else:
        worst = overall.abs()
    shift = colour_shift(a, b, window)
    assert shift["global"] == [round(float(v), 4) for v in overall]
    assert shift["window_max"] == [round(float(v), 4) for v in worst]
    tall = torch.rand(3, 4096, 512, generator=torch.Generator().manual_seed(0))  # 16 bands
    peak = measure_peak(lambda: colour_shift(tall, tall), tall.device)
    scratch = peak - tall.numel() * 4  # the tracker counts the storage of the bands' views of ``tall`` once
    assert scratch < 0.4 * tall.numel() * 8  # under half of ONE whole float64 copy (it made four)
