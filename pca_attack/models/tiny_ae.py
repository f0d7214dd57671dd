"""The tiny-autoencoder family (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2, TAESana), written from its architecture.

Each half of a tiny autoencoder is one ``nn.Sequential`` whose state-dict keys are the layer indices
(``"0.weight"``, ``"1.conv.0.weight"``, ``"11.pool.0.weight"``...). Indices that own no tensor are
parameter-free layers (ReLU, the decoder's soft clamp, nearest upsampling). The variant is read from the
tensors alone, never from a file name:

* a layer with ``conv.0.weight`` is a residual ``Block``; with ``pool.0.weight`` it also has the FLUX.2
  variant's pooled 1x1 branch;
* a bare 4-D ``weight`` is a convolution (kernel from its shape). In the encoder a convolution without a
  bias, or one directly followed by a parameter-free layer (TAESana's stem), has stride 2; the number of
  stride-2 convolutions gives the spatial factor (3 -> f8, 5 -> f32); the last convolution's output
  channels are the latent channels;
* in the decoder, index 0 (no tensors) is the soft clamp ``tanh(z / 3) * 3``; a parameter-free layer after a
  convolution with bias is a ReLU, one before a convolution without bias is a nearest 2x upsampling.

The original ``.pth`` files take images in [0, 1] and their decoders return [0, 1]. The diffusers
``AutoencoderTiny`` folders hold the same layers under ``encoder.layers.K`` / ``decoder.layers.K`` (its
decoder has no clamp layer, so ``decoder.layers.K`` is index ``K + 1`` here); diffusers wraps them to take and
return [-1, 1], which is the same network on [0, 1] pixels. The encoder is deterministic: it returns the
latent itself (an approximation of the big VAE's posterior mean), no variance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pca_attack.errors import ModelLoadError

ENCODER_SUFFIX, DECODER_SUFFIX = "_encoder.pth", "_decoder.pth"


class Block(nn.Module):
    """Residual block: ReLU(conv(x) + x), with x = x + pool(x) first in the pooled (FLUX.2) variant."""

    def __init__(self, channels: int, pool_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.pool: nn.Module | None = None
        if pool_channels is not None:
            self.pool = nn.Sequential(
                nn.Conv2d(channels, pool_channels, 1, bias=False), nn.GroupNorm(4, pool_channels), nn.ReLU(),
                nn.Conv2d(pool_channels, channels, 1, bias=False),
            )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, C, h, w)
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


class SoftClamp(nn.Module):
    """tanh(z / 3) * 3: the decoder's first layer."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / 3.0) * 3.0


@dataclass(frozen=True)
class TinyVariant:
    """What the tensors say about one half of a tiny autoencoder."""

    role: str  # "encoder" | "decoder"
    latent_channels: int
    downsample_factor: int  # spatial factor (encoder: 2 ** stride-2 convs; decoder: 2 ** upsamplings)
    pooled_blocks: int  # blocks with the FLUX.2 pooled branch

    def describe(self) -> str:
        pool = f", {self.pooled_blocks} pooled blocks" if self.pooled_blocks else ""
        return f"tiny {self.role}: {self.latent_channels} latent channels, f{self.downsample_factor}{pool}"


