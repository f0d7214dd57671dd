"""Red team: what a protected image meets after publishing, and how much collapse survives it.

The transformations here are the real, non-differentiable ones (PIL codecs and filters, skimage's
bilateral filter, a numpy guided filter, an IMPRESS-style VAE purification); ``pca_attack.attack.eot`` holds
their differentiable stand-ins used *during* the attack. Each transformation maps (B, 3, H, W) in
[0, 1] to the same shape on the uint8 grid and is deterministic for a seed.

Collapse measure and retention
------------------------------
A transformation T is applied to the clean image *and* to the protected one (same seed), because an
editor downstream of the channel would otherwise have started from T(clean). With mu(.) the posterior
mean of the encoder, the collapse measure is the **latent drift**

    drift_T = || mu(T(protected)) - mu(T(clean)) || / || mu(T(clean)) ||

and the **retention** of T is ``drift_T / drift_identity`` (ratio of the drifts averaged over images):
1 means the channel kept all the collapse the protection caused, 0 means it erased it. With a decoder
two more ratios are reported: ``retention_roundtrip`` on the round-trip damage in dB
(PSNR(D(E(T(clean))), T(clean)) - PSNR(D(E(T(protected))), T(clean))) and ``retention_loss`` on the gap
of the collapse loss (mean KL to the preset's target per latent element, clean minus protected, sign
flipped for maximise presets). ``retention_roundtrip`` is left empty when the damage before the channel
is under 0.1 dB (a ratio of two noise-level numbers means nothing). ``roundtrip_damage_vs_original_db`` and
``retention_vs_original`` are the view of someone who applies T *to strip* the protection: their result against an
edit of the original, PSNR(D(E(c)), c) - PSNR(D(E(T(p))), c) (TAEF2, 2 photos: noise std 8 keeps 1.01 of the damage
this way and 0.56 against T(c); a sigma-1 blur 0.46 this way and 0.75 against T(c)).

Both damages count the change itself wherever the autoencoder reproduces it: a smooth change of 16/255 that
D(E(.)) copies faithfully costs round-trip PSNR against the clean image without collapsing anything (the edit
looks like the protected image, no worse). ``roundtrip_excess_db`` counts only what the round trip loses beyond
reproducing *either* image, PSNR(D(E(T(c))), T(c)) - max(PSNR(D(E(T(p))), T(c)), PSNR(D(E(T(p))), T(p))), and
``retention_excess`` is its ratio to the unchanged image's (no extra decoder pass: one more PSNR).

Purification (``protected_only`` transformations) is the exception: an attacker runs it on the protected
image only, so T(clean) is the clean image itself. Applied to both, it measured the wrong thing: it makes the
purified *clean* image easy to reconstruct (its own round-trip error is what it minimises), so the protected
one looked damaged against it by little more than the perturbation's own pixel distance (TAEF2: 98% of the
damage "kept" over 8 photos; against the clean image 20 Adam steps remove 46% of it on two 192x256 crops,
200 steps with a 100x looser fidelity term 81%: ``benchmarks/purify_sweep.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from pca_attack.attack.config import PRESETS
from pca_attack.attack.eot import downscaled
from pca_attack.attack.losses import mean_kl_per_element, posterior_variance
from pca_attack.certify.diagnostics import posterior, psnr, roundtrip
from pca_attack.errors import ConfigError
from pca_attack.models.encoder import Decoder, Encoder
from pca_attack.redteam.channels import EDITOR_PREFIX, TRANSFORMS, apply_transform, get_transform, transform_names

MIN_DAMAGE_DB = 0.1  # below this round-trip damage before the channel, its retention is not reported

# -- the red team ------------------------------------------------------------------------------------


@dataclass
class RedteamRow:
    """Collapse metrics after one transformation, averaged over the images."""

    transform: str
    description: str
    latent_drift: float  # || mu(T(p)) - mu(T(c)) || / || mu(T(c)) ||
    retention: float  # latent_drift / latent_drift of "none"
    kl_clean: float  # KL(q(z|T(c)) || N(0, I)), mean per latent element
    kl_protected: float
    target_kl_clean: float  # KL to the preset's target, mean per latent element
    target_kl_protected: float
    retention_loss: float | None  # target-KL gap / gap of "none"
    pixel_psnr_db: float | None  # PSNR of T(p) vs T(c): how visible the perturbation still is
    roundtrip_psnr_clean_db: float | None = None  # PSNR(D(E(T(c))), T(c))
    roundtrip_psnr_protected_db: float | None = None  # PSNR(D(E(T(p))), T(c))
    roundtrip_damage_db: float | None = None  # clean minus protected
    retention_roundtrip: float | None = None  # damage / damage of "none"
    # the attacker's view: PSNR(D(E(c)), c) - PSNR(D(E(T(p))), c), against the original as published
    roundtrip_damage_vs_original_db: float | None = None
    retention_vs_original: float | None = None  # that damage / damage of "none"
    # damage beyond the change itself: PSNR(D(E(T(c))), T(c)) - max(PSNR(D(E(T(p))), T(c)), PSNR(D(E(T(p))), T(p)))
    roundtrip_excess_db: float | None = None
    retention_excess: float | None = None  # that damage / damage of "none"


@dataclass
class RedteamReport:
    """The red-team table for a set of clean/protected pairs."""

    model: str
    preset: str
    images: int
    seed: int
    rows: list[RedteamRow] = field(default_factory=list)

    def row(self, name: str) -> RedteamRow:
        return next(r for r in self.rows if r.transform == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "preset": self.preset, "images": self.images, "seed": self.seed,
            "collapse_measure": "latent drift ||mu(T(p)) - mu(T(c))|| / ||mu(T(c))||",
            "retention": "drift after T / drift with no transformation (1 = all kept, 0 = erased)",
            "rows": [asdict(r) for r in self.rows],
        }

    def to_markdown(self) -> str:
        def f(v: float | None, nd: int = 3) -> str:
            return "-" if v is None else f"{v:.{nd}f}"

        head = ("| transformation | latent drift | retention | KL-gap retention | round-trip damage dB "
                "| round-trip retention | damage vs original dB | retention vs original | excess damage dB "
                "| excess retention | PSNR T(p) vs T(c) |")
        lines = [head, "|" + "---|" * 11]
        for r in self.rows:
            lines.append(
                f"| {r.transform} | {f(r.latent_drift)} | {f(r.retention, 2)} | {f(r.retention_loss, 2)} "
                f"| {f(r.roundtrip_damage_db, 2)} | {f(r.retention_roundtrip, 2)} "
                f"| {f(r.roundtrip_damage_vs_original_db, 2)} | {f(r.retention_vs_original, 2)} "
                f"| {f(r.roundtrip_excess_db, 2)} | {f(r.retention_excess, 2)} | {f(r.pixel_psnr_db, 1)} |"
            )
        return "\n".join(lines) + "\n"


def _as_list(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x] if x.ndim == 3 else list(x)
    return list(x)


def larger_than(images: Sequence[torch.Tensor], long_side: int | None) -> bool:
    """True when some image (3, H, W) is larger than ``long_side`` on its long side: an editor working at that
    size downscales it (the ``--editor-resolution`` attack and the ``editor-N`` row only matter then)."""
    return any(downscaled(image.shape[-2], image.shape[-1], long_side) for image in images)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or abs(b) < 1e-12:
        return None
    return a / b


def _measure(encoder: Encoder, decoder: Decoder | None, tc: torch.Tensor, tp: torch.Tensor,
             target: float | None, sign: float, with_roundtrip: bool,
             original: tuple[torch.Tensor, float] | None = None) -> dict[str, float | None]:
    """Metrics of one transformed pair tc, tp: (1, 3, H, W); ``original``: the clean image c (1, 3, H, W) and
    PSNR(D(E(c)), c), for the damage against the original (skipped where T changed the size)."""
    mu_c, lv_c = posterior(encoder, tc)
    mu_p, lv_p = posterior(encoder, tp)
    v: float | torch.Tensor = posterior_variance(lv_c) if target is None else target
    out: dict[str, float | None] = {
        "latent_drift": float((mu_p - mu_c).norm() / mu_c.norm().clamp(min=1e-12)),
        "kl_clean": float(mean_kl_per_element(mu_c, lv_c, 1.0)[0]),
        "kl_protected": float(mean_kl_per_element(mu_p, lv_p, 1.0)[0]),
        "target_kl_clean": float(mean_kl_per_element(mu_c, lv_c, v)[0]),
        "target_kl_protected": float(mean_kl_per_element(mu_p, lv_p, v)[0]),
        "pixel_psnr_db": psnr(tp[0].cpu(), tc[0].cpu()),
    }
    out["gap"] = sign * (float(out["target_kl_clean"] or 0) - float(out["target_kl_protected"] or 0))
    if decoder is not None and with_roundtrip:
        if original is not None and original[0].shape == tc.shape and torch.equal(original[0], tc):
            rc: float | None = original[1]  # none and purify rows: the clean image's round trip, measured once
        else:
            rc = psnr(roundtrip(encoder, decoder, tc)[0], tc[0].cpu())
        round_p = roundtrip(encoder, decoder, tp)[0]  # (3, H, W)
        rp = psnr(round_p, tc[0].cpu())
        out["roundtrip_psnr_clean_db"], out["roundtrip_psnr_protected_db"] = rc, rp
        out["roundtrip_damage_db"] = None if rc is None or rp is None else rc - rp
        own = psnr(round_p, tp[0].cpu())  # the round trip against the image it encoded
        out["roundtrip_excess_db"] = None if rc is None or rp is None or own is None else rc - max(rp, own)
        if original is not None and original[0].shape == tp.shape:
            vs = psnr(round_p, original[0][0].cpu())
            out["roundtrip_damage_vs_original_db"] = None if vs is None else original[1] - vs
    return out


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def redteam(
    engine_or_encoder: Any,
    clean: torch.Tensor | Sequence[torch.Tensor],
    protected: torch.Tensor | Sequence[torch.Tensor],
    decoder: Decoder | None = None,
    transforms: Sequence[str] | None = None,
    seed: int = 0,
    preset: str = "pca-",
    with_roundtrip: bool = True,
    purify_steps: int = 20,
    editor_resolution: int | None = None,
) -> RedteamReport:
    """Apply each transformation to clean and protected images and measure what collapse survives.

    engine_or_encoder: an ``Engine`` (its decoder is used if ``decoder`` is None) or an ``Encoder``.
    clean, protected: (3, H, W), (B, 3, H, W) or lists of (3, H, W) in [0, 1], paired by index.
    transforms: names from ``TRANSFORMS`` (default: all; 'purify' is skipped without a decoder).
    with_roundtrip: also measure the round-trip damage (two decoder passes per transformation).
    editor_resolution: also report ``editor-N``, the retention after an editor's downscale to N px on the
        long side, when an image is larger than N (``pca_attack.redteam.editor`` compares plain and
        ``--editor-resolution`` attacks).
    """
    if isinstance(engine_or_encoder, Encoder):
        encoder = engine_or_encoder
    else:  # an Engine
        encoder = engine_or_encoder.encoder
        decoder = decoder if decoder is not None else engine_or_encoder.decoder
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    names = list(transforms) if transforms is not None else transform_names()
    if decoder is None:
        names = [n for n in names if not TRANSFORMS[n].needs_decoder] if transforms is None else names
    names = ["none"] + [n for n in names if n != "none"]
    cs, ps = _as_list(clean), _as_list(protected)
    if larger_than(cs, editor_resolution) and f"{EDITOR_PREFIX}{editor_resolution}" not in names:
        names.append(f"{EDITOR_PREFIX}{editor_resolution}")
    for n in names:
        get_transform(n)  # unknown names: a ConfigError listing the known ones
    if len(cs) != len(ps) or any(c.shape != p.shape for c, p in zip(cs, ps, strict=False)):
        raise ConfigError("clean and protected images must pair up with equal shapes")
    sign = 1.0 if PRESETS[preset].direction == "minimize" else -1.0
    target = PRESETS[preset].target_variance
    per: dict[str, list[dict[str, float | None]]] = {n: [] for n in names}
    for i, (c, p) in enumerate(zip(cs, ps, strict=True)):
        c4, p4 = c[None].float(), p[None].float()  # (1, 3, H, W)
        original = None
        if decoder is not None and with_roundtrip:
            clean_db = psnr(roundtrip(encoder, decoder, c4)[0], c4[0].cpu())
            original = None if clean_db is None else (c4, clean_db)
        for n in names:
            s = seed + i
            tc = c4 if get_transform(n).protected_only else apply_transform(n, c4, s, encoder, decoder, purify_steps)
            tp = apply_transform(n, p4, s, encoder, decoder, purify_steps)
            per[n].append(_measure(encoder, decoder, tc, tp, target, sign, with_roundtrip, original))
    report = RedteamReport(model=encoder.name, preset=preset, images=len(cs), seed=seed)
    report.rows = _rows(names, {n: [m for m in per[n]] for n in names}, sign)
    return report


def _rows(names: list[str], per: dict[str, list[dict[str, float | None]]], sign: float) -> list[RedteamRow]:
    """Average per-image measurements and form the retention ratios against the 'none' row."""
    rows = []
    base = {k: _mean([m.get(k) for m in per["none"]])
            for k in ("latent_drift", "gap", "roundtrip_damage_db", "roundtrip_damage_vs_original_db",
                      "roundtrip_excess_db")}
    for n in names:
        avg = {k: _mean([m.get(k) for m in per[n]]) for k in per[n][0]}
        rows.append(RedteamRow(
            transform=n,
            description=get_transform(n).description,
            latent_drift=float(avg["latent_drift"] or 0.0),
            retention=float(_ratio(avg["latent_drift"], base["latent_drift"]) or 0.0),
            kl_clean=float(avg["kl_clean"] or 0.0),
            kl_protected=float(avg["kl_protected"] or 0.0),
            target_kl_clean=float(avg["target_kl_clean"] or 0.0),
            target_kl_protected=float(avg["target_kl_protected"] or 0.0),
            retention_loss=_ratio(avg["gap"], base["gap"]),
            pixel_psnr_db=avg["pixel_psnr_db"],
            roundtrip_psnr_clean_db=avg.get("roundtrip_psnr_clean_db"),
            roundtrip_psnr_protected_db=avg.get("roundtrip_psnr_protected_db"),
            roundtrip_damage_db=avg.get("roundtrip_damage_db"),
            retention_roundtrip=_damage_ratio(avg.get("roundtrip_damage_db"), base["roundtrip_damage_db"]),
            roundtrip_damage_vs_original_db=avg.get("roundtrip_damage_vs_original_db"),
            retention_vs_original=_damage_ratio(avg.get("roundtrip_damage_vs_original_db"),
                                                base["roundtrip_damage_vs_original_db"]),
            roundtrip_excess_db=avg.get("roundtrip_excess_db"),
            retention_excess=_damage_ratio(avg.get("roundtrip_excess_db"), base["roundtrip_excess_db"]),
        ))
    return rows


def _damage_ratio(damage: float | None, before: float | None) -> float | None:
    """damage / before, or None when the damage before the channel is under ``MIN_DAMAGE_DB``."""
    return None if abs(before or 0.0) < MIN_DAMAGE_DB else _ratio(damage, before)


def merge_reports(reports: Sequence[RedteamReport]) -> RedteamReport:
    """Pool reports over disjoint image sets (e.g. from parallel workers) into one, image-weighted.

    Transformations missing from some reports are averaged over the reports that have them."""
    first = reports[0]
    sign = 1.0 if PRESETS[first.preset].direction == "minimize" else -1.0
    names = list(dict.fromkeys(r.transform for rep in reports for r in rep.rows))
    per: dict[str, list[dict[str, float | None]]] = {n: [] for n in names}
    for rep in reports:
        for r in rep.rows:
            m: dict[str, float | None] = {k: v for k, v in asdict(r).items() if isinstance(v, float) or v is None}
            m["gap"] = sign * (r.target_kl_clean - r.target_kl_protected)
            per[r.transform].extend([m] * rep.images)
    merged = RedteamReport(model=first.model, preset=first.preset, images=sum(r.images for r in reports),
                           seed=first.seed)
    merged.rows = _rows(names, per, sign)
    return merged
