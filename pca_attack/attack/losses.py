"""The unified posterior-collapse loss and KL helpers, always evaluated in fp32.

For a diagonal Gaussian posterior q(z|x) = N(mu, sigma^2) and a target variance v (scalar or per element):

    L_PCA(x) = 1/2 * sum_i ( -ln sigma_i^2 - 1 + (mu_i^2 + sigma_i^2) / v_i )
             = KL( N(mu, sigma^2) || N(0, v) ) - 1/2 * sum_i ln v_i

summed over the latent elements of each image. ``1/v = 1e8`` overflows fp16, hence the fp32 cast.

Deterministic encoders (``logvar is None``: the tiny autoencoders, Sana's DC-AE) have no variance, so only
the mean term of that KL remains:

    L_det(x) = 1/2 * sum_i mu_i^2 / v = d / (2 v) * E(x),   E(x) = mean_i mu_i^2  (the "mean energy")

over the d latent elements of each image: the KL of N(mu, s^2 I) to N(0, v I) minus every term that does
not depend on mu. Presets whose point is the variance (``adaptive``, ``pca-var``) are refused for such
encoders (``check_preset``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from pca_attack.errors import ConfigError

if TYPE_CHECKING:
    from pca_attack.models.encoder import Encoder

PRESETS_NEEDING_VARIANCE = ("adaptive", "pca-var")


class _HasPosteriorType(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def posterior_type(self) -> str: ...


def check_preset(encoder: _HasPosteriorType, preset: str) -> None:
    """Raise ConfigError when ``preset`` needs a posterior variance that ``encoder`` does not have."""
    if encoder.posterior_type == "deterministic" and preset in PRESETS_NEEDING_VARIANCE:
        raise ConfigError(
            f"preset {preset!r} acts on the posterior variance, but {encoder.name} is a deterministic encoder "
            "(no variance: it returns the latent itself). Use preset 'pca-' (the default: drives the latent "
            "toward 0) or 'pca+' with this model."
        )


def mean_energy(mean: torch.Tensor) -> torch.Tensor:
    """E = mean of mu^2 over the latent elements of each image: (B,) fp32."""
    return mean.float().pow(2).flatten(1).mean(dim=1)


def posterior_variance(logvar: torch.Tensor | None) -> torch.Tensor:
    """sigma^2 (fp32, detached) of a Gaussian posterior; ConfigError for a deterministic encoder."""
    if logvar is None:
        raise ConfigError("this encoder is deterministic: it has no posterior variance to use as a target")
    return logvar.float().exp().detach()


def pca_loss(
    mean: torch.Tensor, logvar: torch.Tensor | None, target_variance: float | torch.Tensor
) -> torch.Tensor:
    """Reference PCA loss per image (its mean term only for a deterministic encoder, logvar None).

    mean, logvar: (B, C, h, w) posterior parameters (any dtype; computed in fp32).
    target_variance: scalar v, or a tensor broadcastable to mean (the adaptive preset).
    Returns (B,) fp32: the loss summed over latent elements, one value per image.
    """
    mean32 = mean.float()  # (B, C, h, w)
    v = torch.as_tensor(target_variance, dtype=torch.float32, device=mean32.device)
    if logvar is None:
        return 0.5 * (mean32.pow(2) / v).flatten(1).sum(dim=1)  # (B,)
    logvar32 = logvar.float()  # (B, C, h, w)
    per_element = -logvar32 - 1.0 + (mean32.pow(2) + logvar32.exp()) / v  # (B, C, h, w)
    return 0.5 * per_element.flatten(1).sum(dim=1)  # (B,)


def kl_to_gaussian(
    mean: torch.Tensor, logvar: torch.Tensor | None, target_variance: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """KL( N(mean, exp(logvar)) || N(0, v) ) per latent element, fp32, same shape as mean.

    For a deterministic encoder (logvar None): the mean term mu^2 / (2 v) only.
    """
    mean32 = mean.float()
    v = torch.as_tensor(target_variance, dtype=torch.float32, device=mean32.device)
    if logvar is None:
        return 0.5 * mean32.pow(2) / v
    logvar32 = logvar.float()
    return 0.5 * ((mean32.pow(2) + logvar32.exp()) / v - 1.0 - logvar32 + torch.log(v))


def mean_kl_per_element(
    mean: torch.Tensor, logvar: torch.Tensor | None, target_variance: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """KL to N(0, v) averaged over the latent elements of each image: (B,) fp32."""
    return kl_to_gaussian(mean, logvar, target_variance).flatten(1).mean(dim=1)


def half_safe_scale(encoder_dtype: torch.dtype, target_variance: float | torch.Tensor) -> float:
    """Positive factor for the backward pass of an fp16 encoder (1.0 for fp32/bf16).

    The loss's gradient with respect to the posterior is about ``mean / v``: with v = 1e-8 (the pca- preset)
    it overflows fp16 (max 65504) inside the encoder's backward, and the input gradient turns NaN. Scaling the
    objective by v (at most 1) keeps the backward in range; the caller divides the fp32 input gradient by the
    same factor. bf16 has fp32's exponent range and fp32 needs nothing, so their results are untouched.
    """
    if encoder_dtype != torch.float16:
        return 1.0
    smallest = float(target_variance.min()) if isinstance(target_variance, torch.Tensor) else float(target_variance)
    return min(1.0, max(smallest, 1e-30))


def objective_sign(direction: str) -> float:
    """+1 when PGD descends the loss (minimise), -1 when it ascends (maximise)."""
    if direction == "minimize":
        return 1.0
    if direction == "maximize":
        return -1.0
    raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")


# -- a centred latent for deterministic encoders ------------------------------------------------------------


class _SubtractCentre(nn.Module):
    """latent (B, C, h, w) -> latent - centre, centre (1, C, 1, 1) (a buffer: moves with the encoder)."""

    centre: torch.Tensor

    def __init__(self, centre: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centre", centre)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return latent - self.centre.to(latent.dtype)


@torch.no_grad()
def gray_centre(encoder: Encoder, side: int = 64) -> torch.Tensor:
    """The encoder's latent of a flat mid-gray image, averaged per channel: (1, C, 1, 1) fp32.

    For TAEF2 it is far from 0 (its mean energy is 0.20, a photo's about 0.5-0.7), and both it and the zero
    latent decode to a nearly flat gray image."""
    side = -(-side // encoder.downsample_factor) * encoder.downsample_factor
    mean, _ = encoder.posterior(torch.full((1, 3, side, side), 0.5, device=encoder.device))  # (1, C, h, w)
    return mean.float().mean(dim=(2, 3), keepdim=True)


@torch.no_grad()
def gray_interior_centre(encoder: Encoder, latent_side: int = 40) -> torch.Tensor:
    """The latent of a flat mid-gray image *away from its borders*: (1, C, 1, 1) fp32, the centre latent pixel
    of a ``latent_side`` x ``latent_side``-latent gray image.

    A flat image's latent is uniform in the interior, but the encoder's zero padding reaches about 16 latent
    pixels in from each border on TAEF2, so ``gray_centre``'s 64-px average (8x8 latents, all border) is 51%
    away from it (mean energy 0.18 vs 0.37); this is the target a PhotoGuard-style attack pulls a large photo's
    interior toward."""
    side = latent_side * encoder.downsample_factor
    mean, _ = encoder.posterior(torch.full((1, 3, side, side), 0.5, device=encoder.device))  # (1, C, h, w)
    h, w = mean.shape[-2:]
    return mean[:, :, h // 2 : h // 2 + 1, w // 2 : w // 2 + 1].float().clone()


def centred_encoder(encoder: Encoder, centre: torch.Tensor) -> Encoder:
    """The same deterministic encoder returning ``latent - centre``: the collapse loss (mean energy) then pulls
    the latent toward ``centre`` (e.g. ``gray_centre``) instead of toward 0. Shares the body's weights."""
    from pca_attack.models.encoder import Encoder

    if not encoder.deterministic:
        raise ConfigError(f"{encoder.name} has a Gaussian posterior: a latent centre applies to deterministic "
                          "encoders only (the KL's prior is N(0, v I) there)")
    return Encoder(
        nn.Sequential(encoder.encoder, _SubtractCentre(centre.detach().to(encoder.device))), None,
        name=f"{encoder.name}-centred", config=encoder.config, device=encoder.device, dtype=encoder.dtype,
        posterior_type=encoder.posterior_type, signed_input=encoder.signed_input,
        latent_channels=encoder.latent_channels, downsample_factor=encoder.downsample_factor, family=encoder.family,
    )
