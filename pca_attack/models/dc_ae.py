"""Sana's deep-compression autoencoder (diffusers ``AutoencoderDC``, f32c32): deterministic encoder.

Only diffusers' DC-AE ``Encoder`` is built. ``AutoencoderDC.encode`` returns the encoder's output itself as
the latent (no posterior distribution), so the engine treats it as a deterministic encoder: pixels in
[-1, 1] -> latent (B, C, H/32, W/32) with the default six stages.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pca_attack.errors import ModelLoadError
from pca_attack.models.kl import load_strict

DC_CLASS = "AutoencoderDC"
_DEFAULT_WIDTHS = (128, 256, 512, 512, 1024, 1024)


def dc_factor(config: dict[str, Any]) -> int:
    """Spatial factor: one 2x downsampling between consecutive encoder stages."""
    return 2 ** (len(config.get("encoder_block_out_channels", _DEFAULT_WIDTHS)) - 1)


def build_dc_encoder(config: dict[str, Any], state: dict[str, torch.Tensor], label: str) -> nn.Module:
    """The DC-AE encoder with the file's ``encoder.*`` tensors: (B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f)."""
    from diffusers.models.autoencoders.autoencoder_dc import Encoder as DCEncoder

    qkv = config.get("encoder_qkv_multiscales", ((), (), (), (5,), (5,), (5,)))
    try:
        with torch.device("meta"):
            encoder = DCEncoder(
                in_channels=int(config.get("in_channels", 3)),
                latent_channels=int(config.get("latent_channels", 32)),
                attention_head_dim=int(config.get("attention_head_dim", 32)),
                block_type=config.get("encoder_block_types", "ResBlock"),
                block_out_channels=tuple(config.get("encoder_block_out_channels", _DEFAULT_WIDTHS)),
                layers_per_block=tuple(config.get("encoder_layers_per_block", (2, 2, 2, 3, 3, 3))),
                qkv_multiscales=tuple(tuple(q) for q in qkv),
                downsample_block_type=config.get("downsample_block_type", "pixel_unshuffle"),
                out_shortcut=bool(config.get("encoder_out_shortcut", True)),
            )
    except Exception as exc:
        raise ModelLoadError(f"config of {label} does not describe a DC-AE encoder: {exc}") from exc
    load_strict(encoder, state, "encoder.", "encoder")
    return encoder