def _layers(state: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """Group keys "K.rest" by index K; raise if any key is not of that form."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"(\d+)\.(.+)", key)
        if match is None:
            raise ModelLoadError(f"key {key!r} is not a tiny-autoencoder layer key ('<index>.<name>')")
        out.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    return out


def is_tiny_state(state: dict[str, torch.Tensor]) -> bool:
    """True when every key looks like '<index>.<name>' and some layer is a tiny-autoencoder Block."""
    return bool(state) and all(re.match(r"\d+\.", k) for k in state) and any(
        re.fullmatch(r"\d+\.conv\.0\.weight", k) for k in state
    )


def _conv(tensors: dict[str, torch.Tensor], stride: int) -> nn.Conv2d:
    out_ch, in_ch, k, _ = tensors["weight"].shape
    return nn.Conv2d(int(in_ch), int(out_ch), int(k), stride=stride, padding=int(k) // 2, bias="bias" in tensors)


def _block(tensors: dict[str, torch.Tensor]) -> Block:
    channels = int(tensors["conv.0.weight"].shape[0])
    pool = tensors.get("pool.0.weight")
    return Block(channels, None if pool is None else int(pool.shape[0]))


def _is_conv(tensors: dict[str, torch.Tensor] | None) -> bool:
    return tensors is not None and "weight" in tensors and tensors["weight"].dim() == 4


def build_tiny(state: dict[str, torch.Tensor], role: str) -> tuple[nn.Sequential, TinyVariant]:
    """The ``nn.Sequential`` (on the meta device: weights are assigned by the caller) and its variant."""
    layers = _layers(state)
    if not layers:
        raise ModelLoadError(f"no tiny-autoencoder {role} tensors found")
    modules: list[nn.Module] = []
    strided = upsampled = pooled = 0
    with torch.device("meta"):
        for index in range(max(layers) + 1):
            here, after, before = layers.get(index), layers.get(index + 1), layers.get(index - 1)
            if here is not None and "conv.0.weight" in here:
                modules.append(_block(here))
                pooled += "pool.0.weight" in here
            elif _is_conv(here):
                assert here is not None
                stride = 2 if role == "encoder" and ("bias" not in here or after is None and index < max(layers)) else 1
                strided += stride == 2
                modules.append(_conv(here, stride))
            elif here is not None:
                raise ModelLoadError(f"layer {index} of the tiny {role} is neither a conv nor a Block: {list(here)}")
            elif role == "encoder":
                modules.append(nn.ReLU())
            elif index == 0:
                modules.append(SoftClamp())
            elif after is not None and _is_conv(after) and "bias" not in after:
                modules.append(nn.Upsample(scale_factor=2, mode="nearest"))
                upsampled += 1
            elif before is not None and _is_conv(before) and "bias" in before:
                modules.append(nn.ReLU())
            else:
                raise ModelLoadError(f"cannot tell what parameter-free layer {index} of the tiny decoder is")
    last, first = layers[max(layers)], layers[min(layers)]
    if not (_is_conv(last) and _is_conv(first)):
        raise ModelLoadError(f"a tiny {role} starts and ends with a convolution")
    latent = int(last["weight"].shape[0] if role == "encoder" else first["weight"].shape[1])
    factor = 2 ** (strided if role == "encoder" else upsampled)
    return nn.Sequential(*modules), TinyVariant(role, latent, factor, pooled)


def load_tiny(module: nn.Sequential, state: dict[str, torch.Tensor], what: str) -> None:
    """Assign the tensors to the meta-device module; every key must match."""
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ModelLoadError(
            f"{what}: weights do not match the layout read from them: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def from_diffusers(state: dict[str, torch.Tensor], role: str) -> dict[str, torch.Tensor]:
    """``AutoencoderTiny`` keys (``encoder.layers.K...`` / ``decoder.layers.K...``) -> original indices."""
    prefix, shift = f"{role}.layers.", 0 if role == "encoder" else 1  # the original decoder has the clamp at 0
    out = {}
    for key, tensor in state.items():
        if key.startswith(prefix):
            index, rest = key.removeprefix(prefix).split(".", 1)
            out[f"{int(index) + shift}.{rest}"] = tensor
    return out


def encoder_file_in(folder: Path) -> Path | None:
    """The single ``*_encoder.pth`` of a folder (None when there is none); several is an error."""
    found = sorted(folder.glob(f"*{ENCODER_SUFFIX}"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelLoadError(f"{folder} holds several tiny encoders ({names}); pass the file itself")
    return found[0] if found else None


def decoder_beside(encoder_file: Path) -> Path | None:
    """``X_decoder.pth`` next to ``X_encoder.pth`` (None when absent or the name has no such pair)."""
    if not encoder_file.name.endswith(ENCODER_SUFFIX):
        return None
    candidate = encoder_file.with_name(encoder_file.name[: -len(ENCODER_SUFFIX)] + DECODER_SUFFIX)
    return candidate if candidate.is_file() else None


def tiny_keys(keys: Iterable[str]) -> bool:
    """True when diffusers-layout keys belong to an ``AutoencoderTiny``."""
    return any(k.startswith("encoder.layers.") for k in keys)
