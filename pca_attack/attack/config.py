"""Attack configuration: presets of the collapse loss and the PGD hyper-parameters, with defaults.

Budgets are stated on the 0-255 scale (``eps=16`` means 16/255 in [0, 1] pixel space), as in the
reference implementation of the Posterior Collapse Attack (Guo et al., arXiv 2408.10901).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from pca_attack.errors import ConfigError

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class LossPreset:
    """One named setting of the unified collapse loss KL(q(z|x) || N(0, v I))."""

    name: str
    target_variance: float | None  # v; None means "adaptive": the clean image's own sigma^2 (detached)
    direction: Direction  # whether PGD minimises or maximises the loss
    summary: str  # what this setting does to the posterior, for docs, CLI help and /v1/models


PRESETS: dict[str, LossPreset] = {
    "pca-": LossPreset(
        "pca-",
        1e-8,
        "minimize",
        "Reference default. Minimise KL to N(0, 1e-8 I): drives the posterior mean to 0 and its variance "
        "to the tiny target, so the encoder's latent concentrates on the origin and every edit starts "
        "from a destroyed latent.",
    ),
    "pca+": LossPreset(
        "pca+",
        1.0,
        "maximize",
        "Maximise KL to N(0, I): pushes the posterior away from the prior (large |mean|, log-variance "
        "driven to diffusers' -30 clamp, where that part of the gradient dies).",
    ),
    "adaptive": LossPreset(
        "adaptive",
        None,
        "minimize",
        "Minimise KL to N(0, v I) with v the clean image's own per-element posterior variance "
        "(detached): collapses the mean to 0 while keeping the variance where it was.",
    ),
    "pca-var": LossPreset(
        "pca-var",
        1e4,
        "minimize",
        "Variance-raising: minimise KL to N(0, 1e4 I): inflates the posterior variance, so pipelines "
        "that *sample* the posterior (diffusers img2img default) start from noise.",
    ),
}

DEFAULT_PRESET = "pca-"


@dataclass(frozen=True)
class AttackConfig:
    """Hyper-parameters of the protective Linf PGD. Defaults follow the reference implementation
    (eps 16, step 2, 40 steps, no random start, seed 3407) except three measured improvements: the best
    iterate is returned instead of the last; the image moves along its normalised gradient (L2 steepest
    descent, ``update="l2"``, see ``pca_attack.attack.updates``) on a cosine step schedule instead of the
    same constant sign step for every pixel; and the perturbation's mean colour is removed
    (``colour_neutral``). ``REFERENCE_CONFIG`` restores the reference loop exactly."""

    eps: float = 16.0  # Linf budget on the 0-255 scale (16 -> 16/255)
    step: float = 2.0  # PGD step size on the 0-255 scale
    steps: int = 40  # number of PGD iterations
    preset: str = DEFAULT_PRESET  # name in PRESETS, or "custom" with target_variance + direction
    target_variance: float | None = None  # v for preset "custom" (ignored otherwise)
    direction: Direction | None = None  # direction for preset "custom" (ignored otherwise)
    update: Literal["l2", "rprop", "sign"] = "l2"  # normalised gradient; per-pixel sign steps; sign (reference)
    rprop_init: float = 2.0  # rprop: first per-pixel step = rprop_init * step
    rprop_etas: tuple[float, float] = (0.7, 1.2)  # rprop: step factor after a sign flip, after a held sign
    rprop_range: tuple[float, float] = (0.125, 4.0)  # rprop: per-pixel step bounds, in units of step
    step_schedule: Literal["constant", "cosine"] = "cosine"  # sign/l2 rules: step per iteration (reference: constant)
    step_peak: float = 3.0  # sign/l2 rules, cosine schedule: first step = step_peak * step, decaying to step / 2
    random_start: bool = False  # start from uniform noise in the budget instead of 0 (reference: off)
    seed: int = 3407  # seed for random start and any stochastic transformation (reference: 3407)
    keep_best: bool = True  # return the best iterate per image (the reference returns the last)
    early_stop_patience: int = 0  # stop after this many steps without improvement (0 = never)
    early_stop_tol: float = 1e-4  # relative improvement that counts as progress for early stop
    eot: str | None = None  # expectation-over-transformations preset name (see pca_attack.attack.eot)
    eot_samples: int = 1  # random transformations averaged per step when eot is set
    aggregation: Literal["mean", "worst"] = "mean"  # ensembles: mean of normalised member losses, or the worst
    model_weights: tuple[float, ...] | None = None  # ensembles: one weight per model for "mean" (None = equal)
    editor_resolution: int | None = 1024  # also collapse a larger image downscaled to this long side (editors' ~1 MP)
    editor_spread: float = 0.0  # editor_resolution N: each step draws the copy's long side from 5 sizes N/(1+s)..N(1+s)
    budget: Literal["linf", "jnd", "psnr"] = "linf"  # eps everywhere; a JND map <= eps; the eps box ∩ an L2 ball
    target_psnr: float = 30.0  # budget "psnr": the perturbation's pixel PSNR is kept >= this (dB), an RMS bound
    colour_neutral: bool = True  # remove the perturbation's mean per channel, globally and per window
    neutral_window: int = 128  # colour_neutral: side of the windows whose mean shift is removed, in pixels
    smoothing: float = 0.0  # Gaussian sigma (px) of each step's gradient low-pass; measured no gain (attack/lowpass.py)
    shrink: float = 0.0  # after PGD, shrink the perturbation keeping this share of the collapse (0 = off)
    mode: str = "pgd"  # pgd | fast (the generator's one forward pass) | fast+N (N PGD steps from its output)
    generator: str | None = None  # fast modes: generator weights path (None: the one shipped for the model)

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 255:
            raise ConfigError(f"eps={self.eps} is outside (0, 255]; it is on the 0-255 scale, e.g. 16")
        if not 0 < self.step <= 255:
            raise ConfigError(f"step={self.step} is outside (0, 255]; it is on the 0-255 scale, e.g. 2")
        if not 0 <= self.steps <= 10_000:
            raise ConfigError(f"steps={self.steps} is outside [0, 10000]")
        if self.early_stop_patience < 0:
            raise ConfigError("early_stop_patience must be >= 0 (0 disables early stop)")
        if self.step_schedule not in ("constant", "cosine"):
            raise ConfigError(f"step_schedule={self.step_schedule!r}; use 'constant' or 'cosine'")
        if not 0 < self.step_peak <= 16:
            raise ConfigError("step_peak must be in (0, 16]")
        if self.update not in ("l2", "rprop", "sign"):
            raise ConfigError(f"update={self.update!r}; use 'l2' (default), 'rprop' or 'sign' (the reference rule)")
        shrink, grow = self.rprop_etas
        if not (0 < shrink <= 1 <= grow <= 10):
            raise ConfigError(f"rprop_etas={self.rprop_etas}; need 0 < shrink <= 1 <= grow <= 10, e.g. (0.7, 1.2)")
        low, high = self.rprop_range
        if not (0 < low <= self.rprop_init <= high):
            raise ConfigError(
                f"rprop_range={self.rprop_range} with rprop_init={self.rprop_init}; need 0 < low <= init <= high"
            )
        if self.budget not in ("linf", "jnd", "psnr"):
            raise ConfigError(
                f"budget={self.budget!r}; use 'linf' (eps everywhere), 'jnd' (perceptual map) or 'psnr' (an L2 ball "
                "of target_psnr dB inside the eps box)"
            )
        if not 20 <= self.target_psnr <= 60:
            raise ConfigError(f"target_psnr={self.target_psnr}; use a pixel PSNR in [20, 60] dB, e.g. 30")
        if not 4 <= self.neutral_window <= 4096:
            raise ConfigError(f"neutral_window={self.neutral_window}; use a window side in [4, 4096] pixels")
        if not 0 <= self.smoothing <= 16:
            raise ConfigError(f"smoothing={self.smoothing}; use 0 (off) or a Gaussian sigma in pixels up to 16, e.g. 4")
        if not (self.shrink == 0 or 0.5 <= self.shrink <= 1):
            raise ConfigError(f"shrink={self.shrink}; use 0 (off) or a share of the collapse in [0.5, 1], e.g. 0.95")
        if not re.fullmatch(r"pgd|fast|fast\+[1-9][0-9]{0,3}", self.mode):
            raise ConfigError(f"mode={self.mode!r}; use 'pgd' (default), 'fast' or 'fast+N' (N PGD steps, e.g. fast+5)")
        if self.eot_samples < 1:
            raise ConfigError("eot_samples must be >= 1")
        if self.aggregation not in ("mean", "worst"):
            raise ConfigError(f"aggregation={self.aggregation!r}; use 'mean' (default) or 'worst' (min-max)")
        if self.model_weights is not None and not all(0 < w < float("inf") for w in self.model_weights):
            raise ConfigError(f"model_weights={self.model_weights}; every weight must be a positive number")
        if self.editor_resolution is not None and not 64 <= self.editor_resolution <= 16384:
            raise ConfigError(f"editor_resolution={self.editor_resolution}; use a long side in [64, 16384], e.g. 1024")
        if not 0 <= self.editor_spread <= 1:
            raise ConfigError(f"editor_spread={self.editor_spread}; use 0 (size N only) or up to 1, e.g. 0.25")
        if self.preset == "custom":
            if self.target_variance is None or not self.target_variance > 0:
                raise ConfigError("preset 'custom' needs target_variance > 0 (e.g. 1e-8)")
            if self.direction not in ("minimize", "maximize"):
                raise ConfigError("preset 'custom' needs direction 'minimize' or 'maximize'")
        elif self.preset not in PRESETS:
            known = ", ".join([*PRESETS, "custom"])
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of: {known}")

    @property
    def loss_preset(self) -> LossPreset:
        """The resolved loss setting (a custom one is built from target_variance and direction)."""
        if self.preset == "custom":
            assert self.direction is not None
            return LossPreset("custom", self.target_variance, self.direction, "user-defined target")
        return PRESETS[self.preset]

    @property
    def refine_steps(self) -> int | None:
        """PGD steps run from the generator's output: 0 for 'fast', N for 'fast+N', None for 'pgd'."""
        if self.mode == "pgd":
            return None
        return 0 if self.mode == "fast" else int(self.mode.split("+")[1])

    def with_(self, **changes: Any) -> AttackConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view, as written into certificates and manifests."""
        return asdict(self)


# the reference loop: one constant sign step for every pixel, last iterate returned, no colour projection
REFERENCE_CONFIG = AttackConfig(keep_best=False, update="sign", step_schedule="constant", colour_neutral=False)


@dataclass(frozen=True)
class Intensity:
    """One step of the user's intensity knob: budget size and shape, and how much of the collapse the shrink
    pass must keep. Measured protection and visibility of each: ``benchmarks/visibility.py``, README."""

    eps: float  # L-inf bound on the 0-255 scale (the certificate's eps)
    budget: Literal["linf", "jnd"]  # per-pixel bound: eps everywhere, or the JND map <= eps
    shrink: float  # share of the collapse the shrink pass keeps (0 = no shrink)
    colour_neutral: bool  # remove the perturbation's mean colour
    summary: str


# retuned for the l2 update (benchmarks/visibility.py on TAEF2, README "Intensity and visibility"): on the
# protection/visibility curve neither the JND shape nor the shrink pass bought pixel PSNR at the default's
# protection, so "standard" is the default itself, "subtle" trades protection for visibility with the JND shape
# (dark and textured areas may use eps 12, flat bright ones about a quarter of it) and "strong" the other way
INTENSITIES: dict[str, Intensity] = {
    "subtle": Intensity(12.0, "jnd", 0.0, True, "least visible: JND budget <= 12/255, less protection"),
    "standard": Intensity(16.0, "linf", 0.0, True, "the default: eps 16 box, colour-neutral"),
    "strong": Intensity(24.0, "linf", 0.0, True, "eps 24 box, colour-neutral: most protection, most visible"),
}


def intensity_config(name: str, **overrides: Any) -> AttackConfig:
    """The configuration of intensity ``name`` (see ``INTENSITIES``), with ``overrides`` on top."""
    if name not in INTENSITIES:
        raise ConfigError(f"unknown intensity {name!r}; choose one of: {', '.join(INTENSITIES)}")
    level = INTENSITIES[name]
    fields = {"eps": level.eps, "budget": level.budget, "shrink": level.shrink, "colour_neutral": level.colour_neutral}
    return AttackConfig(**(fields | overrides))
