"""pca-protect: the Posterior Collapse Attack as an image-protection engine.

Public API::

    from pca_attack import AttackConfig, Engine, Protector, load_encoder
    engine = Engine.from_spec("demo")                  # or "sd15", a folder, a .safetensors file
    out = engine.protect_bytes(open("photo.jpg", "rb").read(), AttackConfig())
    out.data, out.certificate                          # PNG bytes, measured certificate

Names are imported lazily (PEP 562) so that ``pca-protect --version`` and the CLI's help do not pay
for importing torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS: dict[str, str] = {
    "ProtectResult": "attack",
    "Protector": "attack",
    "DEFAULT_PRESET": "config",
    "PRESETS": "config",
    "REFERENCE_CONFIG": "config",
    "AttackConfig": "config",
    "LossPreset": "config",
    "ConfigError": "errors",
    "DeviceUnavailableError": "errors",
    "ImageError": "errors",
    "ImageTooLargeError": "errors",
    "ImageTooSmallError": "errors",
    "ModelLoadError": "errors",
    "ModelNotFoundError": "errors",
    "PCAError": "errors",
    "UnsupportedImageError": "errors",
    "DecodedImage": "imageio",
    "decode_image": "imageio",
    "encode_image": "imageio",
    "kl_to_gaussian": "losses",
    "pca_loss": "losses",
    "Decoder": "models",
    "Encoder": "models",
    "clear_cache": "models",
    "load_decoder": "models",
    "load_encoder": "models",
    "Engine": "pipeline",
    "ProtectedImage": "pipeline",
    "REGISTRY": "registry",
    "Certificate": "report",
}

__all__ = [
    "__version__",
    "AttackConfig",
    "Certificate",
    "ConfigError",
    "DEFAULT_PRESET",
    "DecodedImage",
    "Decoder",
    "DeviceUnavailableError",
    "Encoder",
    "Engine",
    "ImageError",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "LossPreset",
    "ModelLoadError",
    "ModelNotFoundError",
    "PCAError",
    "PRESETS",
    "ProtectResult",
    "ProtectedImage",
    "Protector",
    "REFERENCE_CONFIG",
    "REGISTRY",
    "UnsupportedImageError",
    "clear_cache",
    "decode_image",
    "encode_image",
    "kl_to_gaussian",
    "load_decoder",
    "load_encoder",
    "pca_loss",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pca_attack' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # static type checkers see the eager imports
    from .attack import Protector, ProtectResult
    from .config import DEFAULT_PRESET, PRESETS, REFERENCE_CONFIG, AttackConfig, LossPreset
    from .errors import (
        ConfigError,
        DeviceUnavailableError,
        ImageError,
        ImageTooLargeError,
        ImageTooSmallError,
        ModelLoadError,
        ModelNotFoundError,
        PCAError,
        UnsupportedImageError,
    )
    from .imageio import DecodedImage, decode_image, encode_image
    from .losses import kl_to_gaussian, pca_loss
    from .models import Decoder, Encoder, clear_cache, load_decoder, load_encoder
    from .pipeline import Engine, ProtectedImage
    from .registry import REGISTRY
    from .report import Certificate
