"""Generator weights on disk: safetensors with the architecture in the metadata, identified by a hash.

The id is the first 12 hex digits of the file's SHA-256, so a certificate names exactly the weights that made
the image. ``resolve_generator`` maps a configuration to weights: an explicit path, or the generator shipped in
the package for the model (today: ``demo`` and ``taef2``; found by name, else by the encoder's probe).

A generator only works for the encoder it was trained against. The training script stores that encoder's
``probe`` in the metadata (per-channel mean and spread of its posterior mean on a fixed synthetic image);
``check_generator`` compares it with the encoder in use (within 5%, so fp16/bf16 and other devices pass) and
refuses a generator made for another model with a message saying which.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pca_attack.errors import ConfigError
from pca_attack.fast.generator import PerturbationNet

if TYPE_CHECKING:
    from pca_attack.models.encoder import Encoder

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "generators"
PROBE_TOLERANCE = 0.05  # relative distance between probes still taken as the same encoder


@dataclass(frozen=True)
class LoadedGenerator:
    net: PerturbationNet
    generator_id: str  # first 12 hex digits of the weights file's SHA-256
    path: Path
    metadata: dict[str, str]


def file_id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def save_generator(net: PerturbationNet, path: Path, metadata: dict[str, str] | None = None) -> str:
    """Write the weights (fp16: half the size; loaded back into fp32) with width/blocks and ``metadata``;
    return the file's id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().half().contiguous().cpu() for k, v in net.state_dict().items()}
    meta = {"width": str(net.width), "blocks": str(net.blocks), "centred": str(int(net.centred)),
            "pattern": str(net.period), **(metadata or {})}
    save_file(tensors, str(path), metadata=meta)
    return file_id(path)


@lru_cache(maxsize=4)
def load_generator(path: str) -> LoadedGenerator:
    """Weights written by ``save_generator`` (cached per path); ConfigError saying what to do otherwise."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"generator weights {path!r} not found (no such file); give the path of a .safetensors file written "
            "by scripts/train_generator.py"
        )
    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
        net = PerturbationNet(
            int(meta["width"]), int(meta["blocks"]), meta.get("centred", "0") == "1", int(meta.get("pattern", "0"))
        )
        net.load_state_dict(load_file(str(file)))
    except (KeyError, ValueError, RuntimeError, OSError, SafetensorError) as error:
        raise ConfigError(
            f"{path!r} is not a generator written by scripts/train_generator.py ({error}); retrain or fix the path"
        ) from None
    net.eval().requires_grad_(False)
    return LoadedGenerator(net, file_id(file), file, meta)


def resolve_generator(
    path: str | None, model_name: str, device: torch.device | str = "cpu", encoder: Encoder | None = None
) -> LoadedGenerator:
    """The generator named by ``path``, or the one shipped for ``model_name`` (or, given ``encoder``, for its
    weights: see ``shipped_generator``); on ``device``."""
    if path is None:
        shipped = shipped_generator(model_name, encoder)
        if shipped is None:
            raise ConfigError(
                f"no generator ships for model {model_name!r} (only for: "
                f"{', '.join(sorted(p.stem for p in SHIPPED.glob('*.safetensors'))) or 'none'}); "
                "train one with scripts/train_generator.py and pass its path as generator"
            )
        path = str(shipped)
    loaded = load_generator(str(path))
    loaded.net.to(device)
    return loaded


def shipped_generator(model_name: str, encoder: Encoder | None = None) -> Path | None:
    """The generator that ships in the package for ``model_name``, if any; else, given ``encoder``, the shipped
    one whose probe matches it, so a folder or file spec of a shipped model's weights (``--model path/to/taef2``)
    finds the generator made for ``--model taef2``."""
    path = SHIPPED / f"{model_name}.safetensors"
    if path.is_file() or encoder is None:
        return path if path.is_file() else None
    current = encoder_probe(encoder)
    for candidate in sorted(SHIPPED.glob("*.safetensors")):
        probe = load_generator(str(candidate)).metadata.get("probe")
        if probe is not None and same_probe(probe, current):
            return candidate
    return None


def same_probe(stored: str, current: list[float]) -> bool:
    """Whether a generator's stored probe (JSON) and an encoder's probe are the same encoder's (within 5%)."""
    a, b = torch.tensor(json.loads(stored)), torch.tensor(current)
    return a.shape == b.shape and float((a - b).norm() / b.norm().clamp(min=1e-12)) <= PROBE_TOLERANCE


@lru_cache(maxsize=8)  # per loaded encoder: asked again by every fast-mode batch and by check_generator
@torch.no_grad()
def encoder_probe(encoder: Encoder) -> list[float]:
    """Per-channel mean then standard deviation of the posterior mean on a fixed smooth 64x64 image: (2C,)."""
    ramp = torch.linspace(0.0, 1.0, 64)
    x = torch.stack([ramp[None].expand(64, 64), ramp[:, None].expand(64, 64),
                     0.5 + 0.4 * torch.sin(12.0 * ramp[None] * ramp[:, None])])[None]  # (1, 3, 64, 64)
    mean = encoder.posterior(x.to(encoder.device, encoder.dtype))[0].float().cpu()[0]  # (C, 8, 8)
    stats = torch.cat([mean.mean(dim=(1, 2)), mean.std(dim=(1, 2))])  # (2C,)
    return [float(f"{v:.5g}") for v in stats.tolist()]


def model_metadata(model: str, encoder: Encoder) -> dict[str, str]:
    """What a generator's file records about the model it was trained for: the spec and the probe of its
    (first) encoder."""
    return {"model": model, "probe": json.dumps(encoder_probe(encoder))}


def check_generator(path: str | None, encoder: Encoder) -> LoadedGenerator:
    """The generator at ``path`` (None: the one shipped for the encoder's model), checked to be made for this
    encoder; ConfigError naming the two models otherwise."""
    loaded = resolve_generator(path, encoder.name, encoder=encoder)
    trained_for = loaded.metadata.get("model", "an unknown model")
    probe = loaded.metadata.get("probe")
    same = trained_for == encoder.name if probe is None else same_probe(probe, encoder_probe(encoder))
    if not same:
        raise ConfigError(
            f"generator {loaded.path.name} ({loaded.generator_id}) was trained for model {trained_for!r}, not for "
            f"{encoder.name!r}: its perturbations would not collapse this encoder. Train one for this model with "
            f"scripts/train_generator.py --model {encoder.name}, or use --mode pgd"
        )
    return loaded
