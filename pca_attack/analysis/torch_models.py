"""The linear VAE / CVAE / HVAE as PyTorch modules (float64), for checking the closed forms by training.

Each model has ``population_loss(A, B, C)`` (the exact objective in terms of the second moments; the
NumPy twins in :mod:`pca_attack.analysis.population` equal it, value and gradient), a reparameterised
``minibatch_loss(x, y, gen)`` and ``summary(moments)`` (per-mode ``omega``, ``lam``, ``sigma``...).
Hyper-parameters come as the same :class:`Weights` / :class:`HWeights` the NumPy objectives take.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pca_attack.analysis.moments import FloatArray, InvalidParameterError, Moments
from pca_attack.analysis.population import HWeights, Weights

DT = torch.float64
INIT_SCALE = 0.5  # std of the random initial parameters


def _kl_gauss(mean_sq: Tensor, var: Tensor, prior_var: float) -> Tensor:
    """Per-dimension KL(N(m, var) || N(0, prior_var)) given E[m^2] (all tensors broadcast)."""
    return 0.5 * ((mean_sq + var) / prior_var - 1 - torch.log(var / prior_var))


class _Linear(nn.Module):
    """Random float64 parameters from a seeded generator (standard deviation ``INIT_SCALE``)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._gen = torch.Generator().manual_seed(seed)

    def _p(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(INIT_SCALE * torch.randn(*shape, generator=self._gen, dtype=DT))


class LinearVAEModel(_Linear):
    """q(z|x) = N(W^T x, diag(sigma^2)), p(y|z) = N(U z, eta_dec^2 I); ``sigma`` (scalar or (dz,)) fixes Sigma."""

    def __init__(self, dx: int, dy: int, dz: int, w: Weights = Weights(), *, sigma: Any = None, seed: int = 0):
        super().__init__(seed)
        self.beta, self.ee, self.ed = w.beta, w.eta_enc, w.eta_dec
        self.W, self.U = self._p(dx, dz), self._p(dy, dz)  # (dx, dz), (dy, dz)
        self.log_sigma = self._p(dz)
        if sigma is not None:
            s = torch.as_tensor(np.broadcast_to(np.asarray(sigma, dtype=np.float64), (dz,)).copy(), dtype=DT)
            self.log_sigma = nn.Parameter(torch.log(s), requires_grad=False)

    def population_loss(self, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        var = torch.exp(2 * self.log_sigma)
        UW = self.U @ self.W.T  # (dy, dx)
        recon = torch.trace(B) - 2 * torch.trace(UW @ C) + torch.trace(UW @ A @ UW.T) + (self.U**2 * var).sum()
        mean_sq = torch.diagonal(self.W.T @ A @ self.W)
        return recon / (2 * self.ed**2) + self.beta * _kl_gauss(mean_sq, var, self.ee**2).sum()

    def minibatch_loss(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        mu = x @ self.W  # (B, dz)
        sigma = torch.exp(self.log_sigma)
        z = mu + sigma * torch.randn(mu.shape, generator=gen, dtype=DT)
        recon = ((z @ self.U.T - y) ** 2).sum(dim=1).mean()
        kl = _kl_gauss(mu**2, sigma**2, self.ee**2).sum(dim=1).mean()
        return recon / (2 * self.ed**2) + self.beta * kl

    def summary(self, m: Moments) -> dict[str, FloatArray]:
        with torch.no_grad():
            A = torch.as_tensor(m.Sxx, dtype=DT)
            var = torch.exp(2 * self.log_sigma)
            if not self.log_sigma.requires_grad and bool(torch.all(var == var[0])):
                # Fixed isotropic Sigma: the latent basis is not identified, so use singular values.
                lam = torch.linalg.svdvals(_sqrt_psd(A) @ self.W)
                var = torch.sort(var).values
                return _per_dim(torch.linalg.svdvals(self.U), lam**2, var, _kl_gauss(lam**2, var, self.ee**2))
            lam2 = torch.diagonal(self.W.T @ A @ self.W)
            return _per_dim(self.U.norm(dim=0), lam2, var, _kl_gauss(lam2, var, self.ee**2))


class LinearCVAEModel(_Linear):
    """q(z|x,y) = N(W1 x + W2 y, diag(sigma^2)), p(y|z,x) = N(U1 z + U2 x, eta_dec^2 I)."""

    def __init__(self, dx: int, dy: int, dz: int, w: Weights = Weights(), *, seed: int = 0):
        super().__init__(seed)
        self.beta, self.ee, self.ed = w.beta, w.eta_enc, w.eta_dec
        self.W1, self.W2 = self._p(dz, dx), self._p(dz, dy)
        self.U1, self.U2 = self._p(dy, dz), self._p(dy, dx)
        self.log_sigma = self._p(dz)

    def population_loss(self, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        S = torch.cat([torch.cat([A, C], 1), torch.cat([C.T, B], 1)], 0)  # joint moment of (x, y)
        dy = B.shape[0]
        enc = torch.cat([self.W1, self.W2], 1)  # (dz, dx+dy)
        P = torch.cat([self.U2 + self.U1 @ self.W1, self.U1 @ self.W2 - torch.eye(dy, dtype=DT)], 1)
        var = torch.exp(2 * self.log_sigma)
        recon = torch.trace(P @ S @ P.T) + (self.U1**2 * var).sum()
        mean_sq = torch.diagonal(enc @ S @ enc.T)
        return recon / (2 * self.ed**2) + self.beta * _kl_gauss(mean_sq, var, self.ee**2).sum()

    def minibatch_loss(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        mu = x @ self.W1.T + y @ self.W2.T  # (B, dz)
        sigma = torch.exp(self.log_sigma)
        z = mu + sigma * torch.randn(mu.shape, generator=gen, dtype=DT)
        recon = ((z @ self.U1.T + x @ self.U2.T - y) ** 2).sum(dim=1).mean()
        kl = _kl_gauss(mu**2, sigma**2, self.ee**2).sum(dim=1).mean()
        return recon / (2 * self.ed**2) + self.beta * kl

    def summary(self, m: Moments) -> dict[str, FloatArray]:
        assert m.Syy is not None and m.Sxy is not None
        with torch.no_grad():
            S = torch.as_tensor(np.block([[m.Sxx, m.Sxy], [m.Sxy.T, m.Syy]]), dtype=DT)
            enc = torch.cat([self.W1, self.W2], 1)
            lam2 = torch.diagonal(enc @ S @ enc.T)
            var = torch.exp(2 * self.log_sigma)
            return _per_dim(self.U1.norm(dim=0), lam2, var, _kl_gauss(lam2, var, self.ee**2))


class LinearHVAEModel(_Linear):
    """Two-level linear HVAE with fixed sigma1 and learnable (or fixed) diagonal Sigma2."""

    def __init__(self, dx: int, dz: int, w: HWeights = HWeights(), *, seed: int = 0):
        super().__init__(seed)
        self.b1, self.b2, self.s1, self.ee, self.ed = w.beta1, w.beta2, w.sigma1, w.eta_enc, w.eta_dec
        self.W1, self.U1 = self._p(dz, dx), self._p(dx, dz)
        self.W2, self.U2 = self._p(dz, dz), self._p(dz, dz)
        self.log_sigma = self._p(dz)
        if w.sigma2 is not None:
            self.log_sigma = nn.Parameter(torch.full((dz,), math.log(w.sigma2), dtype=DT), requires_grad=False)

    def _kl1_const(self, d1: int) -> float:
        return -0.5 * d1 * (1 + math.log(self.s1**2 / self.ed**2))

    def population_loss(self, A: Tensor, B: Tensor | None = None, C: Tensor | None = None) -> Tensor:
        d1 = self.W1.shape[0]
        eye = torch.eye(d1, dtype=DT)
        var2 = torch.exp(2 * self.log_sigma)
        UW = self.U1 @ self.W1
        recon = torch.trace(A) - 2 * torch.trace(UW @ A) + torch.trace(UW @ A @ UW.T) + self.s1**2 * (self.U1**2).sum()
        P = self.W1 @ A @ self.W1.T + self.s1**2 * eye  # E[z1 z1^T]
        T = eye - self.U2 @ self.W2
        kl1 = (torch.trace(T @ P @ T.T) + (self.U2**2 * var2).sum()) / (2 * self.ed**2) + self._kl1_const(d1)
        kl2 = _kl_gauss(torch.diagonal(self.W2 @ P @ self.W2.T), var2, self.ee**2).sum()
        return recon / (2 * self.ed**2) + self.b1 * kl1 + self.b2 * kl2

    def minibatch_loss(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        d1 = self.W1.shape[0]
        z1 = x @ self.W1.T + self.s1 * torch.randn((x.shape[0], d1), generator=gen, dtype=DT)  # (B, d1)
        mu2 = z1 @ self.W2.T
        sigma2 = torch.exp(self.log_sigma)
        z2 = mu2 + sigma2 * torch.randn(mu2.shape, generator=gen, dtype=DT)
        recon = ((z1 @ self.U1.T - x) ** 2).sum(dim=1).mean()
        kl1 = ((z1 - z2 @ self.U2.T) ** 2).sum(dim=1).mean() / (2 * self.ed**2) + self._kl1_const(d1)
        kl2 = _kl_gauss(mu2**2, sigma2**2, self.ee**2).sum(dim=1).mean()
        return recon / (2 * self.ed**2) + self.b1 * kl1 + self.b2 * kl2

    def summary(self, m: Moments) -> dict[str, FloatArray]:
        with torch.no_grad():
            lam = torch.linalg.svdvals(self.W1 @ _sqrt_psd(torch.as_tensor(m.Sxx, dtype=DT)))
            return {
                "omega": np.sort(torch.linalg.svdvals(self.U2).numpy())[::-1].copy(),
                "lam": np.sort(lam.numpy())[::-1].copy(),
                "sigma": np.sort(torch.exp(self.log_sigma).numpy()).copy(),
            }


def _sqrt_psd(A: Tensor) -> Tensor:
    """Symmetric square root of a PSD matrix (negative round-off eigenvalues clamped to 0)."""
    evals, V = torch.linalg.eigh(A)
    return (V * evals.clamp_min(0).sqrt()) @ V.T


def _per_dim(omega: Tensor, lam2: Tensor, var: Tensor, kl: Tensor) -> dict[str, FloatArray]:
    """Per-latent-dimension values, dimensions ordered by KL (descending)."""
    order = torch.argsort(kl, descending=True)
    return {
        "omega": omega[order].numpy(),
        "lam": lam2.clamp_min(0).sqrt()[order].numpy(),
        "sigma": var.sqrt()[order].numpy(),
        "kl_per_dim": kl[order].numpy(),
    }


def split_params(kind: str, params: dict[str, Any]) -> tuple[Weights | HWeights, dict[str, Any]]:
    """The model's weights from the calculator-style keywords, and what is left (``sigma`` of the VAE)."""
    rest = dict(params)
    if kind == "hvae":
        return HWeights(**rest), {}
    if kind in ("vae", "cvae"):
        sigma = rest.pop("sigma", None)
        if sigma is not None and kind == "cvae":
            raise InvalidParameterError("the linear CVAE learns its encoder variance; drop sigma.")
        return Weights(**rest), ({"sigma": sigma} if kind == "vae" else {})
    raise InvalidParameterError(f"kind must be 'vae', 'cvae' or 'hvae', got {kind!r}.")


def build_model(kind: str, m: Moments, *, latent_dim: int, seed: int, **params: Any) -> nn.Module:
    """Create the PyTorch model for ``kind`` sized to the moments ``m`` (``params``: calculator keywords)."""
    w, extra = split_params(kind, params)
    if isinstance(w, HWeights):
        return LinearHVAEModel(m.dx, latent_dim, w, seed=seed)
    if kind == "vae":
        return LinearVAEModel(m.dx, m.dy, latent_dim, w, seed=seed, **extra)
    return LinearCVAEModel(m.dx, m.dy, latent_dim, w, seed=seed)
