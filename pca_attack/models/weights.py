"""Find and read VAE weights: registry names, local diffusers folders, single weight files, tiny autoencoders.

Only the tensors a caller asks for (by key prefix) are read, so the attack path never materialises the
decoder. The model family comes from the folder's ``config.json`` (``_class_name``) or, for single files,
from the tensors' keys (see ``read_model``). Tiny autoencoders in their original layout are a folder holding
``*_encoder.pth`` (and maybe ``*_decoder.pth``) or the encoder file itself.
Single files may be in diffusers layout or in the original LDM layout (also inside a full
Stable Diffusion checkpoint, under ``first_stage_model.``); LDM keys are converted with diffusers' own
converter.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from pca_attack.errors import ModelLoadError, ModelNotFoundError
from pca_attack.models.downloads import fetch
from pca_attack.models.registry import DEMO_MODEL_DIR, REGISTRY
from pca_attack.models.tiny_ae import decoder_beside, encoder_file_in, is_tiny_state

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelSource:
    """Where one VAE's config and weights come from."""

    spec: str  # what the user asked for (normalised)
    kind: str  # "hub" | "folder" | "file" | "url" (a registry entry published as files: see downloads.py)
    location: str  # repo id, folder path, file path or registry name
    subfolder: str | None = None
    decoder: str | None = None  # a separate decoder weights file (tiny autoencoders), when given or found

    @property
    def label(self) -> str:
        """Name shown in logs and certificates."""
        return self.spec


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _fix_hint(spec: str) -> str:
    return (
        f"Fix: download it with `pca-protect models download {spec}` (needs network access to the Hugging "
        "Face hub), pass a local diffusers folder or a .safetensors file with --model PATH, or use the "
        "bundled demo model with --model demo."
    )


def resolve_source(spec: str, decoder: str | Path | None = None) -> ModelSource:
    """Decide what kind of model reference ``spec`` is; raise ModelNotFoundError when it is none.

    ``decoder``: a separate decoder weights file (e.g. ``taef2_decoder.pth``); without it, a tiny encoder
    file's ``*_decoder.pth`` neighbour is used when present.
    """
    source = _resolve(str(spec).strip())
    if decoder is not None:
        path = Path(decoder).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"decoder file {path} does not exist; pass the *_decoder.pth weights file")
        return replace(source, decoder=str(path))
    if source.kind == "file":
        beside = decoder_beside(Path(source.location))
        return replace(source, decoder=str(beside)) if beside else source
    return source


def _resolve(name: str) -> ModelSource:
    spec = name
    if name.lower() in REGISTRY:
        entry = REGISTRY[name.lower()]
        if entry.files:
            return ModelSource(entry.name, "url", entry.name)
        if entry.repo_id is not None:
            return ModelSource(entry.name, "hub", entry.repo_id, entry.subfolder)
        if not (DEMO_MODEL_DIR / "config.json").is_file():  # the bundled demo
            raise ModelNotFoundError(
                f"the bundled demo model is missing from {DEMO_MODEL_DIR}; reinstall the package or "
                "rebuild it with `python scripts/train_demo_vae.py`"
            )
        return ModelSource(entry.name, "folder", str(DEMO_MODEL_DIR))
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(str(path), "folder", str(path))
        if (path / "vae" / "config.json").is_file():
            return ModelSource(str(path), "folder", str(path), "vae")
        tiny = encoder_file_in(path)
        if tiny is not None:
            return ModelSource(str(path), "file", str(tiny))
        raise ModelNotFoundError(
            f"folder {path} holds no diffusers VAE (config.json or vae/config.json next to "
            "diffusion_pytorch_model.safetensors) and no tiny autoencoder (*_encoder.pth). " + _fix_hint("sd15")
        )
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelNotFoundError(
                f"{path} is not a weights file; expected one of {', '.join(SINGLE_FILE_SUFFIXES)}"
            )
        return ModelSource(str(path), "file", str(path))
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", name) and not name.startswith((".", "/")):
        return ModelSource(name, "hub", name, None)
    known = ", ".join(REGISTRY)
    raise ModelNotFoundError(
        f"model {spec!r} is not a registry name ({known}), an existing folder or file, nor a hub id "
        "like owner/name. " + _fix_hint("sd15")
    )


