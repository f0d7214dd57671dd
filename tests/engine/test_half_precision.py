"""An fp16 encoder (the CUDA default) still gets a usable gradient: the backward pass is scaled so the
pca- loss's ``mean / 1e-8`` gradient does not overflow fp16. Runs on the CPU (fp16 convolutions work there)."""

from __future__ import annotations

import torch

from pca_attack import AttackConfig, Protector, load_encoder
from pca_attack.attack.losses import half_safe_scale


def test_scale_is_one_except_for_fp16() -> None:
    assert half_safe_scale(torch.float32, 1e-8) == 1.0
    assert half_safe_scale(torch.bfloat16, 1e-8) == 1.0
    assert half_safe_scale(torch.float16, 1e-8) == 1e-8
    assert half_safe_scale(torch.float16, 1e4) == 1.0
    assert half_safe_scale(torch.float16, torch.tensor([1e-3, 1e-5])) == torch.tensor(1e-5).item()


def test_fp16_encoder_collapses_like_fp32() -> None:
    x = torch.round(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255) / 255  # on the grid
    config = AttackConfig(steps=4)
    results = {}
    for dtype in ("fp32", "fp16"):
        encoder = load_encoder("demo", device="cpu", dtype=dtype)
        results[dtype] = Protector(encoder, config).protect(x)
    half = results["fp16"]
    assert torch.isfinite(half.loss_trace).all()
    assert half.final_loss.item() < half.clean_loss.item()  # the fp16 attack moved the loss
    assert int(half.best_step.item()) > 0  # and did not return the clean image
    assert (half.images - x).abs().max() <= 16 / 255 + 1e-6
    # fp16 reaches about the same collapse as fp32 (relative gap of the loss reduction)
    drop32 = results["fp32"].clean_loss.item() - results["fp32"].final_loss.item()
    drop16 = half.clean_loss.item() - half.final_loss.item()
    assert abs(drop16 - drop32) / drop32 < 0.1
