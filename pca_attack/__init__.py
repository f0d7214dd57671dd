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
    "ProtectResult": "attack.pgd",
    "Protector": "attack.pgd",
    "DEFAULT_PRESET": "attack.config",
    "PRESETS": "attack.config",
    "REFERENCE_CONFIG": "attack.config",
    "AttackConfig": "attack.config",
    "LossPreset": "attack.config",
    "ConfigError": "errors",
    "DeviceUnavailableError": "errors",
    "ImageError": "errors",
    "ImageTooLargeError": "errors",
    "ImageTooSmallError": "errors",
    "ModelLoadError": "errors",
    "ModelNotFoundError": "errors",
    "PCAError": "errors",
    "UnsupportedImageError": "errors",
    "DecodedImage": "io.images",
    "decode_image": "io.images",
    "encode_image": "io.images",
    "kl_to_gaussian": "attack.losses",
    "pca_loss": "attack.losses",
    "Decoder": "models.encoder",
    "Encoder": "models.encoder",
    "clear_cache": "models.encoder",
    "load_decoder": "models.encoder",
    "load_encoder": "models.encoder",
    "Engine": "pipeline",
    "ProtectedImage": "pipeline",
    "REGISTRY": "models.registry",
    "Certificate": "certify.report",
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
    from .attack.config import DEFAULT_PRESET, PRESETS, REFERENCE_CONFIG, AttackConfig, LossPreset
    from .attack.losses import kl_to_gaussian, pca_loss
    from .attack.pgd import Protector, ProtectResult
    from .certify.report import Certificate
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
    from .io.images import DecodedImage, decode_image, encode_image
    from .models.encoder import Decoder, Encoder, clear_cache, load_decoder, load_encoder
    from .models.registry import REGISTRY
    from .pipeline import Engine, ProtectedImage