def _unavailable(source: ModelSource, offline: bool, error: Exception | None) -> ModelNotFoundError:
    why = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}" if error else "not found"
    advice = (
        "It is not in the local Hugging Face cache and --offline (or HF_HUB_OFFLINE) forbids downloading. "
        if offline else
        "One attempt was made, without retries. If this machine has no network access, run with --offline "
        "(or HF_HUB_OFFLINE=1) so that only local files are used. "
    )
    return ModelNotFoundError(
        f"model {source.spec!r} ({source.location}) is not available ({why}). " + advice + _fix_hint(source.spec)
    )


def _hub_file(source: ModelSource, filename: str, offline: bool) -> Path:
    """A file of a hub model: from the local cache if there, else one metadata request and the download.

    huggingface_hub retries network errors with back-off (about 25 s of repeated warning lines when the
    network is down); a single HEAD request without retries decides first, so a missing model fails fast.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError

    subfolders: list[str | None] = [source.subfolder] if source.subfolder is not None else [None, "vae"]
    for sub in subfolders:  # the cache first: no network
        try:
            return Path(hf_hub_download(source.location, filename, subfolder=sub, local_files_only=True))
        except Exception:  # not cached (any of the hub's error types)
            continue
    if offline:
        raise _unavailable(source, True, None)
    last_error: Exception | None = None
    for sub in subfolders:
        try:
            get_hf_file_metadata(hf_hub_url(source.location, filename, subfolder=sub), timeout=10)
        except EntryNotFoundError as exc:  # the repository is there, this file is not: try the next folder
            last_error = exc
            continue
        except Exception as exc:  # no network, no such repository, gated: one try, then a clear error
            raise _unavailable(source, False, exc) from None
        try:
            return Path(hf_hub_download(source.location, filename, subfolder=sub))
        except Exception as exc:
            raise _unavailable(source, False, exc) from None
    raise _unavailable(source, False, last_error)


def _folder_files(source: ModelSource, offline: bool) -> tuple[Path, Path]:
    """(config.json, weights file) of a folder or hub source."""
    if source.kind == "hub":
        config_path = _hub_file(source, "config.json", offline)
        for weights_name in WEIGHT_FILES:
            try:
                return config_path, _hub_file(source, weights_name, offline)
            except ModelNotFoundError:
                continue
        raise ModelNotFoundError(f"no VAE weights found for {source.spec!r}. " + _fix_hint(source.spec))
    folder = Path(source.location) / (source.subfolder or "")
    for weights_name in WEIGHT_FILES:
        if (folder / weights_name).is_file():
            return folder / "config.json", folder / weights_name
    raise ModelNotFoundError(
        f"folder {folder} has config.json but no {' or '.join(WEIGHT_FILES)}. " + _fix_hint("sd15")
    )


def read_tensors(path: Path, prefixes: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Read a weights file, keeping only keys that start with one of ``prefixes`` (all when None)."""
    def keep(key: str) -> bool:
        return prefixes is None or key.startswith(prefixes)

    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            out: dict[str, torch.Tensor] = {}
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                    if keep(key):
                        out[key] = handle.get_tensor(key)
            return out
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"could not read weights from {path}: {exc}") from exc
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"{path} does not hold a state dict")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor) and keep(k)}


