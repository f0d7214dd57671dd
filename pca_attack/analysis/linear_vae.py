"""Closed-form optimum of the linear (beta-)VAE: which latent modes collapse, and how strongly.

Model (docs/theory.md, Wang & Ziyin 2022): encoder ``q(z|x) = N(W^T x, Sigma)`` with
diagonal ``Sigma``, decoder ``p(y|z) = N(U z, eta_dec^2 I)``, prior ``N(0, eta_enc^2 I)``; the loss is
the negative beta-ELBO per sample ``E||U z - y||^2 / (2 eta_dec^2) + beta KL`` (without the constant
Gaussian normaliser, reported separately as ``nll_constant``).  Plain VAEs have ``y = x``; pPCA is
``beta = 1, eta_enc = 1``.  With ``sigma`` given, the encoder variance is fixed instead of learned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from pca_attack.analysis.moments import (
    DEFAULT_TOL,
    FloatArray,
    InvalidParameterError,
    ResultMixin,
    band_status,
    check_latent_dim,
    check_nonsingular,
    check_positive,
    resolve_moments,
    sym_inv_sqrt,
)
from pca_attack.analysis.numeric import numeric_guard


@dataclass
class LinearVAEResult(ResultMixin):
    """Per-latent-mode optimum, modes sorted by ``zeta`` (descending)."""

    zeta: FloatArray  # (k,) singular values of Z = E[y x~^T] paired with each latent slot (0 if none)
    omega: FloatArray  # (k,) singular values of the decoder U
    lam: FloatArray  # (k,) singular values of V = A^{1/2} W, i.e. sqrt(eig E[mu mu^T])
    sigma: FloatArray  # (k,) encoder posterior standard deviations
    kl_per_dim: FloatArray  # (k,) KL(q || prior) per latent dimension (without beta)
    collapsed: np.ndarray  # (k,) bool: the mode carries no information (mean collapsed)
    mean_collapsed: np.ndarray  # (k,) bool: encoder mean is zero in this mode
    posterior_equals_prior: np.ndarray  # (k,) bool: mean zero and sigma == eta_enc
    status: list[str]  # (k,) 'collapsed' / 'active' / 'indeterminate' (within tol of threshold)
    threshold: FloatArray  # (k,) a mode is active iff zeta > threshold
    loss: float  # negative beta-ELBO per sample at the optimum (without nll_constant)
    nll_constant: float  # d_y/2 log(2 pi eta_dec^2), add to loss for the full negative ELBO
    n_active: int  # modes whose mean is not collapsed
    complete_collapse: bool  # every mode collapsed (the origin is the global minimum)
    learnable_sigma: bool  # True: Sigma optimised; False: fixed sigma given by the caller
    params: dict[str, float] = field(default_factory=dict)  # beta, eta_enc, eta_dec, ...


def whitened_singular_values(Sxx: FloatArray, Syy: FloatArray | None, Sxy: FloatArray | None) -> FloatArray:
    """Singular values ``zeta`` of ``Z = E[y x~^T]`` with ``x~ = Sxx^{-1/2} x`` (descending).

    For ``y = x`` (``Syy``/``Sxy`` None) these are ``sqrt(eig(Sxx))`` and ``Sxx`` may be singular.
    """
    if Syy is None or Sxy is None:
        eig = np.clip(np.linalg.eigvalsh(Sxx)[::-1], 0.0, None)
        return np.asarray(np.sqrt(eig), dtype=np.float64)
    check_nonsingular("Sxx", Sxx)
    Z = Sxy.T @ sym_inv_sqrt(Sxx)  # (dy, dx)
    return np.asarray(np.linalg.svd(Z, compute_uv=False), dtype=np.float64)


def _slots(values: FloatArray, k: int) -> FloatArray:
    """First ``k`` values padded with zeros (latent slots beyond the rank carry nothing)."""
    out = np.zeros(k)
    m = min(k, values.size)
    out[:m] = values[:m]
    return out


def _fixed_sigmas(sigma: float | ArrayLike, k: int) -> FloatArray:
    s = np.asarray(sigma, dtype=np.float64)
    s = np.full(k, float(s)) if s.ndim == 0 else s
    if s.shape != (k,):
        raise InvalidParameterError(
            f"sigma must be a scalar or have one entry per latent slot ({k}), got shape {s.shape}."
        )
    for v in s:
        check_positive("sigma", float(v))
    return np.sort(s)  # smallest sigma paired with the largest zeta


@numeric_guard
def linear_vae(
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
    sigma: float | ArrayLike | None = None,
    center: bool = False,
    tol: float = DEFAULT_TOL,
) -> LinearVAEResult:
    """Optimal linear VAE for data ``X`` (and targets ``Y``, default ``Y = X``) or its moments.

    ``sigma=None`` learns the diagonal encoder variance; a scalar or per-slot array fixes it.
    ``latent_dim`` defaults to ``dx``.  Returns a :class:`LinearVAEResult`.
    """
    beta = check_positive("beta", beta)
    eta_enc = check_positive("eta_enc", eta_enc)
    eta_dec = check_positive("eta_dec", eta_dec)
    m = resolve_moments(X=X, Y=Y, Sxx=Sxx, Syy=Syy, Sxy=Sxy, center=center)
    k = check_latent_dim(latent_dim, m.dx)
    zeta_all = whitened_singular_values(m.Sxx, m.Syy, m.Sxy)
    zeta = _slots(zeta_all, k)
    trace_b = float(np.trace(m.Syy)) if m.Syy is not None else float(np.trace(m.Sxx))
    # Part of E||y||^2 no latent slot can explain (beyond rank, beyond k, or not linear in x).
    unexplained = max(trace_b - float(np.sum(zeta**2)), 0.0) / (2 * eta_dec**2)
    params = {"beta": beta, "eta_enc": eta_enc, "eta_dec": eta_dec, "tol": tol}
    nll_constant = 0.5 * m.dy * math.log(2 * math.pi * eta_dec**2)
    common = _Common(beta, eta_enc, eta_dec, tol, unexplained, nll_constant, params)
    return _learnable(zeta, common) if sigma is None else _fixed(zeta, _fixed_sigmas(sigma, k), common)


class _Common(NamedTuple):
    """What both regimes (learnable / fixed encoder variance) need besides zeta."""

    beta: float
    ee: float  # eta_enc
    ed: float  # eta_dec
    tol: float
    unexplained: float  # loss of the part of E||y||^2 no slot explains
    const: float  # nll_constant
    params: dict[str, float]


def _learnable(zeta: FloatArray, c: _Common) -> LinearVAEResult:
    beta, ee, ed = c.beta, c.ee, c.ed
    thr2 = beta * ed**2
    gap = np.maximum(zeta**2 - thr2, 0.0)
    active = zeta**2 > thr2
    safe_zeta = np.where(active, zeta, 1.0)
    omega = np.sqrt(gap) / ee
    lam = np.where(active, ee * np.sqrt(gap) / safe_zeta, 0.0)
    sigma = np.where(active, math.sqrt(beta) * ed * ee / safe_zeta, ee)
    kl = np.where(active, 0.5 * np.log(np.where(active, zeta**2 / thr2, 1.0)), 0.0)
    mode_loss = np.where(active, 0.5 * beta * (1 + 2 * kl), zeta**2 / (2 * ed**2))
    modes = {"zeta": zeta, "omega": omega, "lam": lam, "sigma": sigma, "kl_per_dim": kl}
    threshold = np.full(zeta.size, math.sqrt(thr2))
    return _result(c, modes, ~active, ~active, zeta**2 / thr2, threshold, float(mode_loss.sum()), learnable=True)


def _fixed(zeta: FloatArray, sigma: FloatArray, c: _Common) -> LinearVAEResult:
    beta, ee, ed = c.beta, c.ee, c.ed
    sbc = math.sqrt(beta) * ed / ee  # sqrt(beta) * c
    thr = sbc * sigma
    gap = np.maximum(zeta - thr, 0.0)
    omega = np.sqrt(sbc * gap / sigma)
    lam = np.sqrt(sigma * gap / sbc)
    kl = 0.5 * ((lam**2 + sigma**2) / ee**2 - 1 - np.log(sigma**2 / ee**2))
    recon = ((omega * lam - zeta) ** 2 + omega**2 * sigma**2) / (2 * ed**2)
    mean_collapsed = ~(zeta > thr)
    equals_prior = mean_collapsed & np.isclose(sigma, ee, rtol=1e-9, atol=0.0)
    modes = {"zeta": zeta, "omega": omega, "lam": lam, "sigma": sigma, "kl_per_dim": kl}
    loss = float(np.sum(recon + beta * kl))
    return _result(c, modes, mean_collapsed, equals_prior, zeta / thr, thr, loss, learnable=False)


def _result(
    c: _Common,
    modes: dict[str, FloatArray],
    mean_collapsed: np.ndarray,
    equals_prior: np.ndarray,
    ratio: FloatArray,
    threshold: FloatArray,
    mode_loss: float,
    *,
    learnable: bool,
) -> LinearVAEResult:
    """Assemble the result of either regime (``ratio`` = signal / threshold, per mode)."""
    return LinearVAEResult(
        **modes,
        collapsed=mean_collapsed,
        mean_collapsed=mean_collapsed.copy(),
        posterior_equals_prior=equals_prior.copy(),
        status=band_status(ratio, c.tol),
        threshold=threshold,
        loss=c.unexplained + mode_loss,
        nll_constant=c.const,
        n_active=int((~mean_collapsed).sum()),
        complete_collapse=bool(mean_collapsed.all()),
        learnable_sigma=learnable,
        params=c.params,
    )
