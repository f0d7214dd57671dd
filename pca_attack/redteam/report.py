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
is under 0.1 dB (a ratio of two noise-level numbers means nothing).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from pca_attack.attack.config import PRESETS
from pca_attack.attack.losses import mean_kl_per_element
from pca_attack.certify.diagnostics import posterior, psnr, roundtrip
from pca_attack.errors import ConfigError
from pca_attack.models.encoder import Decoder, Encoder

# -- real transformations ----------------------------------------------------------------------------


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8 by rounding."""
    return np.round(x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)


def _from_uint8(a: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _per_image(x: torch.Tensor, fn: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Apply an (H, W, 3) uint8 -> uint8 function to every image of (B, 3, H, W)."""
    out = [_from_uint8(fn(_to_uint8(img))) for img in x]
    return torch.stack(out).to(x.device)  # (B, 3, H, W)


def _codec(a: np.ndarray, fmt: str, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format=fmt, quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """PIL JPEG (default 4:2:0 subsampling) at ``quality``, decoded again. (B, 3, H, W) -> same."""
    return _per_image(x, lambda a: _codec(a, "JPEG", quality))


def webp(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Lossy WebP at ``quality``, decoded again."""
    return _per_image(x, lambda a: _codec(a, "WEBP", quality))


def rescale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bicubic (antialiased) downscale by ``factor`` and bicubic back to the original size."""

    def fn(a: np.ndarray) -> np.ndarray:
        h, w = a.shape[:2]
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        small = Image.fromarray(a).resize(size, Image.Resampling.BICUBIC)
        return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC))

    return _per_image(x, fn)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """PIL Gaussian blur (radius = standard deviation in pixels)."""
    return _per_image(x, lambda a: np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(sigma))))


