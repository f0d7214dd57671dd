"""The unified posterior-collapse loss and KL helpers, always evaluated in fp32.

For a diagonal Gaussian posterior q(z|x) = N(mu, sigma^2) and a target variance v (scalar or per element):

    L_PCA(x) = 1/2 * sum_i ( -ln sigma_i^2 - 1 + (mu_i^2 + sigma_i^2) / v_i )
             = KL( N(mu, sigma^2) || N(0, v) ) - 1/2 * sum_i ln v_i

summed over the latent elements of each image. ``1/v = 1e8`` overflows fp16, hence the fp32 cast.
"""

from __future__ import annotations

import torch


def pca_loss(mean: torch.Tensor, logvar: torch.Tensor, target_variance: float | torch.Tensor) -> torch.Tensor:
    """Reference PCA loss per image.

    mean, logvar: (B, C, h, w) posterior parameters (any dtype; computed in fp32).
    target_variance: scalar v, or a tensor broadcastable to mean (the adaptive preset).
    Returns (B,) fp32: the loss summed over latent elements, one value per image.
    """
    mean32 = mean.float()  # (B, C, h, w)
    logvar32 = logvar.float()  # (B, C, h, w)
    v = torch.as_tensor(target_variance, dtype=torch.float32, device=mean32.device)
    per_element = -logvar32 - 1.0 + (mean32.pow(2) + logvar32.exp()) / v  # (B, C, h, w)
    return 0.5 * per_element.flatten(1).sum(dim=1)  # (B,)


def kl_to_gaussian(
    mean: torch.Tensor, logvar: torch.Tensor, target_variance: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """KL( N(mean, exp(logvar)) || N(0, v) ) per latent element, fp32, same shape as mean."""
    mean32 = mean.float()
    logvar32 = logvar.float()
    v = torch.as_tensor(target_variance, dtype=torch.float32, device=mean32.device)
    return 0.5 * ((mean32.pow(2) + logvar32.exp()) / v - 1.0 - logvar32 + torch.log(v))


def mean_kl_per_element(
    mean: torch.Tensor, logvar: torch.Tensor, target_variance: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """KL to N(0, v) averaged over the latent elements of each image: (B,) fp32."""
    return kl_to_gaussian(mean, logvar, target_variance).flatten(1).mean(dim=1)


def objective_sign(direction: str) -> float:
    """+1 when PGD descends the loss (minimise), -1 when it ascends (maximise)."""
    if direction == "minimize":
        return 1.0
    if direction == "maximize":
        return -1.0
    raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
