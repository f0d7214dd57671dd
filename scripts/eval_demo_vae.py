"""Measure the bundled demo KL-VAE: held-out round-trip PSNR/SSIM and posterior statistics.

Prints one JSON document.  For every held-out image (never seen in training, see
``scripts/train_demo_vae.py``) at its natural size: reflect-pad to a multiple of 8, encode,
decode the posterior mean (deterministic round trip), crop back, quantise to uint8 and compare
with the original using ``skimage.metrics`` (PSNR, SSIM with ``data_range=255``).  Posterior
statistics (mean log-variance, mean std, mean KL to N(0, I) per latent element, std of the
posterior means times ``scaling_factor``) are reported for the held-out and the training images.

Usage::

    python scripts/eval_demo_vae.py [--model pca_attack/assets/demo_vae]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo_vae import load_holdout_images, load_training_images, pad8  # noqa: E402


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float32 in [-1, 1]."""
    return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


@torch.no_grad()
def evaluate_image(model: torch.nn.Module, arr: np.ndarray) -> dict[str, float]:
    """Round-trip metrics and posterior statistics of one image at its natural size."""
    x, h, w = pad8(to_tensor(arr))
    post = model.encode(x).latent_dist
    y = model.decode(post.mean).sample[..., :h, :w]
    rec = ((y[0].permute(1, 2, 0).clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    n = post.mean.numel()
    kl = float(post.kl().sum()) / n
    return {
        "height": h,
        "width": w,
        "psnr_db": float(peak_signal_noise_ratio(arr, rec, data_range=255)),
        "ssim": float(structural_similarity(arr, rec, channel_axis=2, data_range=255)),
        "mean_logvar": float(post.logvar.mean()),
        "mean_std": float(post.std.mean()),
        "kl_per_element": kl,
        "latent_mean_std": float(post.mean.std()),
    }


def summarise(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over images."""
    keys = next(iter(rows.values())).keys()
    return {k: float(np.mean([r[k] for r in rows.values()])) for k in keys if k not in ("height", "width")}


def main(argv: list[str] | None = None) -> None:
    """Load the model from its folder (fp32, CPU) and print the JSON report."""
    from diffusers import AutoencoderKL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("pca_attack/assets/demo_vae"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-train", action="store_true", help="skip the statistics on the training images")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = AutoencoderKL.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    weights = args.model / "diffusion_pytorch_model.safetensors"
    held = {name: evaluate_image(model, arr) for name, arr in load_holdout_images()}
    report: dict[str, object] = {
        "model": str(args.model),
        "dtype_loaded": str(next(model.parameters()).dtype),
        "params": sum(q.numel() for q in model.parameters()),
        "file_bytes": os.path.getsize(weights),
        "scaling_factor": model.config.scaling_factor,
        "holdout": held,
        "holdout_mean": summarise(held),
    }
    if not args.no_train:
        train = {name: evaluate_image(model, arr) for name, arr, _ in load_training_images()}
        report["train_mean"] = summarise(train)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