def _count_indices(keys: Iterable[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Build an AutoencoderKL config from diffusers-layout weights (norm groups assumed 32, as in SD)."""
    keys = list(state)
    n_blocks = _count_indices(keys, r"encoder\.down_blocks\.(\d+)\.")
    if n_blocks == 0 or "encoder.conv_out.weight" not in state:
        raise ModelLoadError("weights do not look like a KL-VAE encoder (no encoder.down_blocks.*)")
    widths = [int(state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(n_blocks)]
    return {
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n_blocks,
        "up_block_types": ["UpDecoderBlock2D"] * n_blocks,
        "block_out_channels": widths,
        "layers_per_block": _count_indices(keys, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        "latent_channels": int(state["encoder.conv_out.weight"].shape[0]) // 2,
        "norm_num_groups": 32,
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
        "mid_block_add_attention": any(k.startswith("encoder.mid_block.attentions") for k in keys),
    }


def _ldm_to_diffusers(state: dict[str, torch.Tensor], sidecar: dict[str, Any] | None) -> tuple:
    """Convert original-LDM VAE keys to diffusers keys; returns (config, state)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    keys = list(state)
    n_blocks = _count_indices(keys, r"encoder\.down\.(\d+)\.")
    if n_blocks == 0:
        raise ModelLoadError("weights are neither diffusers nor LDM KL-VAE layout")
    base = state["encoder.conv_in.weight"].shape[0]
    mults = [int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // int(base) for i in range(n_blocks)]
    config = sidecar or {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n_blocks,
        "up_block_types": ["UpDecoderBlock2D"] * n_blocks,
        "block_out_channels": [int(base) * m for m in mults],
        "layers_per_block": _count_indices(keys, r"encoder\.down\.0\.block\.(\d+)\."),
        "latent_channels": int(state["encoder.conv_out.weight"].shape[0]) // 2,
        "norm_num_groups": 32,
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
    }
    converted = convert_ldm_vae_checkpoint(state, config)
    return config, converted


def load_config_and_tensors(
    source: ModelSource, prefixes: tuple[str, ...], offline: bool | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and the tensors under ``prefixes`` (diffusers key layout) of a KL-VAE-style source."""
    is_offline = _offline(offline)
    if source.kind in ("hub", "folder"):
        config_path, weights_path = _folder_files(source, is_offline)
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"could not read {config_path}: {exc}") from exc
        return config, read_tensors(weights_path, prefixes)
    path = Path(source.location)
    return _file_config_and_tensors(path, read_tensors(path), prefixes)


def _file_config_and_tensors(
    path: Path, state: dict[str, torch.Tensor], prefixes: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    sidecar_path = next(
        (p for p in (path.with_suffix(".json"), path.parent / "config.json") if p.is_file()), None
    )
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path else None
    if any(k.startswith("first_stage_model.") for k in state):  # a whole SD checkpoint
        state = {k.removeprefix("first_stage_model."): v for k, v in state.items()
                 if k.startswith("first_stage_model.")}
    if any(k.startswith("encoder.down.") for k in state):
        config, state = _ldm_to_diffusers(state, sidecar)
    else:
        config = sidecar or infer_config(state)
    return config, {k: v for k, v in state.items() if k.startswith(prefixes)}


def downloaded(source: ModelSource, role: str, offline: bool | None = None) -> ModelSource:
    """A registry entry published as files, as the file source of its local copies (fetched when missing):
    the encoder file, and for ``role="decoder"`` the decoder file unless one was given."""
    entry = REGISTRY[source.spec]
    encoder = fetch(entry, "encoder", _offline(offline))
    if encoder is None:
        raise ModelNotFoundError(f"registry entry {entry.name!r} publishes no encoder file")
    decoder = source.decoder
    if role == "decoder" and decoder is None:
        found = fetch(entry, "decoder", _offline(offline))
        decoder = str(found) if found else None
    return replace(source, kind="file", location=str(encoder), decoder=decoder)


def read_model(
    source: ModelSource, role: str, offline: bool | None = None
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(family, config, tensors) of one half (``role`` = "encoder" | "decoder") of a model.

    family: the diffusers class name from ``config.json`` (``AutoencoderKL`` when absent), or ``"tiny"``
    for original tiny-autoencoder state dicts (config ``{}``, keys ``"<index>.<name>"``), recognised by
    their keys. A tiny encoder's decoder comes from ``source.decoder`` (given, or found beside it).
    """
    prefixes = ("encoder.", "quant_conv.") if role == "encoder" else ("decoder.", "post_quant_conv.")
    if source.kind == "url":
        source = downloaded(source, role, offline)
    if source.kind != "file" and not (role == "decoder" and source.decoder):
        config, state = load_config_and_tensors(source, prefixes, offline)
        return str(config.get("_class_name", "AutoencoderKL")), config, state
    path = Path(source.decoder if role == "decoder" and source.decoder else source.location)
    state = read_tensors(path)
    if is_tiny_state(state):
        if role == "decoder" and not source.decoder:
            raise ModelLoadError(
                f"{path} is a tiny-autoencoder encoder with no decoder beside it (expected "
                f"{path.name.replace('_encoder', '_decoder')}); pass the decoder file with --decoder PATH"
            )
        return "tiny", {}, state
    config, state = _file_config_and_tensors(path, state, prefixes)
    return str(config.get("_class_name", "AutoencoderKL")), config, state
