"""Typed errors of the engine: each says what was wrong and what to do about it.

The service maps these to HTTP status codes (see ``service/errors.py``); the CLI prints their message.
"""

from __future__ import annotations


class PCAError(Exception):
    """Base class of every error the engine raises on purpose."""


class ModelNotFoundError(PCAError):
    """The requested VAE is neither a registry name, a local folder nor a weights file that exists."""


class ModelLoadError(PCAError):
    """The model files exist but could not be turned into an encoder (bad config, bad weights)."""


class DeviceUnavailableError(PCAError):
    """A device was asked for explicitly (``cuda``, ``mps``) and this machine does not have it."""


class ImageError(PCAError):
    """Base class of input-image problems (the service answers 4xx for these)."""


class UnsupportedImageError(ImageError):
    """The bytes are not an image format we can read, or a mode we cannot protect faithfully."""


class ImageTooLargeError(ImageError):
    """The image has more pixels (or bytes) than the configured limit."""


class ImageTooSmallError(ImageError):
    """The image is smaller than the minimum side the encoder can meaningfully handle."""


class ConfigError(PCAError, ValueError):
    """An attack parameter is out of range or inconsistent."""
