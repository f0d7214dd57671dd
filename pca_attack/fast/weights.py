"""Generator weights on disk: safetensors with the architecture in the metadata, identified by a hash.

The id is the first 12 hex digits of the file's SHA-256, so a certificate names exactly the weights that made
the image. ``resolve_generator`` maps a configuration to weights: an explicit path, or the generator shipped in
the package for the model (today: ``demo``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pca_attack.errors import ConfigError
from pca_attack.fast.generator import PerturbationNet

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "generators"


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
    meta = {"width": str(net.width), "blocks": str(net.blocks), "centred": str(int(net.centred)), **(metadata or {})}
    save_file(tensors, str(path), metadata=meta)
    return file_id(path)


@lru_cache(maxsize=4)
def load_generator(path: str) -> LoadedGenerator:
    """Weights written by ``save_generator`` (cached per path); ConfigError saying what to do otherwise."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"generator weights {path!r} not found; train them with scripts/train_generator.py")
    try:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
        net = PerturbationNet(int(meta["width"]), int(meta["blocks"]), meta.get("centred", "0") == "1")
        net.load_state_dict(load_file(str(file)))
    except (KeyError, ValueError, RuntimeError, OSError) as error:
        raise ConfigError(
            f"{path!r} is not a generator written by scripts/train_generator.py ({error}); retrain or fix the path"
        ) from None
    net.eval().requires_grad_(False)
    return LoadedGenerator(net, file_id(file), file, meta)


def resolve_generator(path: str | None, model_name: str, device: torch.device | str = "cpu") -> LoadedGenerator:
    """The generator named by ``path``, or the one shipped for ``model_name``; on ``device``."""
    if path is None:
        shipped = SHIPPED / f"{model_name}.safetensors"
        if not shipped.is_file():
            raise ConfigError(
                f"no generator ships for model {model_name!r} (only for: "
                f"{', '.join(sorted(p.stem for p in SHIPPED.glob('*.safetensors'))) or 'none'}); "
                "train one with scripts/train_generator.py and pass its path as generator"
            )
        path = str(shipped)
    loaded = load_generator(str(path))
    loaded.net.to(device)
    return loaded
