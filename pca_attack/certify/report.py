"""The certificate: what was done to one image, measured on the bytes actually written.

Pixel distances compare the decoded input with the decoded *output file*, so rounding and any lossy
encoding are included. Collapse statistics compare the encoder posterior of both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from skimage.metrics import structural_similarity

from pca_attack._version import __version__
from pca_attack.attack.config import AttackConfig
from pca_attack.attack.eot import downscaled
from pca_attack.attack.losses import mean_energy, mean_kl_per_element, pca_loss, posterior_variance
from pca_attack.certify.diagnostics import decode_mean, drift, posterior, preset_target, psnr
from pca_attack.certify.members import EnsembleAggregate, ModelReport
from pca_attack.certify.metrics import tiled_mean
from pca_attack.io.images import DecodedImage
from pca_attack.models.devices import dtype_name
from pca_attack.models.encoder import Decoder, Encoder


class Certificate(BaseModel):
    """Per-image report. All pixel metrics are measured on the decoded output file."""

    model: str = Field(description="VAE whose encoder was attacked")
    preset: str = Field(description="collapse-loss preset")
    target_variance: float | None = Field(description="v of the preset; null for 'adaptive'")
    direction: str = Field(description="minimize or maximize")
    eps: float = Field(description="Linf budget on the 0-255 scale")
    step: float = Field(description="PGD step on the 0-255 scale")
    steps: int = Field(description="PGD steps configured")
    steps_run: int = Field(description="PGD steps actually run (fewer after an early stop)")
    best_step: int = Field(description="iterate returned (== steps_run means the last one)")
    seed: int
    eot: str | None = Field(default=None, description="expectation-over-transformations preset, if any")
    width: int
    height: int
    bit_depth: int = Field(description="8 or 16: the integer grid of input and output")
    format: str = Field(description="output file format")
    quality: int | None = Field(default=None, description="lossy quality, null for PNG")
    linf_255: float = Field(description="max |output - input| over pixels and channels, 0-255 scale")
    budget_ok: bool = Field(description="linf_255 <= eps (and psnr_db >= target_psnr), checked on the written file")
    l2: float = Field(description="Euclidean norm of (output - input) in [0, 1] pixel units")
    psnr_db: float | None = Field(description="PSNR of output vs input; null if identical")
    ssim: float = Field(description="SSIM of output vs input (1 = identical)")
    ms_ssim: float | None = Field(default=None, description="MS-SSIM of output vs input; null for tiny images")
    vif: float | None = Field(
        default=None, description="VIF-P of output vs input (perceptual index, 1 = identical); null under 41 px"
    )
    budget: str = Field(
        default="linf", description="linf (eps everywhere), jnd (a per-pixel map <= eps) or psnr (eps box ∩ L2 ball)"
    )
    target_psnr: float | None = Field(
        default=None, description="budget psnr: the PSNR floor (dB); budget_ok also needs psnr_db >= it"
    )
    budget_map_255: list[float] = Field(
        default_factory=list, description="min, mean, max of the per-pixel bound (0-255 scale; all eps for linf)"
    )
    colour_neutral: bool = Field(default=False, description="the perturbation's mean colour was projected out")
    shrink: float = Field(default=0.0, description="share of the collapse the shrink pass kept (0 = off)")
    smoothing: float = Field(
        default=0.0, description="Gaussian sigma (pixels) each step's gradient was low-passed with (0 = off, default)"
    )
    editor_resolution: int | None = Field(
        default=None, description="long side of the editor's downscaled copy the attack also worked on (the image is "
        "larger); null: off, the image is not larger, or fast mode without refinement steps",
    )
    editor_spread: float = Field(
        default=0.0, description="with editor_resolution N: each step drew the copy's long side from five sizes "
        "N/(1+s)..N(1+s) (a library setting, AttackConfig(editor_spread=s)); 0: N only, the default",
    )
    mean_shift_255: list[float] = Field(
        default_factory=list, description="mean of (output - input) per channel R, G, B, 0-255 scale (colour cast)"
    )
    mean_shift_window_max_255: list[float] = Field(
        default_factory=list, description="per channel, the largest |mean shift| over 64x64 tiles, 0-255 scale"
    )
    alpha_preserved: bool | None = Field(description="alpha channel byte-identical; null if no alpha")
    loss_clean: float = Field(description="collapse loss of the input (sum over latent elements)")
    loss_protected: float = Field(description="collapse loss of the written output")
    kl_clean: float = Field(description="KL(q(z|input) || N(0,I)), mean per latent element")
    kl_protected: float = Field(description="KL(q(z|output) || N(0,I)), mean per latent element")
    target_kl_clean: float = Field(description="KL of the input posterior to the preset's target")
    target_kl_protected: float = Field(description="KL of the output posterior to the preset's target")
    latent_drift: float = Field(description="||mu(output) - mu(input)|| / ||mu(input)||")
    posterior: str = Field(
        default="gaussian",
        description="gaussian (the encoder returns mean and log-variance) or deterministic (it returns the latent "
        "itself: the loss and every KL field are then the mean term mu^2 / (2 v) of the KL only)",
    )
    mean_energy_clean: float = Field(default=0.0, description="mean of mu^2 over the input's latent elements")
    mean_energy_protected: float = Field(default=0.0, description="mean of mu^2 over the output's latent elements")
    roundtrip_psnr_clean_db: float | None = Field(
        default=None, description="PSNR of decode(encode(input)) vs input; null without a decoder"
    )
    roundtrip_psnr_protected_db: float | None = Field(
        default=None, description="PSNR of decode(encode(output)) vs input; null without a decoder"
    )
    roundtrip_psnr_self_db: float | None = Field(
        default=None, description="PSNR of decode(encode(output)) vs output: near roundtrip_psnr_clean_db, the "
        "autoencoder reproduces the protected image, change included, and the edit is no worse than it; null "
        "without a decoder",
    )
    models: dict[str, ModelReport] | None = Field(
        default=None, description="ensemble protections: each attacked model measured on the output (null: one model)"
    )
    aggregate: EnsembleAggregate | None = Field(
        default=None, description="ensemble protections: the aggregate objective and the spread over the models"
    )
    notes: list[str] = Field(default_factory=list, description="conversions applied to the input")
    elapsed_s: float = Field(description="wall time of decode + attack + encode + certify")
    mode: str = Field(default="pgd", description="pgd, fast (the generator's output) or fast+N (N PGD steps from it)")
    generator_id: str | None = Field(
        default=None, description="fast modes: first 12 hex digits of the generator weights' SHA-256; null for pgd"
    )
    tiles: int = Field(default=1, description="tiles per PGD step (1 = untiled; more when over the memory budget)")
    tile_size: int | None = Field(default=None, description="largest tile side in pixels, context included")
    device: str
    dtype: str
    version: str = Field(description="pca-protect version")


def _ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    side = min(a.shape[0], a.shape[1])
    win = min(7, side if side % 2 == 1 else side - 1)
    return float(structural_similarity(a, b, channel_axis=2, data_range=data_range, win_size=win))


def _visibility_fields(config: AttackConfig, x_clean: torch.Tensor, x_out: torch.Tensor) -> dict[str, Any]:
    """Perceptual metrics, colour shift and the budget map of one (3, H, W) pair (issue 13)."""
    from pca_attack.attack.budget import jnd_map
    from pca_attack.certify.metrics import colour_shift, ms_ssim, vif

    bound = jnd_map(x_clean[None], config.eps) if config.budget == "jnd" else torch.full((1,), float(config.eps))
    shift = colour_shift(x_clean, x_out)
    return {
        "ms_ssim": tiled_mean(ms_ssim, x_clean, x_out), "vif": tiled_mean(vif, x_clean, x_out),
        "budget": config.budget, "target_psnr": config.target_psnr if config.budget == "psnr" else None,
        "budget_map_255": [round(float(v), 3) for v in (bound.min(), bound.mean(), bound.max())],
        "colour_neutral": config.colour_neutral, "shrink": config.shrink,
        "mean_shift_255": shift["global"], "mean_shift_window_max_255": shift["window_max"],
    }


BAND_ROWS = 256  # rows of the pixel distances summed at a time (float64 scratch: 24 B x width x rows)


def _pixel_fields(
    a: np.ndarray, b: np.ndarray, levels: float, eps: float, floor_db: float | None = None
) -> dict[str, Any]:
    """Distances of the written output b from the input a, (H, W, 3) on the input's grid of ``levels``;
    the budget holds when linf <= eps and (budget psnr) the PSNR >= ``floor_db``. Summed in float64 over
    bands of ``BAND_ROWS`` rows: no whole-image float64 copy (1.15 GB for a 12 MP photo before; issue 12)."""
    squares, largest = 0.0, 0.0
    for top in range(0, a.shape[0], BAND_ROWS):
        diff = b[top : top + BAND_ROWS].astype(np.float64) - a[top : top + BAND_ROWS]  # (rows, W, 3) grid steps
        squares, largest = squares + float(np.sum(diff * diff)), max(largest, float(np.abs(diff).max(initial=0)))
    mse = squares / levels**2 / max(1, a.size)
    linf = largest * 255.0 / levels
    psnr_out = None if mse == 0 else float(10 * np.log10(1.0 / mse))
    in_ball = floor_db is None or psnr_out is None or psnr_out >= floor_db - 1e-6
    return {
        "linf_255": linf, "budget_ok": linf <= eps + 1e-9 and in_ball, "l2": float(np.sqrt(squares) / levels),
        "psnr_db": psnr_out,
        "ssim": tiled_mean(lambda r, t: _ssim(r, t, levels), a, b, axes=(0, 1)),
    }


def _roundtrip_fields(
    decoder: Decoder, mu_c: torch.Tensor, mu_p: torch.Tensor, x_clean: torch.Tensor, x_out: torch.Tensor
) -> dict[str, float | None]:
    """PSNR of decode(mean) of the input and of the output against the input, and of the output's against the
    output itself; images (3, H, W)."""
    height, width = x_clean.shape[-2:]
    round_out = decode_mean(decoder, mu_p, height, width)[0]  # (3, H, W)
    return {
        "roundtrip_psnr_clean_db": psnr(decode_mean(decoder, mu_c, height, width)[0], x_clean),
        "roundtrip_psnr_protected_db": psnr(round_out, x_clean),
        "roundtrip_psnr_self_db": psnr(round_out, x_out),
    }


def _collapse_fields(
    mu_c: torch.Tensor, lv_c: torch.Tensor | None, mu_p: torch.Tensor, lv_p: torch.Tensor | None,
    target_variance: float | None,
) -> dict[str, Any]:
    """Loss, KLs, mean energies and drift of the clean (c) and protected (p) posteriors, (1, C, h, w) each."""
    target = target_variance if target_variance is not None else posterior_variance(lv_c)
    return {
        "loss_clean": float(pca_loss(mu_c, lv_c, target)[0]),
        "loss_protected": float(pca_loss(mu_p, lv_p, target)[0]),
        "kl_clean": float(mean_kl_per_element(mu_c, lv_c, 1.0)[0]),
        "kl_protected": float(mean_kl_per_element(mu_p, lv_p, 1.0)[0]),
        "target_kl_clean": float(mean_kl_per_element(mu_c, lv_c, target)[0]),
        "target_kl_protected": float(mean_kl_per_element(mu_p, lv_p, target)[0]),
        "latent_drift": drift(mu_c, mu_p),
        "posterior": "deterministic" if lv_c is None else "gaussian",
        "mean_energy_clean": float(mean_energy(mu_c)[0]),
        "mean_energy_protected": float(mean_energy(mu_p)[0]),
    }


Measured = tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]  # image (3, H, W), posterior (1, C, h, w)


def _protected_posterior(
    encoder: Encoder, x_out: torch.Tensor, measured: Measured | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The posterior of the written image (3, H, W): the attack's when it measured exactly these pixels (a
    lossless output: no second, possibly tiled, encoder pass), else encoded now."""
    if measured is not None and torch.equal(measured[0].detach().cpu(), x_out):
        mean, logvar = measured[1]
        return mean.float(), None if logvar is None else logvar.float()
    return posterior(encoder, x_out[None])


