"""The certificate of an ensemble protection: what the written file does to EACH attacked encoder.

``Certificate.models`` maps every member's name to a ``ModelReport`` (loss, KL and mean energy of the input
and of the written output, latent drift, round trips where the member has a decoder), and
``Certificate.aggregate`` summarises them (``EnsembleAggregate``): the aggregation and weights used, the
aggregate of the normalised losses (1.0 = as clean) and the mean and weakest mean-energy reduction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.losses import mean_energy, mean_kl_per_element, pca_loss, posterior_variance
from pca_attack.certify.diagnostics import decode_mean, drift, psnr
from pca_attack.io.images import DecodedImage
from pca_attack.models.encoder import Decoder, Encoder
from pca_attack.models.ensemble import Ensemble


class ModelReport(BaseModel):
    """One attacked encoder, measured on the input and on the written output file."""

    posterior: str = Field(description="gaussian or deterministic (no variance: the KLs are their mean terms)")
    loss_clean: float = Field(description="collapse loss of the input (sum over latent elements)")
    loss_protected: float = Field(description="collapse loss of the written output")
    kl_clean: float = Field(description="KL(q(z|input) || N(0,I)), mean per latent element")
    kl_protected: float = Field(description="KL(q(z|output) || N(0,I)), mean per latent element")
    mean_energy_clean: float = Field(description="mean of mu^2 over the input's latent elements")
    mean_energy_protected: float = Field(description="mean of mu^2 over the output's latent elements")
    energy_reduction: float = Field(description="1 - mean_energy_protected / mean_energy_clean")
    latent_drift: float = Field(description="||mu(output) - mu(input)|| / ||mu(input)||")
    roundtrip_psnr_clean_db: float | None = Field(default=None, description="null without a decoder")
    roundtrip_psnr_protected_db: float | None = Field(default=None, description="null without a decoder")


class EnsembleAggregate(BaseModel):
    """The ensemble objective on the written output, and the spread of its effect over the members."""

    aggregation: str = Field(description="mean (weighted mean of normalised losses) or worst (min-max)")
    weights: dict[str, float] = Field(description="per-model weight of the mean, normalised to sum 1")
    normalised_loss_protected: float = Field(
        description="the aggregate of loss_protected / loss_clean over the models (1 = as the input)"
    )
    mean_energy_reduction: float = Field(description="energy_reduction averaged over the models")
    weakest_energy_reduction: float = Field(description="the smallest energy_reduction of any model")


def _posterior(encoder: Encoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 (mean, logvar or None), each (1, C, h, w), in one pass (members are certified untiled)."""
    mean, logvar = encoder.posterior(x)
    return mean.float(), None if logvar is None else logvar.float()


@torch.no_grad()
def model_report(
    encoder: Encoder, decoder: Decoder | None, config: AttackConfig, x_clean: torch.Tensor, x_out: torch.Tensor
) -> ModelReport:
    """Measure one member on (1, 3, H, W) input and output."""
    mu_c, lv_c = _posterior(encoder, x_clean)
    mu_p, lv_p = _posterior(encoder, x_out)
    v = config.loss_preset.target_variance
    target = v if v is not None else posterior_variance(lv_c)
    energy_c, energy_p = float(mean_energy(mu_c)[0]), float(mean_energy(mu_p)[0])
    extra: dict[str, Any] = {}
    if decoder is not None:
        height, width = x_clean.shape[-2:]
        extra["roundtrip_psnr_clean_db"] = psnr(decode_mean(decoder, mu_c, height, width)[0], x_clean[0].cpu())
        extra["roundtrip_psnr_protected_db"] = psnr(decode_mean(decoder, mu_p, height, width)[0], x_clean[0].cpu())
    return ModelReport(
        posterior="deterministic" if lv_c is None else "gaussian",
        loss_clean=float(pca_loss(mu_c, lv_c, target)[0]),
        loss_protected=float(pca_loss(mu_p, lv_p, target)[0]),
        kl_clean=float(mean_kl_per_element(mu_c, lv_c, 1.0)[0]),
        kl_protected=float(mean_kl_per_element(mu_p, lv_p, 1.0)[0]),
        mean_energy_clean=energy_c,
        mean_energy_protected=energy_p,
        energy_reduction=1.0 - energy_p / energy_c if energy_c > 0 else 0.0,
        latent_drift=drift(mu_c, mu_p),
        **extra,
    )


def aggregate(reports: dict[str, ModelReport], config: AttackConfig) -> EnsembleAggregate:
    """The ensemble objective's value on the output and the spread of the members' energy reductions."""
    names = list(reports)
    raw = config.model_weights or (1.0,) * len(names)
    weights = {n: float(w) / float(sum(raw)) for n, w in zip(names, raw, strict=True)}
    normed = {n: r.loss_protected / max(r.loss_clean, 1e-12) for n, r in reports.items()}
    direction = config.loss_preset.direction
    if config.aggregation == "worst":
        value = max(normed.values()) if direction == "minimize" else min(normed.values())
    else:
        value = sum(weights[n] * normed[n] for n in names)
    reductions = [r.energy_reduction for r in reports.values()]
    return EnsembleAggregate(
        aggregation=config.aggregation, weights=weights, normalised_loss_protected=value,
        mean_energy_reduction=float(np.mean(reductions)), weakest_energy_reduction=min(reductions),
    )


def ensemble_fields(
    ensemble: Ensemble, decoders: dict[str, Decoder | None], config: AttackConfig,
    clean: DecodedImage, written: DecodedImage, *, roundtrip: bool = True,
) -> dict[str, Any]:
    """Certificate fields of an ensemble protection: ``model`` (the list), ``models`` and ``aggregate``."""
    levels = float(clean.levels)
    x_clean = clean.to_tensor()[None]  # (1, 3, H, W)
    out = written.rgb.astype(np.float64) * (levels / written.levels) / levels
    x_out = torch.from_numpy(out.astype(np.float32)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    reports = {
        m.name: model_report(m, decoders.get(m.name) if roundtrip else None, config, x_clean, x_out)
        for m in ensemble.members
    }
    return {"model": ensemble.name, "models": reports, "aggregate": aggregate(reports, config)}
