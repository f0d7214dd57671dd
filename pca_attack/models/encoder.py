"""Frozen VAE encoders (and, on demand, decoders) for the attack and its diagnostics.

``load_encoder`` builds only what the attack needs — diffusers' ``Encoder`` and the ``quant_conv`` —
from the weights file, without ever materialising the decoder. Parameters are frozen and the module is
in eval mode; gradients flow to the input only. Loaded modules are cached per (spec, device, dtype).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pca_attack.errors import ModelLoadError
from pca_attack.models.devices import conv_memory_format, dtype_name, resolve_device, resolve_dtype
from pca_attack.models.weights import ModelSource, load_config_and_tensors, resolve_source

log = logging.getLogger("pca_attack")

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # diffusers' DiagonalGaussianDistribution clamp


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, what: str) -> None:
    sub = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(sub, strict=False, assign=True)
    if missing or unexpected:
        raise ModelLoadError(
            f"{what} weights do not match the config: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def _freeze(module: nn.Module, device: torch.device, dtype: torch.dtype) -> torch.memory_format:
    """Move to device/dtype, in the device's convolution layout, eval mode, no weight gradients.

    Every tensor is copied into memory the module owns: 4-D conv weights in the device's layout
    (``conv_memory_format``), the rest contiguous. On CPU this also detaches the module from the weights
    file's memory map, which would otherwise stay alive (and keep the pages the layout change read resident:
    about twice the encoder's weights) for as long as any one tensor still viewed it.
    """
    memory_format = conv_memory_format(device)
    for tensor in [*module.parameters(), *module.buffers()]:  # one copy each: device, dtype and layout at once
        layout = memory_format if tensor.dim() == 4 else torch.contiguous_format
        target_dtype = dtype if tensor.is_floating_point() else tensor.dtype  # as nn.Module.to casts
        tensor.data = tensor.data.to(device=device, dtype=target_dtype, memory_format=layout, copy=True)
    module.eval()
    module.requires_grad_(False)
    return memory_format


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad (B, C, H, W) on the bottom/right so H and W become multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class Encoder(nn.Module):
    """x in [0, 1] (B, 3, H, W) -> posterior (mean, logvar), each (B, C, H/f, W/f)."""

    def __init__(
        self,
        encoder: nn.Module,
        quant_conv: nn.Module | None,
        *,
        name: str,
        config: dict[str, Any],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.quant_conv = quant_conv
        self.name = name
        self.config = dict(config)
        self.latent_channels = int(config.get("latent_channels", 4))
        self.downsample_factor = 2 ** (len(config.get("block_out_channels", (1,))) - 1)
        self.scaling_factor = float(config.get("scaling_factor", 0.18215))
        self.device = device
        self.dtype = dtype
        self.memory_format = _freeze(self, device, dtype)

    def posterior(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of (B, 3, H, W) images of ANY size: padded here to the encoder's multiple.

        The one place that pads for the encoder: the attack, diagnostics and the red team all call this.
        Returns mean, logvar, each (B, C, ceil(H/f), ceil(W/f)).
        """
        return self(pad_to_multiple(x01.to(self.device), self.downsample_factor))

    def forward(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of images in [0, 1]; spatial sizes must be multiples of ``downsample_factor``."""
        x = (x01.to(self.dtype) * 2.0 - 1.0).contiguous(memory_format=self.memory_format)  # (B, 3, H, W)
        h = self.encoder(x)  # (B, 2C, H/f, W/f)
        moments = self.quant_conv(h) if self.quant_conv is not None else h  # (B, 2C, H/f, W/f)
        mean, logvar = torch.chunk(moments, 2, dim=1)  # each (B, C, H/f, W/f)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, latent_channels={self.latent_channels}, "
            f"f={self.downsample_factor}, device={self.device}, dtype={dtype_name(self.dtype)}"
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Decoder(nn.Module):
    """Latent (B, C, h, w) -> image in [0, 1] (B, 3, f*h, f*w). Used by diagnostics, never by the attack."""

    def __init__(
        self, decoder: nn.Module, post_quant_conv: nn.Module | None, *, name: str,
        device: torch.device, dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.post_quant_conv = post_quant_conv
        self.name = name
        self.device = device
        self.dtype = dtype
        self.memory_format = _freeze(self, device, dtype)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.dtype).contiguous(memory_format=self.memory_format)  # (B, C, h, w)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return ((self.decoder(z).float() + 1.0) / 2.0).clamp(0.0, 1.0)  # (B, 3, H, W)


_cache: dict[tuple[str, str, str, str], nn.Module] = {}
_cache_lock = threading.Lock()


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
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


def build_encoder(
    source: ModelSource, device: torch.device, dtype: torch.dtype, offline: bool | None = None
) -> Encoder:
    """Build the frozen encoder of ``source`` (no caching; see load_encoder)."""
    from diffusers.models.autoencoders.vae import Encoder as DiffusersEncoder

    config, state = load_config_and_tensors(source, ("encoder.", "quant_conv."), offline)
    arch = _architecture(config)
    latent = int(config.get("latent_channels", 4))
    try:
        with torch.device("meta"):  # no random init: the weights are assigned from the file below
            body = DiffusersEncoder(
                in_channels=int(config.get("in_channels", 3)),
                out_channels=latent,
                down_block_types=arch["down_block_types"],
                block_out_channels=arch["block_out_channels"],
                layers_per_block=arch["layers_per_block"],
                norm_num_groups=arch["norm_num_groups"],
                act_fn=arch["act_fn"],
                double_z=True,
                mid_block_add_attention=arch["mid_block_add_attention"],
            )
    except Exception as exc:
        raise ModelLoadError(f"config of {source.label} does not describe a KL-VAE encoder: {exc}") from exc
    _load_strict(body, state, "encoder.", "encoder")
    quant_conv: nn.Module | None = None
    if config.get("use_quant_conv", True):
        with torch.device("meta"):
            quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1)
        _load_strict(quant_conv, state, "quant_conv.", "quant_conv")
    return Encoder(body, quant_conv, name=source.label, config=config, device=device, dtype=dtype)


def build_decoder(
    source: ModelSource, device: torch.device, dtype: torch.dtype, offline: bool | None = None
) -> Decoder:
    """Build the frozen decoder of ``source``; raises ModelLoadError if the weights have none."""
    from diffusers.models.autoencoders.vae import Decoder as DiffusersDecoder

    config, state = load_config_and_tensors(source, ("decoder.", "post_quant_conv."), offline)
    if not any(k.startswith("decoder.") for k in state):
        raise ModelLoadError(f"{source.label} has no decoder weights (an encoder-only file?)")
    arch = _architecture(config)
    latent = int(config.get("latent_channels", 4))
    with torch.device("meta"):  # no random init: the weights are assigned from the file below
        body = DiffusersDecoder(
            in_channels=latent,
            out_channels=int(config.get("out_channels", 3)),
            up_block_types=arch["up_block_types"],
            block_out_channels=arch["block_out_channels"],
            layers_per_block=arch["layers_per_block"],
            norm_num_groups=arch["norm_num_groups"],
            act_fn=arch["act_fn"],
            mid_block_add_attention=arch["mid_block_add_attention"],
        )
    _load_strict(body, state, "decoder.", "decoder")
    post: nn.Module | None = None
    if config.get("use_post_quant_conv", True):
        with torch.device("meta"):
            post = nn.Conv2d(latent, latent, 1)
        _load_strict(post, state, "post_quant_conv.", "post_quant_conv")
    return Decoder(body, post, name=source.label, device=device, dtype=dtype)


def _cached(kind: str, spec: str, device: str, dtype: str, offline: bool | None) -> nn.Module:
    source = resolve_source(spec)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    key = (kind, source.location + "::" + (source.subfolder or ""), str(dev), dtype_name(dt))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        module = (build_encoder if kind == "encoder" else build_decoder)(source, dev, dt, offline)
        log.info("loaded %s of %s on %s (%s)", kind, source.label, dev, dtype_name(dt))
        _cache[key] = module
        return module


def load_encoder(
    spec: str, device: str = "auto", dtype: str = "auto", offline: bool | None = None
) -> Encoder:
    """The frozen encoder of a registry name, local folder, single weights file or hub id (cached)."""
    module = _cached("encoder", spec, device, dtype, offline)
    assert isinstance(module, Encoder)
    return module


def load_decoder(
    spec: str, device: str = "auto", dtype: str = "auto", offline: bool | None = None
) -> Decoder:
    """The frozen decoder of the same sources (cached); only diagnostics and benchmarks use it."""
    module = _cached("decoder", spec, device, dtype, offline)
    assert isinstance(module, Decoder)
    return module


def clear_cache() -> None:
    """Forget every cached module (tests, and servers that switch models)."""
    with _cache_lock:
        _cache.clear()