def certificate(
    *,
    encoder: Encoder,
    config: AttackConfig,
    clean: DecodedImage,
    written: DecodedImage,
    fmt: str,
    quality: int | None,
    steps_run: int,
    best_step: int,
    elapsed_s: float,
    decoder: Decoder | None = None,
    measured: Measured | None = None,
) -> Certificate:
    """Measure one protected image (``written`` = the output file decoded again); ``measured``: the attack's
    posterior of its returned image, reused when ``written`` is exactly that image (``_protected_posterior``)."""
    levels = float(clean.levels)
    a = clean.rgb  # (H, W, 3) integers on the grid (measured in float64 bands / tiles, never copied whole)
    b = written.rgb if written.levels == clean.levels else written.rgb.astype(np.float64) * (levels / written.levels)
    x_clean = clean.to_tensor()  # (3, H, W)
    x_out = written.to_tensor() if b is written.rgb else torch.from_numpy((b / levels).astype(np.float32)).permute(
        2, 0, 1)  # (3, H, W), as x_clean
    preset = config.loss_preset
    mu_c, lv_c = posterior(encoder, x_clean[None])
    mu_p, lv_p = _protected_posterior(encoder, x_out, measured)
    extra = _collapse_fields(mu_c, lv_c, mu_p, lv_p, preset.target_variance)
    extra |= _visibility_fields(config, x_clean, x_out)
    if decoder is not None:
        extra |= _roundtrip_fields(decoder, mu_c, mu_p, x_clean, x_out)
    alpha_ok = None if clean.alpha is None else bool(
        written.alpha is not None and np.array_equal(clean.alpha, written.alpha)
    )
    return Certificate(
        model=encoder.name,
        preset=preset.name,
        target_variance=preset.target_variance,
        direction=preset.direction,
        eps=config.eps,
        step=config.step,
        steps=config.steps,
        steps_run=steps_run,
        best_step=best_step,
        seed=config.seed,
        eot=config.eot,
        smoothing=config.smoothing,
        **editor_fields(config, clean.width, clean.height),
        mode=config.mode,
        width=clean.width, height=clean.height,
        bit_depth=16 if clean.levels > 255 else 8,
        format=fmt,
        quality=quality,
        **_pixel_fields(a, b, levels, config.eps, extra["target_psnr"]),
        alpha_preserved=alpha_ok,
        notes=list(clean.notes),
        elapsed_s=elapsed_s,
        device=str(encoder.device),
        dtype=dtype_name(encoder.dtype),
        version=__version__,
        **extra,
    )


def editor_fields(config: AttackConfig, width: int, height: int) -> dict[str, Any]:
    """The editor resolution the attack also worked at (set, the image larger, and PGD steps run) and the
    spread of the sizes it drew around it (0 when there was no copy)."""
    side = config.editor_resolution
    copy = downscaled(height, width, side) and config.mode != "fast"
    return {"editor_resolution": side if copy else None, "editor_spread": config.editor_spread if copy else 0.0}


__all__ = ["Certificate", "certificate", "preset_target"]
