"""Closed-form optimum of the linear conditional VAE: collapse driven by the x-y correlation.

Model (docs/theory.md, Dang et al. 2024): encoder ``q(z|x,y) = N(W1 x + W2 y, Sigma)``
(diagonal, learnable), decoder ``p(y|z,x) = N(U1 z + U2 x, eta_dec^2 I)``, prior ``N(0, eta_enc^2 I)``.
Everything is governed by the residual covariance of y after linear regression on x,
``E = Syy - Sxy^T Sxx^{-1} Sxy`` with eigenvalues ``kappa`` (descending): a mode is active iff
``kappa_i > beta eta_dec^2``.  Strongly correlated x and y leave a small ``E``, hence more collapse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from pca_attack.analysis.moments import (
    DEFAULT_TOL,
    FloatArray,
    ResultMixin,
    band_status,
    check_latent_dim,
    check_nonsingular,
    check_positive,
    resolve_moments,
)
from pca_attack.analysis.numeric import numeric_guard


@dataclass
class LinearCVAEResult(ResultMixin):
    """Per-latent-mode optimum of the linear CVAE, modes sorted by ``kappa`` (descending)."""

    kappa: FloatArray  # (k,) eigenvalues of the residual covariance E paired with each latent slot
    omega: FloatArray  # (k,) singular values of U1
    lam: FloatArray  # (k,) sqrt(eig E[mu mu^T])
    sigma: FloatArray  # (k,) encoder posterior standard deviations
    kl_per_dim: FloatArray  # (k,) KL(q || prior) per latent dimension (without beta)
    collapsed: np.ndarray  # (k,) bool: kappa_i <= beta eta_dec^2 (posterior = prior)
    status: list[str]  # (k,) 'collapsed' / 'active' / 'indeterminate'
    threshold: float  # beta * eta_dec^2, compared against kappa
    loss: float  # negative beta-ELBO per sample at the optimum (without nll_constant)
    nll_constant: float  # d_y/2 log(2 pi eta_dec^2)
    n_active: int  # number of active modes
    U2: FloatArray  # (dy, dx) optimal decoder skip weights Sxy^T Sxx^{-1}
    E: FloatArray  # (dy, dy) residual covariance Syy - Sxy^T Sxx^{-1} Sxy
    params: dict[str, float] = field(default_factory=dict)


def residual_covariance(Sxx: FloatArray, Syy: FloatArray, Sxy: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Return ``(E, U2)``: residual covariance of y given x and the regression weights ``Sxy^T Sxx^{-1}``."""
    check_nonsingular("Sxx", Sxx)
    U2 = np.asarray(np.linalg.solve(Sxx, Sxy).T, dtype=np.float64)  # (dy, dx)
    E = Syy - U2 @ Sxy
    return 0.5 * (E + E.T), U2


@numeric_guard
def linear_cvae(
    X: ArrayLike | None = None,
    Y: ArrayLike | None = None,
    *,
    Sxx: ArrayLike | None = None,
    Syy: ArrayLike | None = None,
    Sxy: ArrayLike | None = None,
    beta: float = 1.0,
    eta_enc: float = 1.0,
    eta_dec: float = 1.0,
    latent_dim: int | None = None,
    center: bool = False,
    tol: float = DEFAULT_TOL,
) -> LinearCVAEResult:
    """Optimal linear CVAE for conditioning inputs ``X`` (N, dx) and targets ``Y`` (N, dy), or moments.

    ``latent_dim`` defaults to ``dy``.  Returns a :class:`LinearCVAEResult`.
    """
    beta = check_positive("beta", beta)
    ee = check_positive("eta_enc", eta_enc)
    ed = check_positive("eta_dec", eta_dec)
    m = resolve_moments(X=X, Y=Y, Sxx=Sxx, Syy=Syy, Sxy=Sxy, center=center, need_y=True)
    assert m.Syy is not None and m.Sxy is not None
    E, U2 = residual_covariance(m.Sxx, m.Syy, m.Sxy)
    k = check_latent_dim(latent_dim, m.dy)
    kappa_all = np.clip(np.linalg.eigvalsh(E)[::-1], 0.0, None)
    kappa = np.zeros(k)
    kappa[: min(k, kappa_all.size)] = kappa_all[:k]
    thr = beta * ed**2
    active = kappa > thr
    safe = np.where(active, kappa, 1.0)
    omega = np.sqrt(np.maximum(kappa - thr, 0.0)) / ee
    lam = np.where(active, ee * np.sqrt(np.maximum(1 - thr / safe, 0.0)), 0.0)
    sigma = np.where(active, ee * math.sqrt(thr) / np.sqrt(safe), ee)
    kl = np.where(active, 0.5 * np.log(safe / thr), 0.0)
    mode_loss = np.where(active, 0.5 * beta * (1 + 2 * kl), kappa / (2 * ed**2))
    unexplained = max(float(np.trace(E)) - float(kappa.sum()), 0.0) / (2 * ed**2)
    return LinearCVAEResult(
        kappa=kappa,
        omega=omega,
        lam=lam,
        sigma=sigma,
        kl_per_dim=kl,
        collapsed=~active,
        status=band_status(kappa / thr, tol),
        threshold=thr,
        loss=float(unexplained + mode_loss.sum()),
        nll_constant=0.5 * m.dy * math.log(2 * math.pi * ed**2),
        n_active=int(active.sum()),
        U2=U2,
        E=E,
        params={"beta": beta, "eta_enc": ee, "eta_dec": ed, "tol": tol},
    )
