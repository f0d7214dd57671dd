"""Qwen-Image / Wan-2.1 VAE (diffusers ``AutoencoderKLQwenImage``): causal 3-D convolutions, used on one frame.

Only ``QwenImageEncoder3d`` and the 3-D ``quant_conv`` are built. A still image is a one-frame video
(B, 3, 1, H, W); the encoder runs with the same (empty) causal feature cache ``AutoencoderKLQwenImage``
uses for the first chunk, so its posterior equals diffusers' ``encode(x).latent_dist`` on that frame.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pca_attack.errors import ModelLoadError
from pca_attack.models.kl import load_strict

QWEN_CLASS = "AutoencoderKLQwenImage"


class OneFrameEncoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> moments (B, 2C, H/8, W/8): the 3-D encoder on a one-frame video."""

    def __init__(self, encoder: nn.Module, quant_conv: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.quant_conv = quant_conv
        from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

        self.cache_slots = sum(isinstance(m, QwenImageCausalConv3d) for m in encoder.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        video = x.unsqueeze(2)  # (B, 3, 1, H, W)
        out = self.encoder(video, feat_cache=[None] * self.cache_slots, feat_idx=[0])  # (B, 2C, 1, h, w)
        return self.quant_conv(out).squeeze(2)  # (B, 2C, h, w)


def qwen_factor(config: dict[str, Any]) -> int:
    """Spatial factor: one 2x downsampling between consecutive stages of ``dim_mult``."""
    return 2 ** (len(config.get("dim_mult", [1, 2, 4, 4])) - 1)


def build_qwen_encoder(config: dict[str, Any], state: dict[str, torch.Tensor], label: str) -> OneFrameEncoder:
    """The one-frame encoder body with the file's tensors (``encoder.*`` and ``quant_conv.*``)."""
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d, QwenImageEncoder3d

    z_dim = int(config.get("z_dim", 16))
    try:
        with torch.device("meta"):
            encoder = QwenImageEncoder3d(
                int(config.get("base_dim", 96)), z_dim * 2, list(config.get("dim_mult", [1, 2, 4, 4])),
                int(config.get("num_res_blocks", 2)), list(config.get("attn_scales", [])),
                list(config.get("temperal_downsample", [False, True, True])), 0.0,
                int(config.get("input_channels", 3)),
            )
            quant_conv = QwenImageCausalConv3d(z_dim * 2, z_dim * 2, 1)
    except Exception as exc:
        raise ModelLoadError(f"config of {label} does not describe a Qwen-Image VAE encoder: {exc}") from exc
    load_strict(encoder, state, "encoder.", "encoder")
    load_strict(quant_conv, state, "quant_conv.", "quant_conv")
    return OneFrameEncoder(encoder, quant_conv)