def noise(x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """Additive Gaussian noise of ``std`` on the 0-255 scale (numpy generator seeded by ``seed``)."""
    rng = np.random.default_rng(seed)
    n = torch.from_numpy(rng.standard_normal(tuple(x.shape)).astype(np.float32)).to(x.device)
    return torch.round(((x + n * std / 255.0).clamp(0, 1)) * 255) / 255  # (B, 3, H, W)


def _box(a: np.ndarray, r: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    size = (2 * r + 1, 2 * r + 1) + (1,) * (a.ndim - 2)
    return np.asarray(uniform_filter(a, size=size, mode="reflect"))


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter, per channel with a gray guide. guide (H, W), src (H, W, 3) in [0, 1]."""
    g = guide[..., None]  # (H, W, 1)
    mean_g, mean_s = _box(g, r), _box(src, r)
    cov = _box(g * src, r) - mean_g * mean_s
    var = _box(g * g, r) - mean_g**2
    a = cov / (var + eps)
    b = mean_s - a * mean_g
    return np.asarray(_box(a, r) * g + _box(b, r))  # (H, W, 3)


def cleaner(x: torch.Tensor, iterations: int = 4) -> torch.Tensor:
    """AdverseCleaner-style: repeated bilateral filtering, then a guided filter steered by the input."""
    from skimage.restoration import denoise_bilateral

    def fn(a: np.ndarray) -> np.ndarray:
        src = a.astype(np.float64) / 255.0  # (H, W, 3)
        y = src
        for _ in range(iterations):
            y = denoise_bilateral(y, win_size=5, sigma_color=0.05, sigma_spatial=2.0, channel_axis=-1)
        gray = src @ np.array([0.299, 0.587, 0.114])  # (H, W)
        out = guided_filter(gray, y, r=4, eps=16.0 / 255.0**2)
        return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)

    return _per_image(x, fn)


def purify(
    x: torch.Tensor,
    encoder: Encoder,
    decoder: Decoder,
    steps: int = 20,
    lr: float = 0.01,
    budget: float = 16.0,
    weight: float = 10.0,
) -> torch.Tensor:
    """IMPRESS-style VAE purification (Cao et al. 2023), with an MSE stand-in for LPIPS.

    Adam on x' (start: x) minimising mean((D(E(x')) - x')^2) + weight * mean((x' - x)^2), with x'
    kept in an Linf ball of ``budget``/255 around x and in [0, 1]; ``steps`` bounds the cost.
    """
    x = x.detach().float().to(encoder.device)  # (B, 3, H, W)
    h, w = x.shape[-2:]
    eps = budget / 255.0
    xp = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([xp], lr=lr)
    for _ in range(steps):
        mean, _ = encoder.posterior(xp)  # (B, C, h', w')
        recon = decoder(mean)[..., :h, :w].float()  # (B, 3, H, W)
        loss = (recon - xp).pow(2).mean() + weight * (xp - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            xp.copy_(torch.minimum(torch.maximum(xp, x - eps), x + eps).clamp(0, 1))
    return (torch.round(xp.detach() * 255) / 255).cpu()


@dataclass(frozen=True)
class Context:
    """What a transformation may use besides the pixels."""

    seed: int
    encoder: Encoder | None = None
    decoder: Decoder | None = None
    purify_steps: int = 20  # Adam steps of the VAE purification


@dataclass(frozen=True)
class Transformation:
    """A named publishing channel or purification."""

    name: str
    description: str
    fn: Callable[[torch.Tensor, Context], torch.Tensor]  # (B, 3, H, W) -> (B, 3, H, W)
    needs_decoder: bool = False

    def __call__(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return self.fn(x, ctx)


def _purify(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.encoder is None or ctx.decoder is None:
        raise ConfigError("purification needs a model with a decoder")
    return purify(x, ctx.encoder, ctx.decoder, steps=ctx.purify_steps)


TRANSFORMS: dict[str, Transformation] = {
    t.name: t
    for t in (
        Transformation("none", "as protected (lossless PNG)", lambda x, c: x.clone()),
        Transformation("jpeg-95", "JPEG quality 95", lambda x, c: jpeg(x, 95)),
        Transformation("jpeg-75", "JPEG quality 75", lambda x, c: jpeg(x, 75)),
        Transformation("jpeg-50", "JPEG quality 50", lambda x, c: jpeg(x, 50)),
        Transformation("webp-80", "WebP quality 80", lambda x, c: webp(x, 80)),
        Transformation("resize-0.5", "bicubic downscale 0.5x and back", lambda x, c: rescale(x, 0.5)),
        Transformation("blur-1", "Gaussian blur, sigma 1 px", lambda x, c: blur(x, 1.0)),
        Transformation("noise-8", "Gaussian noise, std 8/255", lambda x, c: noise(x, 8.0, c.seed)),
        Transformation("cleaner", "4x bilateral + guided filter (AdverseCleaner-style)",
                       lambda x, c: cleaner(x)),
        Transformation("purify", "IMPRESS-style VAE purification (bounded Adam steps)", _purify,
                       needs_decoder=True),
    )
}


def transform_names() -> list[str]:
    """Names accepted by ``redteam(transforms=...)``."""
    return list(TRANSFORMS)


def apply_transform(name: str, x: torch.Tensor, seed: int = 0, encoder: Encoder | None = None,
                    decoder: Decoder | None = None, purify_steps: int = 20) -> torch.Tensor:
    """Apply the named transformation to (B, 3, H, W) in [0, 1]."""
    if name not in TRANSFORMS:
        raise ConfigError(f"unknown transformation {name!r}; choose from: {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name](x, Context(seed, encoder, decoder, purify_steps))


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
                "| round-trip retention | PSNR T(p) vs T(c) |")
        lines = [head, "|" + "---|" * 7]
        for r in self.rows:
            lines.append(
                f"| {r.transform} | {f(r.latent_drift)} | {f(r.retention, 2)} | {f(r.retention_loss, 2)} "
                f"| {f(r.roundtrip_damage_db, 2)} | {f(r.retention_roundtrip, 2)} | {f(r.pixel_psnr_db, 1)} |"
            )
        return "\n".join(lines) + "\n"


def _as_list(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x] if x.ndim == 3 else list(x)
    return list(x)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or abs(b) < 1e-12:
        return None
    return a / b


def _measure(encoder: Encoder, decoder: Decoder | None, tc: torch.Tensor, tp: torch.Tensor,
             target: float | None, sign: float, with_roundtrip: bool) -> dict[str, float | None]:
    """Metrics of one transformed pair tc, tp: (1, 3, H, W)."""
    mu_c, lv_c = posterior(encoder, tc)
    mu_p, lv_p = posterior(encoder, tp)
    v: float | torch.Tensor = lv_c.exp() if target is None else target
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
        rc = psnr(roundtrip(encoder, decoder, tc)[0], tc[0].cpu())
        rp = psnr(roundtrip(encoder, decoder, tp)[0], tc[0].cpu())
        out["roundtrip_psnr_clean_db"], out["roundtrip_psnr_protected_db"] = rc, rp
        out["roundtrip_damage_db"] = None if rc is None or rp is None else rc - rp
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
) -> RedteamReport:
    """Apply each transformation to clean and protected images and measure what collapse survives.

    engine_or_encoder: an ``Engine`` (its decoder is used if ``decoder`` is None) or an ``Encoder``.
    clean, protected: (3, H, W), (B, 3, H, W) or lists of (3, H, W) in [0, 1], paired by index.
    transforms: names from ``TRANSFORMS`` (default: all; 'purify' is skipped without a decoder).
    with_roundtrip: also measure the round-trip damage (two decoder passes per transformation).
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
    for n in names:
        if n not in TRANSFORMS:
            raise ConfigError(f"unknown transformation {n!r}; choose from: {', '.join(TRANSFORMS)}")
    cs, ps = _as_list(clean), _as_list(protected)
    if len(cs) != len(ps) or any(c.shape != p.shape for c, p in zip(cs, ps, strict=False)):
        raise ConfigError("clean and protected images must pair up with equal shapes")
    sign = 1.0 if PRESETS[preset].direction == "minimize" else -1.0
    target = PRESETS[preset].target_variance
    per: dict[str, list[dict[str, float | None]]] = {n: [] for n in names}
    for i, (c, p) in enumerate(zip(cs, ps, strict=True)):
        c4, p4 = c[None].float(), p[None].float()  # (1, 3, H, W)
        for n in names:
            s = seed + i
            tc = apply_transform(n, c4, s, encoder, decoder, purify_steps)
            tp = apply_transform(n, p4, s, encoder, decoder, purify_steps)
            per[n].append(_measure(encoder, decoder, tc, tp, target, sign, with_roundtrip))
    report = RedteamReport(model=encoder.name, preset=preset, images=len(cs), seed=seed)
    report.rows = _rows(names, {n: [m for m in per[n]] for n in names}, sign)
    return report


def _rows(names: list[str], per: dict[str, list[dict[str, float | None]]], sign: float) -> list[RedteamRow]:
    """Average per-image measurements and form the retention ratios against the 'none' row."""
    rows = []
    base = {k: _mean([m.get(k) for m in per["none"]]) for k in ("latent_drift", "gap", "roundtrip_damage_db")}
    for n in names:
        avg = {k: _mean([m.get(k) for m in per[n]]) for k in per[n][0]}
        rows.append(RedteamRow(
            transform=n,
            description=TRANSFORMS[n].description,
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
            retention_roundtrip=None if abs(base["roundtrip_damage_db"] or 0.0) < MIN_DAMAGE_DB
            else _ratio(avg.get("roundtrip_damage_db"), base["roundtrip_damage_db"]),
        ))
    return rows


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


__all__ = [
    "TRANSFORMS",
    "RedteamReport",
    "RedteamRow",
    "Transformation",
    "apply_transform",
    "blur",
    "cleaner",
    "guided_filter",
    "jpeg",
    "merge_reports",
    "noise",
    "purify",
    "redteam",
    "rescale",
    "transform_names",
    "webp",
]
