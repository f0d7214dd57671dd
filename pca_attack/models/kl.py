"""KL-VAE families built from diffusers' own ``Encoder`` / ``Decoder`` classes: ``AutoencoderKL`` (SD 1.x/2.x,
SDXL, SD3, FLUX.1) and ``AutoencoderKLFlux2`` (FLUX.2, 32 latent channels).

FLUX.2's VAE builds exactly these modules (``Encoder(double_z=True)`` + ``quant_conv``); its extra
``bn`` (latent normalisation) and the 2x2 patchify are applied by the FLUX.2 *pipeline* to the sampled
latent, after the posterior, so the collapse loss reads the posterior straight from ``quant_conv`` here and
never loads ``bn``. Modules are built on the ``meta`` device and the file's tensors are assigned to them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pca_attack.errors import ModelLoadError

KL_CLASSES = ("AutoencoderKL", "AutoencoderKLFlux2")


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, what: str) -> None:
    """Assign the tensors under ``prefix`` to ``module``; every key must match."""
    sub = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(sub, strict=False, assign=True)
    if missing or unexpected:
        raise ModelLoadError(
            f"{what} weights do not match the config: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    """The config entries the diffusers Encoder/Decoder take, with AutoencoderKL's defaults."""
    n = len(config.get("block_out_channels", (64,)))
    return {
        "block_out_channels": tuple(config.get("block_out_channels", (64,))),
        "layers_per_block": int(config.get("layers_per_block", 1)),
        "norm_num_groups": int(config.get("norm_num_groups", 32)),
        "act_fn": config.get("act_fn", "silu"),
        "mid_block_add_attention": bool(config.get("mid_block_add_attention", True)),
        "down_block_types": tuple(config.get("down_block_types", ("DownEncoderBlock2D",) * n)),
        "up_block_types": tuple(config.get("up_block_types", ("UpDecoderBlock2D",) * n)),
    }


def build_kl_encoder(
    config: dict[str, Any], state: dict[str, torch.Tensor], label: str
) -> tuple[nn.Module, nn.Module | None]:
    """(encoder body, quant_conv or None) with the file's tensors; the body maps [-1, 1] pixels to 2C moments."""
    from diffusers.models.autoencoders.vae import Encoder as DiffusersEncoder

    arch = architecture(config)
    latent = int(config.get("latent_channels", 4))
    try:
        with torch.device("meta"):  # no random init: the weights are assigned from the file below
            body = DiffusersEncoder(
                in_channels=int(config.get("in_channels", 3)), out_channels=latent,
                down_block_types=arch["down_block_types"], block_out_channels=arch["block_out_channels"],
                layers_per_block=arch["layers_per_block"], norm_num_groups=arch["norm_num_groups"],
                act_fn=arch["act_fn"], double_z=True, mid_block_add_attention=arch["mid_block_add_attention"],
            )
    except Exception as exc:
        raise ModelLoadError(f"config of {label} does not describe a KL-VAE encoder: {exc}") from exc
    load_strict(body, state, "encoder.", "encoder")
    quant_conv: nn.Module | None = None
    if config.get("use_quant_conv", True):
        with torch.device("meta"):
            quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1)
        load_strict(quant_conv, state, "quant_conv.", "quant_conv")
    return body, quant_conv


def build_kl_decoder(
    config: dict[str, Any], state: dict[str, torch.Tensor], label: str
) -> tuple[nn.Module, nn.Module | None]:
    """(decoder body, post_quant_conv or None); raises ModelLoadError if the weights have no decoder."""
    from diffusers.models.autoencoders.vae import Decoder as DiffusersDecoder

    if not any(k.startswith("decoder.") for k in state):
        raise ModelLoadError(f"{label} has no decoder weights (an encoder-only file?)")
    arch = architecture(config)
    latent = int(config.get("latent_channels", 4))
    widths = tuple(config.get("decoder_block_out_channels") or arch["block_out_channels"])  # FLUX.2 may differ
    with torch.device("meta"):
        body = DiffusersDecoder(
            in_channels=latent, out_channels=int(config.get("out_channels", 3)),
            up_block_types=arch["up_block_types"], block_out_channels=widths,
            layers_per_block=arch["layers_per_block"], norm_num_groups=arch["norm_num_groups"],
            act_fn=arch["act_fn"], mid_block_add_attention=arch["mid_block_add_attention"],
        )
    load_strict(body, state, "decoder.", "decoder")
    post: nn.Module | None = None
    if config.get("use_post_quant_conv", True):
        with torch.device("meta"):
            post = nn.Conv2d(latent, latent, 1)
        load_strict(post, state, "post_quant_conv.", "post_quant_conv")
    return body, post
