"""Posterior statistics of images: how collapsed is the encoder's posterior, and what a round trip does.

Used by the certificate of every protected image and by the service's diagnostics endpoint.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from pca_attack.attack.config import PRESETS
from pca_attack.attack.losses import mean_energy, mean_kl_per_element, posterior_variance
from pca_attack.attack.memory import posterior_in_budget
from pca_attack.models.encoder import LOGVAR_MIN, Decoder, Encoder


@torch.no_grad()
def posterior(encoder: Encoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 posterior (mean, logvar), each (B, C, h, w), of (B, 3, H, W) images of any size.

    logvar is None for deterministic encoders (no variance)."""
    mean, logvar = posterior_in_budget(encoder, x)  # in tiles inside a memory_scope when x would not fit
    return mean.float(), None if logvar is None else logvar.float()


def preset_target(name: str, clean_logvar: torch.Tensor | None) -> float | torch.Tensor:
    """A preset's target variance; 'adaptive' uses the clean posterior's variance."""
    v = PRESETS[name].target_variance
    return posterior_variance(clean_logvar) if v is None else v


def channel_summary(mean: torch.Tensor, logvar: torch.Tensor | None) -> list[dict[str, float]]:
    """Per latent channel of one image ((C, h, w) tensors): mean/std of mu, mean sigma^2, mean logvar.

    A deterministic encoder (logvar None) is a point mass: variance 0, log-variance at the clamp floor."""
    out = []
    for c in range(mean.shape[0]):
        mu = mean[c]
        out.append({
            "channel": c,
            "mu_mean": float(mu.mean()),
            "mu_std": float(mu.std(unbiased=False)),
            "mu_abs_max": float(mu.abs().max()),
            "var_mean": 0.0 if logvar is None else float(logvar[c].exp().mean()),
            "logvar_mean": LOGVAR_MIN if logvar is None else float(logvar[c].mean()),
        })
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """PSNR in dB of two (3, H, W) images in [0, 1]; None when identical."""
    mse = float(torch.mean((a.float() - b.float()) ** 2))
    return None if mse == 0 else 10.0 * math.log10(1.0 / mse)


@torch.no_grad()
def decode_mean(decoder: Decoder, mean: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """decode(mean) cropped to (height, width): (B, 3, height, width) in [0, 1] on the CPU."""
    return decoder(mean)[..., :height, :width].float().cpu()


@torch.no_grad()
def roundtrip(encoder: Encoder, decoder: Decoder, x: torch.Tensor) -> torch.Tensor:
    """decode(mode of encode(x)), cropped to x's size: (B, 3, H, W) in [0, 1]."""
    mean, _ = posterior(encoder, x)
    return decode_mean(decoder, mean, x.shape[-2], x.shape[-1])


def posterior_summary(mean: torch.Tensor, logvar: torch.Tensor | None) -> dict[str, Any]:
    """KL to N(0, I) and to each fixed preset target, and per-channel summaries, of one posterior.

    mean, logvar: (1, C, h, w) fp32 (logvar None for a deterministic encoder: the KLs are their mean terms).
    """
    return {
        "posterior": "deterministic" if logvar is None else "gaussian",
        "mean_energy": float(mean_energy(mean)[0]),
        "kl_prior": float(mean_kl_per_element(mean, logvar, 1.0)[0]),
        "kl_to_target": {
            name: float(mean_kl_per_element(mean, logvar, preset.target_variance)[0])
            for name, preset in PRESETS.items()
            if preset.target_variance is not None
        },
        "mu_rms": float(mean.pow(2).mean().sqrt()),
        "logvar_mean": None if logvar is None else float(logvar.mean()),
        "latent_shape": list(mean.shape[1:]),
        "channels": channel_summary(mean[0], None if logvar is None else logvar[0]),
    }


def image_stats(
    encoder: Encoder, x: torch.Tensor, decoder: Decoder | None = None, reference: torch.Tensor | None = None
) -> dict[str, Any]:
    """Statistics of one image (3, H, W): KL to N(0, I) and to each preset's target, per-channel summary,
    and, with a decoder, round-trip PSNR against ``reference`` (default: the image itself)."""
    mean, logvar = posterior(encoder, x[None])
    stats = posterior_summary(mean, logvar)
    if decoder is not None:
        recon = decode_mean(decoder, mean, x.shape[-2], x.shape[-1])[0]
        stats["roundtrip_psnr_db"] = psnr(recon, (reference if reference is not None else x).cpu())
    return stats


def drift(mean_clean: torch.Tensor, mean_other: torch.Tensor) -> float:
    """||mu_other - mu_clean|| / ||mu_clean||."""
    return float((mean_other - mean_clean).norm() / mean_clean.norm().clamp(min=1e-12))


def latent_drift(encoder: Encoder, clean: torch.Tensor, protected: torch.Tensor) -> float:
    """||mu(protected) - mu(clean)|| / ||mu(clean)|| for two (3, H, W) images."""
    return drift(posterior(encoder, clean[None])[0], posterior(encoder, protected[None])[0])


def pair_stats(
    encoder: Encoder, clean: torch.Tensor, protected: torch.Tensor, decoder: Decoder | None = None
) -> dict[str, Any]:
    """Diagnostics of a clean/protected pair: both images' statistics, drift and pixel distances."""
    height, width = clean.shape[-2:]
    mu_c, lv_c = posterior(encoder, clean[None])
    mu_p, lv_p = posterior(encoder, protected[None])
    clean_stats, protected_stats = posterior_summary(mu_c, lv_c), posterior_summary(mu_p, lv_p)
    if lv_c is not None:  # the adaptive preset's target is the clean posterior's own variance: N(0, sigma_clean^2)
        clean_stats["kl_to_target"]["adaptive"] = float(mean_kl_per_element(mu_c, lv_c, lv_c.exp())[0])
        protected_stats["kl_to_target"]["adaptive"] = float(mean_kl_per_element(mu_p, lv_p, lv_c.exp())[0])
    if decoder is not None:
        clean_stats["roundtrip_psnr_db"] = psnr(decode_mean(decoder, mu_c, height, width)[0], clean.cpu())
        protected_stats["roundtrip_psnr_db"] = psnr(decode_mean(decoder, mu_p, height, width)[0], clean.cpu())
    diff = (protected.double() - clean.double()) * 255.0  # float32 pixels carry ~1e-5 of rounding on this scale
    return {
        "clean": clean_stats,
        "protected": protected_stats,
        "latent_drift": drift(mu_c, mu_p),
        "linf_255": round(float(diff.abs().max()), 4),
        "l2_255": round(float(diff.norm()), 4),
    }


def to_numpy_image(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) float64 array (for skimage metrics)."""
    return x.detach().float().permute(1, 2, 0).cpu().numpy().astype(np.float64)
