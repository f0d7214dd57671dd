"""Frozen VAE encoders (and, on demand, decoders) for the attack and its diagnostics.

``load_encoder`` builds only what the attack needs — the encoder half of the model's family (see
``build_encoder``) — from the weights file, without ever materialising the decoder. Parameters are frozen and
the module is in eval mode; gradients flow to the input only. Loaded modules are cached per
(source, decoder file, device, dtype).

Two posterior types: ``"gaussian"`` encoders (KL-VAEs) return (mean, logvar); ``"deterministic"`` encoders
(the tiny autoencoders, Sana's DC-AE) return (latent, None): there is no variance to collapse, and the
collapse loss keeps only the mean term (``pca_attack.attack.losses``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pca_attack.errors import ModelLoadError
from pca_attack.models.dc_ae import DC_CLASS, build_dc_encoder, dc_factor
from pca_attack.models.devices import conv_memory_format, dtype_name, resolve_device, resolve_dtype
from pca_attack.models.kl import KL_CLASSES, build_kl_decoder, build_kl_encoder
from pca_attack.models.qwen import QWEN_CLASS, build_qwen_encoder, qwen_factor
from pca_attack.models.tiny_ae import build_tiny, from_diffusers, load_tiny
from pca_attack.models.weights import ModelSource, read_model, resolve_source

log = logging.getLogger("pca_attack")

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # diffusers' DiagonalGaussianDistribution clamp
PosteriorType = Literal["gaussian", "deterministic"]
Posterior = tuple[torch.Tensor, torch.Tensor | None]  # mean (B, C, h, w), logvar (B, C, h, w) or None


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
    """x in [0, 1] (B, 3, H, W) -> posterior (mean, logvar or None), each (B, C, H/f, W/f).

    ``encoder`` maps the (scaled) pixels to the moments (B, 2C, h, w) — or to the latent (B, C, h, w) when
    ``posterior_type`` is "deterministic"; ``quant_conv`` (KL-VAEs) follows it. ``signed_input``: the body
    takes pixels in [-1, 1] (diffusers' VAEs) rather than [0, 1] (the original tiny autoencoders).
    """

    def __init__(
        self,
        encoder: nn.Module,
        quant_conv: nn.Module | None,
        *,
        name: str,
        config: dict[str, Any],
        device: torch.device,
        dtype: torch.dtype,
        posterior_type: PosteriorType = "gaussian",
        signed_input: bool = True,
        latent_channels: int | None = None,
        downsample_factor: int | None = None,
        family: str = "AutoencoderKL",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.quant_conv = quant_conv
        self.name = name
        self.config = dict(config)
        self.family = family
        self.posterior_type: PosteriorType = posterior_type
        self.signed_input = signed_input
        self.latent_channels = latent_channels or int(config.get("latent_channels", 4))
        self.downsample_factor = downsample_factor or 2 ** (len(config.get("block_out_channels", (1,))) - 1)
        self.scaling_factor = float(config.get("scaling_factor", 0.18215))
        self.device = device
        self.dtype = dtype
        self.memory_format = _freeze(self, device, dtype)

    @property
    def deterministic(self) -> bool:
        """True when the encoder has no variance (its posterior is a point: the latent itself)."""
        return self.posterior_type == "deterministic"

    def posterior(self, x01: torch.Tensor) -> Posterior:
        """Posterior of (B, 3, H, W) images of ANY size: padded here to the encoder's multiple.

        The one place that pads for the encoder: the attack, diagnostics and the red team all call this.
        Returns mean, logvar (None for deterministic encoders), each (B, C, ceil(H/f), ceil(W/f)).
        """
        return self(pad_to_multiple(x01.to(self.device), self.downsample_factor))

    @contextmanager
    def checkpointing(self, enabled: bool = True) -> Iterator[None]:
        """Inside (when ``enabled``): gradient checkpointing of the encoder's blocks — each block's inner
        activations are recomputed in the backward pass instead of kept (lower peak, one more forward).
        diffusers bodies use their own ``gradient_checkpointing`` switch; sequential bodies (the tiny
        autoencoders) checkpoint each child that has sub-layers."""
        if not enabled:
            yield
            return
        switches = [m for m in self.encoder.modules() if hasattr(m, "gradient_checkpointing")]
        for module in switches:  # diffusers' switch and the function it calls
            setattr(module, "gradient_checkpointing", True)  # noqa: B010
            setattr(module, "_gradient_checkpointing_func", partial(checkpoint, use_reentrant=False))  # noqa: B010
        self._checkpoint_children = not switches and isinstance(self.encoder, nn.Sequential)
        try:
            yield
        finally:
            self._checkpoint_children = False
            for module in switches:
                setattr(module, "gradient_checkpointing", False)  # noqa: B010

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder body, block by block under checkpointing (``checkpointing``)."""
        if not (getattr(self, "_checkpoint_children", False) and torch.is_grad_enabled()):
            return self.encoder(x)
        for child in self.encoder.children():
            has_blocks = any(True for _ in child.children())
            x = checkpoint(child, x, use_reentrant=False) if has_blocks else child(x)
        return x

    def forward(self, x01: torch.Tensor) -> Posterior:
        """Posterior of images in [0, 1]; spatial sizes must be multiples of ``downsample_factor``."""
        x = x01.to(self.dtype) * 2.0 - 1.0 if self.signed_input else x01.to(self.dtype)  # (B, 3, H, W)
        h = self._body(x.contiguous(memory_format=self.memory_format))  # (B, 2C or C, H/f, W/f)
        if self.deterministic:
            return h, None  # (B, C, H/f, W/f)
        moments = self.quant_conv(h) if self.quant_conv is not None else h  # (B, 2C, H/f, W/f)
        mean, logvar = torch.chunk(moments, 2, dim=1)  # each (B, C, H/f, W/f)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, family={self.family}, latent_channels={self.latent_channels}, "
            f"f={self.downsample_factor}, posterior={self.posterior_type}, device={self.device}, "
            f"dtype={dtype_name(self.dtype)}"
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Decoder(nn.Module):
    """Latent (B, C, h, w) -> image in [0, 1] (B, 3, f*h, f*w). Used by diagnostics, never by the attack.

    ``signed_output``: the body returns [-1, 1] (diffusers' KL decoders) rather than [0, 1] (tiny decoders).
    """

    def __init__(
        self, decoder: nn.Module, post_quant_conv: nn.Module | None, *, name: str,
        device: torch.device, dtype: torch.dtype, signed_output: bool = True,
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.post_quant_conv = post_quant_conv
        self.name = name
        self.signed_output = signed_output
        self.device = device
        self.dtype = dtype
        self.memory_format = _freeze(self, device, dtype)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.dtype).contiguous(memory_format=self.memory_format)  # (B, C, h, w)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        out = self.decoder(z).float()  # (B, 3, H, W)
        return ((out + 1.0) / 2.0 if self.signed_output else out).clamp(0.0, 1.0)


_cache: dict[tuple[str, ...], nn.Module] = {}
_cache_lock = threading.Lock()


def build_encoder(
    source: ModelSource, device: torch.device, dtype: torch.dtype, offline: bool | None = None
) -> Encoder:
    """Build the frozen encoder of ``source`` for its family (no caching; see load_encoder)."""
    family, config, state = read_model(source, "encoder", offline)
    common: dict[str, Any] = {"name": source.label, "config": config, "device": device, "dtype": dtype,
                              "family": family}
    if family == "tiny" or family == "AutoencoderTiny":
        tensors = state if family == "tiny" else from_diffusers(state, "encoder")
        tiny, variant = build_tiny(tensors, "encoder")
        load_tiny(tiny, tensors, f"tiny encoder of {source.label}")
        return Encoder(tiny, None, posterior_type="deterministic", signed_input=False,
                       latent_channels=variant.latent_channels, downsample_factor=variant.downsample_factor,
                       **common)
    if family == QWEN_CLASS:
        return Encoder(build_qwen_encoder(config, state, source.label), None,
                       latent_channels=int(config.get("z_dim", 16)), downsample_factor=qwen_factor(config),
                       **common)
    if family == DC_CLASS:
        return Encoder(build_dc_encoder(config, state, source.label), None, posterior_type="deterministic",
                       latent_channels=int(config.get("latent_channels", 32)),
                       downsample_factor=dc_factor(config), **common)
    if family not in KL_CLASSES:
        raise ModelLoadError(
            f"{source.label} is a {family}; supported: {', '.join([*KL_CLASSES, QWEN_CLASS, DC_CLASS])}, "
            "AutoencoderTiny and the original tiny-autoencoder .pth files"
        )
    body, quant_conv = build_kl_encoder(config, state, source.label)
    return Encoder(body, quant_conv, **common)


def build_decoder(
    source: ModelSource, device: torch.device, dtype: torch.dtype, offline: bool | None = None
) -> Decoder:
    """Build the frozen decoder of ``source``; raises ModelLoadError if there is none (or its family has none
    here: Qwen-Image and DC-AE decoders are not built, so their certificates carry no round trip)."""
    family, config, state = read_model(source, "decoder", offline)
    if family == "tiny" or family == "AutoencoderTiny":
        tensors = state if family == "tiny" else from_diffusers(state, "decoder")
        tiny, _ = build_tiny(tensors, "decoder")
        load_tiny(tiny, tensors, f"tiny decoder of {source.label}")
        return Decoder(tiny, None, name=source.label, device=device, dtype=dtype, signed_output=False)
    if family not in KL_CLASSES:
        raise ModelLoadError(f"decoders of {family} models are not built by this engine (no round trips)")
    body, post = build_kl_decoder(config, state, source.label)
    return Decoder(body, post, name=source.label, device=device, dtype=dtype)


def _cached(
    kind: str, spec: str, device: str, dtype: str, offline: bool | None, decoder: str | None = None
) -> nn.Module:
    source = resolve_source(spec, decoder)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    where = source.location + "::" + (source.subfolder or "") + "::" + (source.decoder or "")
    key = (kind, where, str(dev), dtype_name(dt))
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
    spec: str, device: str = "auto", dtype: str = "auto", offline: bool | None = None,
    decoder: str | None = None,
) -> Decoder:
    """The frozen decoder of the same sources (cached); only diagnostics and benchmarks use it.

    ``decoder``: a separate decoder weights file (a tiny autoencoder's ``*_decoder.pth``); without it a tiny
    encoder file's ``*_decoder.pth`` neighbour is used.
    """
    module = _cached("decoder", spec, device, dtype, offline, decoder)
    assert isinstance(module, Decoder)
    return module


def clear_cache() -> None:
    """Forget every cached module (tests, and servers that switch models)."""
    with _cache_lock:
        _cache.clear()
