"""pca-protect: the Posterior Collapse Attack as an image-protection engine.

Public API::

    from pca_attack import AttackConfig, Engine, Protector, load_encoder
    engine = Engine.from_spec("demo")                  # or "sd15", a folder, a .safetensors file
    out = engine.protect_bytes(open("photo.jpg", "rb").read(), AttackConfig())
    out.data, out.certificate                          # PNG bytes, measured certificate
"""

from ._version import __version__
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

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "REFERENCE_CONFIG",
    "REGISTRY",
    "AttackConfig",
    "Certificate",
    "ConfigError",
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
    "ProtectResult",
    "ProtectedImage",
    "Protector",
    "UnsupportedImageError",
    "__version__",
    "clear_cache",
    "decode_image",
    "encode_image",
    "kl_to_gaussian",
    "load_decoder",
    "load_encoder",
    "pca_loss",
]
