"""Posterior statistics of images: how collapsed is the encoder's posterior, and what a round trip does.

Used by the certificate of every protected image and by the service's diagnostics endpoint.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .attack import pad_to_multiple
from .config import PRESETS
from .losses import mean_kl_per_element
from .models import Decoder, Encoder


@torch.no_grad()
def posterior(encoder: Encoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 posterior (mean, logvar), each (B, C, h, w), of (B, 3, H, W) images of any size."""
    mean, logvar = encoder(pad_to_multiple(x.to(encoder.device), encoder.downsample_factor))
    return mean.float(), logvar.float()


def preset_target(name: str, clean_logvar: torch.Tensor) -> float | torch.Tensor:
    """A preset's target variance; 'adaptive' uses the clean posterior's variance."""
    v = PRESETS[name].target_variance
    return clean_logvar.exp() if v is None else v


def channel_summary(mean: torch.Tensor, logvar: torch.Tensor) -> list[dict[str, float]]:
    """Per latent channel of one image ((C, h, w) tensors): mean/std of mu, mean sigma^2, mean logvar."""
    out = []
    for c in range(mean.shape[0]):
        mu, lv = mean[c], logvar[c]
        out.append({
            "channel": c,
            "mu_mean": float(mu.mean()),
            "mu_std": float(mu.std(unbiased=False)),
            "mu_abs_max": float(mu.abs().max()),
            "var_mean": float(lv.exp().mean()),
            "logvar_mean": float(lv.mean()),
        })
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """PSNR in dB of two (3, H, W) images in [0, 1]; None when identical."""
    mse = float(torch.mean((a.float() - b.float()) ** 2))
    return None if mse == 0 else 10.0 * math.log10(1.0 / mse)


@torch.no_grad()
def roundtrip(encoder: Encoder, decoder: Decoder, x: torch.Tensor) -> torch.Tensor:
    """decode(mode of encode(x)), cropped to x's size: (B, 3, H, W) in [0, 1]."""
    mean, _ = encoder(pad_to_multiple(x.to(encoder.device), encoder.downsample_factor))
    out = decoder(mean)
    return out[..., : x.shape[-2], : x.shape[-1]].float().cpu()


def image_stats(
    encoder: Encoder, x: torch.Tensor, decoder: Decoder | None = None, reference: torch.Tensor | None = None
) -> dict[str, Any]:
    """Statistics of one image (3, H, W): KL to N(0, I) and to each preset's target, per-channel summary,
    and, with a decoder, round-trip PSNR against ``reference`` (default: the image itself)."""
    mean, logvar = posterior(encoder, x[None])
    stats: dict[str, Any] = {
        "kl_prior": float(mean_kl_per_element(mean, logvar, 1.0)[0]),
        "kl_to_target": {
            name: float(mean_kl_per_element(mean, logvar, preset_target(name, logvar))[0])
            for name in PRESETS
            if PRESETS[name].target_variance is not None
        },
        "mu_rms": float(mean.pow(2).mean().sqrt()),
        "logvar_mean": float(logvar.mean()),
        "latent_shape": list(mean.shape[1:]),
        "channels": channel_summary(mean[0], logvar[0]),
    }
    if decoder is not None:
        recon = roundtrip(encoder, decoder, x[None])[0]
        stats["roundtrip_psnr_db"] = psnr(recon, (reference if reference is not None else x).cpu())
    return stats


def latent_drift(encoder: Encoder, clean: torch.Tensor, protected: torch.Tensor) -> float:
    """||mu(protected) - mu(clean)|| / ||mu(clean)|| for two (3, H, W) images."""
    mu_c, _ = posterior(encoder, clean[None])
    mu_p, _ = posterior(encoder, protected[None])
    return float((mu_p - mu_c).norm() / mu_c.norm().clamp(min=1e-12))


def pair_stats(
    encoder: Encoder, clean: torch.Tensor, protected: torch.Tensor, decoder: Decoder | None = None
) -> dict[str, Any]:
    """Diagnostics of a clean/protected pair: both images' statistics, drift and pixel distances."""
    diff = (protected.float() - clean.float()) * 255.0
    out: dict[str, Any] = {
        "clean": image_stats(encoder, clean, decoder),
        "protected": image_stats(encoder, protected, decoder, reference=clean),
        "latent_drift": latent_drift(encoder, clean, protected),
        "linf_255": float(diff.abs().max()),
        "l2_255": float(diff.norm()),
    }
    return out


def to_numpy_image(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) float64 array (for skimage metrics)."""
    return x.detach().float().permute(1, 2, 0).cpu().numpy().astype(np.float64)
