"""A model's measured ``MemoryModel`` kept on disk, so each process does not re-run the probes.

``probe`` (``pca_attack.attack.probe``) takes 9-25 s on two CPU cores (TAEF2 9 s, the demo VAE 15 s): every
``pca-protect`` call, every service start and every Ray actor paid it before its first image. The result
depends only on the encoder (architecture and weights), the device it runs on, torch and the engine's code,
so it is stored under a key that hashes all of them and read back by any later process with the same key.

Where: ``PCA_PROBE_CACHE`` (a folder), else ``$XDG_CACHE_HOME/pca-attack/probes``, else
``~/.cache/pca-attack/probes``; ``PCA_PROBE_CACHE=off`` measures every time. A file that is missing, unreadable,
from another key or with values out of range is ignored (the probe runs and rewrites it); a folder that
cannot be written only costs the next process the probe. Files are written whole (temporary file + rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from pca_attack._version import __version__
from pca_attack.attack.memory import Line, MemoryModel
from pca_attack.models.encoder import Encoder

log = logging.getLogger(__name__)

CACHE_ENV = "PCA_PROBE_CACHE"  # a folder, or one of OFF_VALUES
OFF_VALUES = ("off", "0", "false", "no", "none")
FORMAT = 1  # the file layout; a file of another format is ignored
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # pca_attack/


def cache_folder() -> Path | None:
    """The folder probes are kept in, or None when ``PCA_PROBE_CACHE`` turns the cache off."""
    chosen = os.environ.get(CACHE_ENV, "").strip()
    if chosen.lower() in OFF_VALUES:
        return None
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "pca-attack" / "probes"


@lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of the engine's Python sources: any change to the code re-measures."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def device_description(device: torch.device) -> dict[str, Any]:
    """What the measurement depends on besides the model: the device, torch's build and CPU threads."""
    described: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
                                 "threads": torch.get_num_threads(), "machine": platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        described |= {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory": props.total_memory}
    else:
        described |= {"processor": cpu_name(), "cpus": os.cpu_count()}
    return described


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what ``platform`` knows)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name") and ":" in line]
    return names[0] if names else platform.processor()


def encoder_digest(encoder: Encoder) -> str:
    """SHA-256 of the encoder's architecture and every weight and buffer (names, shapes, dtypes, bytes)."""
    digest = hashlib.sha256()
    head = {"family": encoder.family, "body": type(encoder.encoder).__name__, "config": encoder.config,
            "latent_channels": encoder.latent_channels, "factor": encoder.downsample_factor,
            "posterior": encoder.posterior_type, "signed": encoder.signed_input, "dtype": str(encoder.dtype),
            "format": str(encoder.memory_format)}
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # (numel,)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(encoder: Encoder) -> str:
    """One key per (encoder, device, torch build, engine code)."""
    parts = [encoder_digest(encoder), json.dumps(device_description(encoder.device), sort_keys=True),
             code_digest(), __version__, str(FORMAT)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def from_json(fields: dict[str, Any], factor: int) -> MemoryModel | None:
    """The stored model, or None when it is not a complete, finite, non-negative one of this factor."""
    try:
        lines = {name: Line(**fields[name]) for name in ("step", "forward", "loop")}
        if fields.get("checkpointed") is not None:
            lines["checkpointed"] = Line(**fields["checkpointed"])
        model = MemoryModel(**{**fields, **lines})
    except (KeyError, TypeError, ValueError):
        return None
    numbers = _numbers(dataclasses.asdict(model))
    if model.factor != factor or not all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in numbers):
        return None
    return model


def _numbers(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    return [] if value is None else [value]


def read(path: Path, key: str, factor: int) -> MemoryModel | None:
    """The model stored at ``path`` under ``key``, or None (missing, unreadable, another key, out of range)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key or stored.get("format") != FORMAT:
        return None
    fields = stored.get("memory_model")
    return from_json(fields, factor) if isinstance(fields, dict) else None


def write(path: Path, key: str, model: MemoryModel, encoder: Encoder) -> None:
    """Store ``model`` whole (a temporary file renamed over ``path``); a failure is logged, never raised."""
    record = {"format": FORMAT, "key": key, "engine": __version__, "model": encoder.name,
              "device": device_description(encoder.device), "memory_model": dataclasses.asdict(model)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            json.dump(record, handle, indent=1)
        os.replace(handle.name, path)
    except OSError as error:
        log.info("memory probe of %s not cached (%s: %s); set %s to a writable folder or 'off'",
                 encoder.name, path.parent, error, CACHE_ENV)


def cached_probe(encoder: Encoder) -> MemoryModel:
    """``probe(encoder)``, read from the cache when this encoder was measured here before, else measured and
    stored."""
    from pca_attack.attack.probe import probe

    folder = cache_folder()
    if folder is None:
        return probe(encoder)
    key = cache_key(encoder)
    path = folder / f"{key[:40]}.json"
    model = read(path, key, encoder.downsample_factor)
    if model is not None:
        log.info("memory model of %s read from %s", encoder.name, path)
        return model
    model = probe(encoder)
    write(path, key, model, encoder)
    return model
