"""Several frozen encoders attacked at once: parse a model list, load every member, name the ensemble.

A model list is a comma list (``"taef2,demo"``) or several specs (``["taef2", "demo"]``, a repeated CLI
``--model``); each member is anything ``load_encoder`` accepts (registry name, folder, weights file, hub id),
mixed freely. One member is the plain single-model path (``load_model`` returns the ``Encoder`` itself);
several give an ``Ensemble`` that the attack (``pca_attack.attack.objective``) runs one member after another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pca_attack.errors import ConfigError, ModelLoadError, ModelNotFoundError
from pca_attack.models.devices import dtype_name
from pca_attack.models.encoder import Decoder, Encoder, load_decoder, load_encoder

ModelSpec = str | Sequence[str]


@dataclass(frozen=True)
class Ensemble:
    """Two or more frozen encoders on one device; the attack sums (or min-maxes) their collapse losses."""

    members: tuple[Encoder, ...]

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ConfigError("an ensemble needs at least two models; pass the Encoder itself for one")
        devices = {str(m.device) for m in self.members}
        if len(devices) > 1:
            raise ConfigError(f"every member of an ensemble must be on one device, got {sorted(devices)}")
        names = [m.name for m in self.members]
        if len(set(names)) < len(names):
            raise ConfigError(f"a model is listed twice in the ensemble {','.join(names)}")

    @property
    def name(self) -> str:
        """The members' names, comma-separated (the way a user lists them)."""
        return ",".join(m.name for m in self.members)

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    @property
    def posterior_type(self) -> str:
        """'gaussian' only when every member has a variance (presets acting on it need all of them)."""
        return "gaussian" if all(m.posterior_type == "gaussian" for m in self.members) else "deterministic"

    @property
    def downsample_factor(self) -> int:
        """The least common multiple of the members' spatial factors: the padding multiple of the attack."""
        return padding_multiple(self.members)


def padding_multiple(encoders: Sequence[Encoder]) -> int:
    """Least common multiple of the encoders' downsampling factors (8 and 16 -> 16; 8 and 12 -> 24)."""
    return math.lcm(*(int(e.downsample_factor) for e in encoders))


def members_of(model: Encoder | Ensemble | Sequence[Encoder]) -> list[Encoder]:
    """The encoders of a single model, an ensemble or a list of encoders."""
    if isinstance(model, Ensemble):
        return list(model.members)
    if isinstance(model, Encoder):
        return [model]
    members = list(model)
    if not members:
        raise ConfigError("no model given: pass at least one encoder")
    return members


def as_model(model: Encoder | Ensemble | Sequence[Encoder]) -> Encoder | Ensemble:
    """One encoder stays itself (a list of one too: the single-model path); two or more make an Ensemble."""
    members = members_of(model)
    return members[0] if len(members) == 1 else Ensemble(tuple(members))


def split_specs(model: ModelSpec) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]`` (blanks dropped); ConfigError when empty or repeated."""
    items = [model] if isinstance(model, str) else list(model)
    specs = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not specs:
        raise ConfigError("no model given: name one (e.g. demo) or a comma list (e.g. taef2,demo)")
    repeated = sorted({s for s in specs if specs.count(s) > 1})
    if repeated:
        raise ConfigError(f"model {repeated[0]!r} is listed twice; list each model once")
    return specs


def load_model(
    model: ModelSpec, device: str = "auto", dtype: str = "auto", offline: bool | None = None
) -> Encoder | Ensemble:
    """The frozen encoder of one spec, or the Ensemble of a model list; an unknown member is named."""
    specs = split_specs(model)
    if len(specs) == 1:
        return load_encoder(specs[0], device=device, dtype=dtype, offline=offline)
    members = []
    for index, spec in enumerate(specs, start=1):
        try:
            members.append(load_encoder(spec, device=device, dtype=dtype, offline=offline))
        except (ModelNotFoundError, ModelLoadError) as exc:
            where = f"model {spec!r} (member {index} of {len(specs)} in {','.join(specs)})"
            raise type(exc)(f"{where}: {exc}") from exc
    return Ensemble(tuple(members))


def load_decoders(
    model: Encoder | Ensemble, specs: ModelSpec, device: str = "auto", dtype: str = "auto",
    offline: bool | None = None,
) -> dict[str, Decoder | None]:
    """Each member's decoder by member name, None where the member has none (encoder-only weights)."""
    decoders: dict[str, Decoder | None] = {}
    for member, spec in zip(members_of(model), split_specs(specs), strict=True):
        try:
            decoders[member.name] = load_decoder(spec, device=device, dtype=dtype, offline=offline)
        except (ModelLoadError, ModelNotFoundError):
            decoders[member.name] = None
    return decoders


def member_facts(model: Encoder | Ensemble, decoders: dict[str, bool]) -> list[dict[str, object]]:
    """What ``GET /v1/models`` and ``pca-protect models list --model`` show per loaded model, in list order:
    name, device, dtype, latent channels, spatial factor, posterior type, encoder parameters, decoder loaded
    (``decoders``: member name -> whether its decoder is loaded; absent means no)."""
    return [
        {
            "name": m.name, "device": str(m.device), "dtype": dtype_name(m.dtype),
            "latent_channels": int(m.latent_channels), "downsample_factor": int(m.downsample_factor),
            "posterior": m.posterior_type, "parameters": m.num_parameters(),
            "decoder_loaded": bool(decoders.get(m.name, False)),
        }
        for m in members_of(model)
    ]
