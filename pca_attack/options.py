"""The one declaration of the protect options: the attack settings a user may set and the output settings.

Every interface derives its parameters from ``ProtectOptions``: the service's form fields and OpenAPI
schema (``service.deps``), the Python client's ``ProtectSettings`` (``pca_client.protocol``), the CLI
options of ``protect`` / ``batch`` / ``redteam`` (``pca_cli.options``), the batch fingerprint and the
service's job settings (``ProtectOptions.settings``). A bound, a default or a description is changed here
and nowhere else. Attack defaults are read from ``AttackConfig``'s dataclass fields, so the engine and the
interfaces cannot disagree; ``to_attack_config()`` is the only place options become an ``AttackConfig``.

Torch-free: importing this module loads pydantic and the attack's configuration only.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo

from pca_attack.attack.config import INTENSITIES, PRESETS, AttackConfig, intensity_config
from pca_attack.attack.eot_names import EOT_DESCRIPTIONS
from pca_attack.io.formats import ALIASES, FORMAT_NAMES

if TYPE_CHECKING:
    PresetName = str
    FormatName = str
    IntensityName = str
    EotName = str
else:  # the choices are the engine's own tables
    PresetName = Literal[tuple(PRESETS)]
    EotName = Literal[tuple(EOT_DESCRIPTIONS)]
    IntensityName = Literal[tuple(INTENSITIES)]
    FormatName = Literal[FORMAT_NAMES]

ENGINE_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(AttackConfig)}
ATTACK_FIELDS = (
    "preset", "eps", "step", "steps", "seed", "random_start", "eot", "eot_samples", "aggregation", "budget",
    "editor_resolution", "mode", "target_psnr",
)
INTENSITY_FIELDS = ("eps", "budget")  # set by an intensity unless given explicitly


def format_alias(value: Any) -> Any:
    """'JPG', '.jpeg' and 'Jpeg' all mean jpeg (other values are left to validation)."""
    if isinstance(value, str):
        name = value.strip().lower().lstrip(".")
        return ALIASES.get(name, name)
    return value


class ProtectOptions(BaseModel):
    """How one image is protected and written. Budgets are on the 0-255 scale."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: PresetName = Field(
        default=ENGINE_DEFAULTS["preset"], description="collapse-loss preset (see GET /v1/models)"
    )
    eps: float = Field(default=ENGINE_DEFAULTS["eps"], gt=0, le=64, description="Linf budget on the 0-255 scale")
    step: float = Field(default=ENGINE_DEFAULTS["step"], gt=0, le=64, description="PGD step size on the 0-255 scale")
    steps: int = Field(
        default=ENGINE_DEFAULTS["steps"], ge=1, le=10_000, description="PGD iterations (capped by a server's max_steps)"
    )
    seed: int = Field(
        default=ENGINE_DEFAULTS["seed"], ge=0, le=2**32 - 1, description="seed of the random start and EoT sampling"
    )
    random_start: bool = Field(
        default=ENGINE_DEFAULTS["random_start"], description="start from uniform noise inside the budget"
    )
    eot: EotName | None = Field(
        default=ENGINE_DEFAULTS["eot"],
        description="expectation-over-transformations preset: average the loss over random, differentiable copies of "
        "a channel the image will meet (" + "; ".join(f"{k}: {v}" for k, v in EOT_DESCRIPTIONS.items()) + ")",
    )
    eot_samples: int = Field(
        default=ENGINE_DEFAULTS["eot_samples"], ge=1, le=64, description="EoT draws averaged per PGD step"
    )
    editor_resolution: int | None = Field(
        default=ENGINE_DEFAULTS["editor_resolution"], ge=0, le=16384,
        description="editors work at about 1 MP: an image larger than this long side is also protected as the "
        "editor sees it, downscaled to it (an image not larger is unaffected); 0 or null: off. Without it a "
        "downscale by 2 kept 0.13 of the collapse on TAEF2, with it 0.70 (README)",
    )
    aggregation: Literal["mean", "worst"] = Field(
        default=ENGINE_DEFAULTS["aggregation"],
        description="several models: mean of their normalised collapse losses, or the worst one (min-max)",
    )
    model_weights: str | None = Field(
        default=None, max_length=200,
        description="several models, aggregation mean: one weight per model, comma-separated (e.g. 2,1)",
    )
    intensity: IntensityName | None = Field(
        default=None,
        description="subtle (JND budget <= 12/255, less protection) | standard (the default, eps 16) | strong "
        "(eps 24): sets eps, budget, shrink and colour neutrality together (an eps or budget other than the "
        "default wins); measured protection and visibility in the README",
    )
    budget: Literal["linf", "jnd", "psnr"] = Field(
        default=ENGINE_DEFAULTS["budget"],
        description="linf: eps for every pixel; jnd: a per-pixel perceptual bound <= eps (texture, dark areas); "
        "psnr: the eps box and an L2 ball, the change's pixel PSNR >= target_psnr",
    )
    target_psnr: float = Field(
        default=ENGINE_DEFAULTS["target_psnr"], ge=20, le=60,
        description="budget psnr: the smallest pixel PSNR (dB) of the protected image against the original",
    )
    mode: str = Field(
        default=ENGINE_DEFAULTS["mode"], pattern=r"^(pgd|fast|fast\+[1-9][0-9]{0,3})$",
        description="pgd: the iterative attack; fast: one forward pass of the model's trained generator; "
        "fast+N: N PGD steps from the generator's output (e.g. fast+5)",
    )
    format: FormatName = Field(default="png", description="output format (png is lossless)")
    quality: int | None = Field(default=None, ge=1, le=100, description="jpeg/webp quality (default 95/90)")
    keep_exif: bool = Field(default=True, description="copy the input's EXIF to the output")

    @field_validator("format", mode="before")
    @classmethod
    def _format_alias(cls, value: Any) -> Any:
        return format_alias(value)

    @field_validator("eot", mode="before")
    @classmethod
    def _empty_eot(cls, value: Any) -> Any:
        """An empty form field means no EoT."""
        return value or None

    @field_validator("editor_resolution")
    @classmethod
    def _editor_off(cls, value: int | None) -> int | None:
        """0 turns the editor resolution off (a form or a command line cannot send null); else >= 64."""
        if value == 0:
            return None
        if value is not None and value < 64:
            raise ValueError("use 0 (off) or a long side in [64, 16384], e.g. 1024 (editors work at about 1 MP)")
        return value

    @field_validator("model_weights", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        """'2, 1' -> '2,1'; a list -> its comma form; empty -> None; each weight a positive number."""
        if value is None or value == "" or value == []:
            return None
        parts = value.split(",") if isinstance(value, str) else list(value)
        try:
            weights = [float(p) for p in parts]
        except (TypeError, ValueError):
            raise ValueError("model weights must be numbers, comma-separated (e.g. 2,1)") from None
        if not all(0 < w < float("inf") for w in weights):
            raise ValueError("every model weight must be a positive number")
        return ",".join(f"{w:g}" for w in weights)

    def to_attack_config(self) -> AttackConfig:
        """The engine's configuration (raises ``ConfigError`` where the engine disagrees)."""
        weights = None if self.model_weights is None else tuple(float(w) for w in self.model_weights.split(","))
        fields = {name: getattr(self, name) for name in ATTACK_FIELDS}
        if self.intensity is None:
            return AttackConfig(**fields, model_weights=weights)
        # eps / budget: the intensity's, unless set to something other than the default (interfaces pass defaults)
        given = {k: v for k, v in fields.items() if k not in INTENSITY_FIELDS or v != ENGINE_DEFAULTS[k]}
        return intensity_config(self.intensity, **given, model_weights=weights)

    def output(self) -> dict[str, Any]:
        """Keyword arguments of ``Engine.protect_bytes`` for the output file."""
        return {"fmt": self.format, "quality": self.quality, "keep_exif": self.keep_exif}

    def settings(self) -> dict[str, Any]:
        """Plain-JSON settings for manifests, job rows and fingerprints. ``eot_samples`` is left out when
        EoT is off (it has no effect then), so fingerprints of earlier runs stay valid."""
        values = self.model_dump(mode="json")
        if values["eot"] is None:
            values.pop("eot_samples")
        if values["editor_resolution"] is None:  # off: fingerprints from before issue 12 stay valid
            del values["editor_resolution"]
        if values["aggregation"] == "mean" and values["model_weights"] is None:  # one model, or the default
            del values["aggregation"], values["model_weights"]
        if values["mode"] == "pgd":  # the default before issue 18: fingerprints stay valid
            del values["mode"]
        if values["budget"] != "psnr" and values["target_psnr"] == ENGINE_DEFAULTS["target_psnr"]:  # no effect
            del values["target_psnr"]  # fingerprints from before the psnr budget stay valid
        if values["intensity"] is None and values["budget"] == "linf":  # the defaults before issue 13
            del values["intensity"], values["budget"]
        elif values["intensity"] is not None:  # what the intensity resolved to
            resolved = self.to_attack_config()
            values["eps"], values["budget"] = resolved.eps, resolved.budget
        return values


_BOUND_TYPES = {
    annotated_types.Gt: "gt",
    annotated_types.Ge: "ge",
    annotated_types.Lt: "lt",
    annotated_types.Le: "le",
    annotated_types.MinLen: "min_length",
    annotated_types.MaxLen: "max_length",
}


def field_bounds(info: FieldInfo) -> dict[str, Any]:
    """The bounds of a field as keyword arguments of ``Field`` / ``Form`` (``{"gt": 0, "le": 64}``)."""
    bounds: dict[str, Any] = {}
    for item in info.metadata:
        key = _BOUND_TYPES.get(type(item))
        if key is not None:
            bounds[key] = getattr(item, key)
    return bounds
