"""The engine on CUDA: load, fp16 / bf16 encoders with an fp32 loss, channels_last, the budget on the
returned bytes, and same-seed determinism. Skipped without CUDA (``benchmarks/gpu_check.sh`` runs them).

Model: the bundled demo KL-VAE (real weights, a few MB), so every test loads in seconds.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pca_attack import AttackConfig, Engine, Protector, clear_cache, decode_image, load_encoder

pytestmark = pytest.mark.cuda

STEPS = 10
# Same seed, same GPU, default cuDNN settings: outputs may differ where a float reduction's order differs
# between runs and flips a gradient's sign; this is the documented tolerance (docs/gpu.md).
DETERMINISM_MAX_BYTES_DIFFERENT = 0.005  # fraction of output bytes that may differ between two runs
DETERMINISM_LOSS_RTOL = 0.01  # relative difference of the final losses


def photo_batch(batch: int, height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    """(batch, 3, height, width) in [0, 1] on the uint8 grid: smooth colour waves plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    images = []
    for b in range(batch):
        base = np.stack([np.sin(3 * xx + c + b) * np.cos(2 * yy - c) for c in (0.0, 1.0, 2.0)])  # (3, H, W)
        noisy = 0.5 + 0.35 * base + 0.05 * rng.standard_normal((3, height, width))
        images.append(np.round(np.clip(noisy, 0, 1) * 255) / 255)
    return torch.tensor(np.stack(images), dtype=torch.float32)


def png(batch: torch.Tensor, index: int = 0) -> bytes:
    arr = (batch[index].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def test_encoder_loads_onto_cuda_frozen_and_channels_last(cuda: torch.device) -> None:
    encoder = load_encoder("demo", device="cuda", dtype="fp32")
    assert encoder.device.type == "cuda"
    assert all(p.device.type == "cuda" and not p.requires_grad for p in encoder.parameters())
    convs = [p for p in encoder.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    mean, logvar = encoder(photo_batch(2).to(cuda))
    assert mean.device.type == "cuda" and mean.shape[0] == 2
    assert torch.isfinite(mean).all() and torch.isfinite(logvar).all()


def test_channels_last_matches_nchw_up_to_rounding(cuda: torch.device) -> None:
    encoder = load_encoder("demo", device="cuda", dtype="fp32")
    x = photo_batch(2).to(cuda)  # (2, 3, 64, 96)
    with torch.no_grad():
        mean_cl, _ = encoder(x)
        encoder.to(memory_format=torch.contiguous_format)
        encoder.memory_format = torch.contiguous_format
        mean_nchw, _ = encoder(x)
    clear_cache()  # the module above was changed in place
    scale = mean_nchw.abs().max().clamp(min=1e-6)
    # TF32 convolutions (torch's default on CUDA) round to ~1e-3 relative
    assert float((mean_cl - mean_nchw).abs().max() / scale) < 5e-3


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_encoder_keeps_an_fp32_loss_and_collapses(cuda: torch.device, dtype: str) -> None:
    encoder = load_encoder("demo", device="cuda", dtype=dtype)
    assert encoder.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    out = Protector(encoder, AttackConfig(steps=STEPS)).protect(photo_batch(2))
    for name in ("loss_trace", "clean_loss", "final_loss"):
        tensor = getattr(out, name)
        assert tensor.dtype == torch.float32, name
        assert torch.isfinite(tensor).all(), name
    assert (out.final_loss < out.clean_loss).all()  # pca- minimises: the loss went down for every image
    assert float((out.images - photo_batch(2).to(out.images.device)).abs().max()) <= 16 / 255 + 1e-6


def test_half_precision_final_loss_is_close_to_fp32s(cuda: torch.device) -> None:
    x = photo_batch(2)
    cfg = AttackConfig(steps=STEPS)
    judge = Protector(load_encoder("demo", device="cuda", dtype="fp32"), cfg)
    finals = {}
    for dtype in ("fp32", "fp16", "bf16"):
        images = Protector(load_encoder("demo", device="cuda", dtype=dtype), cfg).protect(x).images
        with torch.no_grad():
            finals[dtype] = float(judge.loss(images, judge.target_variance(x.to(cuda))).mean())
    clean = float(judge.loss(x.to(cuda), judge.target_variance(x.to(cuda))).mean())
    for dtype in ("fp16", "bf16"):
        # each half-precision attack reaches at least 90% of fp32's reduction, judged by the fp32 encoder
        assert clean - finals[dtype] >= 0.9 * (clean - finals["fp32"]), (dtype, clean, finals)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_budget_holds_on_the_returned_bytes(cuda: torch.device, dtype: str) -> None:
    engine = Engine.from_spec("demo", device="cuda", dtype=dtype, with_decoder=False, offline=True)
    source = png(photo_batch(1, 72, 100))  # not a multiple of 8: padded and cropped back
    out = engine.protect_bytes(source, AttackConfig(steps=STEPS, eps=8))
    clean = decode_image(source).rgb.astype(np.int32)
    written = decode_image(out.data).rgb.astype(np.int32)
    assert written.shape == clean.shape
    assert int(np.abs(written - clean).max()) <= 8
    assert out.certificate.budget_ok


def _run(dtype: str) -> tuple[np.ndarray, float]:
    encoder = load_encoder("demo", device="cuda", dtype=dtype)
    out = Protector(encoder, AttackConfig(steps=STEPS, random_start=True, seed=11)).protect(photo_batch(2))
    return (out.images.cpu().numpy() * 255).round().astype(np.uint8), float(out.final_loss.mean())


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_same_seed_repeats_within_the_documented_tolerance(
    cuda: torch.device, dtype: str, record_property: pytest.RecordProperty
) -> None:
    (first, loss_a), (second, loss_b) = _run(dtype), _run(dtype)
    differing = float((first != second).mean())
    record_property("fraction_of_bytes_different", differing)
    record_property("bit_identical", bool(differing == 0.0))
    assert differing <= DETERMINISM_MAX_BYTES_DIFFERENT
    assert abs(loss_a - loss_b) <= DETERMINISM_LOSS_RTOL * abs(loss_a)


def test_same_seed_is_bit_identical_with_deterministic_cudnn(cuda: torch.device) -> None:
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        (first, loss_a), (second, loss_b) = _run("fp32"), _run("fp32")
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
    assert np.array_equal(first, second) and loss_a == loss_b
