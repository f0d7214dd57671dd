"""Closed-form optimum of the two-level linear hierarchical VAE (MHVAE, Dang et al. 2024).

Model (docs/theory.md): ``q(z1|x) = N(W1 x, sigma1^2 I)`` (fixed), ``q(z2|z1) = N(W2 z1,
Sigma2)``; ``p(x|z1) = N(U1 z1, eta_dec^2 I)``, ``p(z1|z2) = N(U2 z2, eta_dec^2 I)``, prior
``N(0, eta_enc^2 I)``.  Loss (per sample, constants of ``p(x|z1)`` dropped)::

    E||U1 z1 - x||^2/(2 eta_dec^2) + beta1 E[log q(z1|x) - log p(z1|z2)] + beta2 E KL(q(z2|z1) || p(z2))

with all expectations over ``x ~ data, z1 ~ q(z1|x), z2 ~ q(z2|z1)`` jointly (this is the objective
whose optimum the reference formulas give; its two KL terms add up to the KL of the joint posterior).
``Sigma2`` is learnable (``sigma2=None``) or fixed to ``sigma2^2 I``.  Per mode we report whether the
mean of z1 collapsed (``lam == 0``), whether z2 is unused (``omega == 0``), and whether z2's posterior
equals its prior; these are distinct events in an HVAE.
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
    check_latent_dim,
    check_positive,
    resolve_moments,
)
from pca_attack.analysis.numeric import numeric_guard


@dataclass
class LinearHVAEResult(ResultMixin):
    """Per-mode optimum of the two-level linear HVAE, modes sorted by ``theta`` (descending)."""

    theta: FloatArray  # (k,) sqrt(eig Sxx) paired with each latent slot (0 beyond dx)
    lam: FloatArray  # (k,) singular values of W1 Sxx^{1/2}: strength of z1's mean
    omega: FloatArray  # (k,) singular values of U2: how much p(z1|z2) uses z2
    sigma: FloatArray  # (k,) standard deviations of q(z2|z1) (optimal, or the fixed sigma2)
    kl1_per_dim: FloatArray  # (k,) E[log q(z1|x) - log p(z1|z2)] per dimension
    kl2_per_dim: FloatArray  # (k,) E KL(q(z2|z1) || p(z2)) per dimension
    kl_per_dim: FloatArray  # (k,) kl1 + kl2 = KL of the joint posterior to the joint prior, per mode
    collapsed: np.ndarray  # (k,) bool: z1's mean collapsed (same as mean_collapsed)
    mean_collapsed: np.ndarray  # (k,) bool: lam == 0, z1 carries no information about x in this mode
    z2_collapsed: np.ndarray  # (k,) bool: omega == 0, the decoder of z1 ignores z2 in this mode
    posterior_equals_prior: np.ndarray  # (k,) bool: q(z2|z1) = p(z2) (omega == 0 and sigma == eta_enc)
    status: list[str]  # (k,) 'collapsed' / 'active' / 'indeterminate' (theta within tol of a threshold)
    case: str  # 'I' / 'II' (learnable Sigma2) or 'fixed'
    loss: float  # objective at the optimum (constants of p(x|z1) dropped)
    params: dict[str, float] = field(default_factory=dict)


def _learnable_mode(
    t: float, s1: float, b1: float, b2: float, ed: float, ee: float
) -> tuple[float, float, list[float]]:
    """(lam, omega, thresholds on theta) for learnable Sigma2."""
    c = ed / ee
    lam_i = s1 / (math.sqrt(b2) * ed) * math.sqrt(max(0.0, t**2 - b2 * ed**2))
    om2 = s1**2 * t**2 / (b2 * ee**2 * ed**2) - (b2 / b1) * c**2
    if s1**2 >= (b2 / b1) * ed**2:  # Case I
        om2 = max((s1**2 - (b2 / b1) * ed**2) / ee**2, om2)
        return lam_i, math.sqrt(max(om2, 0.0)), [math.sqrt(b2) * ed]
    t_z2 = b2 * ed**2 / (math.sqrt(b1) * s1)  # Case II
    if t < t_z2:
        lam_i = math.sqrt(max(0.0, (s1 / math.sqrt(b1)) * (t - math.sqrt(b1) * s1)))
        return lam_i, 0.0, [t_z2, math.sqrt(b1) * s1]
    return lam_i, math.sqrt(max(om2, 0.0)), [t_z2, math.sqrt(b2) * ed, math.sqrt(b1) * s1]


def _fixed_mode(
    t: float, s1: float, s2: float, b1: float, b2: float, ed: float, ee: float
) -> tuple[float, float, list[float]]:
    """(lam, omega, thresholds on theta) for fixed sigma1 and sigma2."""
    c = ed / ee
    sb = math.sqrt(b1 * b2)
    t_a = math.sqrt(sb * c * s1 * s2)
    t_b = math.sqrt(b1) * b2 * c**2 * s2**2 / s1
    thresholds = [t_a, t_b, math.sqrt(b1) * s1]
    if t >= t_a and t >= t_b:
        lam_i = (s1**2 / (sb * c * s2)) ** (1 / 3) * math.sqrt(max(0.0, t ** (4 / 3) - (sb * c * s1 * s2) ** (2 / 3)))
        k = (b2**2 * c**4 * s2**4 / (b1 * s1**2)) ** (1 / 3)
        om_i = (math.sqrt(b2) * c * s1 / (b1 * s2**2)) ** (1 / 3) * math.sqrt(max(0.0, t ** (2 / 3) - k))
        return lam_i, om_i, thresholds
    if math.sqrt(b1) * s1 >= math.sqrt(b2) * c * s2:
        om2 = math.sqrt(b2) * c * s1 / (math.sqrt(b1) * s2) - (b2 / b1) * c**2
        return 0.0, math.sqrt(max(om2, 0.0)), thresholds
    if t < math.sqrt(b1) * s1:
        return 0.0, 0.0, thresholds
    return math.sqrt(s1 * (t / math.sqrt(b1) - s1)), 0.0, thresholds


def mode_objective(
    t: float, lam: float, omega: float, s2: float, s1: float, b1: float, b2: float, ed: float, ee: float
) -> tuple[float, float, float]:
    """(reconstruction, kl1, kl2) of one mode with U1 and W2 at their optimum given (lam, omega, s2)."""
    m = lam**2 + s1**2  # E z1^2 in this mode
    recon = t**2 * s1**2 / m / (2 * ed**2)  # U1 = lam t / m
    w2 = b1 * omega * ee**2 / (b1 * omega**2 * ee**2 + b2 * ed**2)
    kl1 = 0.5 * (((1 - omega * w2) ** 2 * m + omega**2 * s2**2) / ed**2 - 1 - math.log(s1**2 / ed**2))
    kl2 = 0.5 * ((s2**2 + w2**2 * m) / ee**2 - 1 - math.log(s2**2 / ee**2))
    return recon, kl1, kl2


def _mode_row(
    t: float, s1: float, s2_fixed: float | None, b1: float, b2: float, ed: float, ee: float, tol: float
) -> tuple[float, float, float, tuple[float, float, float], bool]:
    """(lam, omega, sigma2, objective parts, near a threshold) of the mode with ``theta = t``."""
    if s2_fixed is None:
        lam_i, om_i, thr = _learnable_mode(t, s1, b1, b2, ed, ee)
        s2 = ee * ed * math.sqrt(b2 / (b1 * ee**2 * om_i**2 + b2 * ed**2))
    else:
        lam_i, om_i, thr = _fixed_mode(t, s1, s2_fixed, b1, b2, ed, ee)
        s2 = s2_fixed
    near = any(th > 0 and abs(t / th - 1) <= tol for th in thr)
    return lam_i, om_i, s2, mode_objective(t, lam_i, om_i, s2, s1, b1, b2, ed, ee), near


@numeric_guard
def linear_hvae(
    X: ArrayLike | None = None,
    *,
    Sxx: ArrayLike | None = None,
    beta1: float = 1.0,
    beta2: float = 1.0,
    sigma1: float = 1.0,
    sigma2: float | None = None,
    eta_enc: float = 1.0,
    eta_dec: float = 1.0,
    latent_dim: int | None = None,
    center: bool = False,
    tol: float = DEFAULT_TOL,
) -> LinearHVAEResult:
    """Optimal two-level linear HVAE (``d1 = d2 = latent_dim``, default ``dx``) for data or ``Sxx``."""
    b1, b2 = check_positive("beta1", beta1), check_positive("beta2", beta2)
    s1 = check_positive("sigma1", sigma1)
    s2_fixed = None if sigma2 is None else check_positive("sigma2", sigma2)
    ee, ed = check_positive("eta_enc", eta_enc), check_positive("eta_dec", eta_dec)
    m = resolve_moments(X=X, Sxx=Sxx, center=center, allow_y=False)
    k = check_latent_dim(latent_dim, m.dx)
    theta_all = np.sqrt(np.clip(np.linalg.eigvalsh(m.Sxx)[::-1], 0.0, None))
    theta = np.zeros(k)
    theta[: min(k, theta_all.size)] = theta_all[:k]
    rows = [_mode_row(t, s1, s2_fixed, b1, b2, ed, ee, tol) for t in theta]
    lam = np.array([r[0] for r in rows])
    omega = np.array([r[1] for r in rows])
    sig = np.array([r[2] for r in rows])
    parts = np.array([r[3] for r in rows]).reshape(k, 3)
    mean_collapsed = lam <= 0.0
    z2_collapsed = omega <= 0.0
    status = [
        "indeterminate" if r[4] else ("collapsed" if mc else "active")
        for r, mc in zip(rows, mean_collapsed, strict=True)
    ]
    unrepresented = float(np.sum(theta_all**2) - np.sum(theta**2)) / (2 * ed**2)
    case = "fixed" if s2_fixed is not None else ("I" if s1**2 >= (b2 / b1) * ed**2 else "II")
    return LinearHVAEResult(
        theta=theta,
        lam=lam,
        omega=omega,
        sigma=sig,
        kl1_per_dim=parts[:, 1],
        kl2_per_dim=parts[:, 2],
        kl_per_dim=parts[:, 1] + parts[:, 2],
        collapsed=mean_collapsed.copy(),
        mean_collapsed=mean_collapsed,
        z2_collapsed=z2_collapsed,
        posterior_equals_prior=z2_collapsed & np.isclose(sig, ee, rtol=1e-9, atol=0.0),
        status=status,
        case=case,
        loss=float(max(unrepresented, 0.0) + np.sum(parts[:, 0] + b1 * parts[:, 1] + b2 * parts[:, 2])),
        params={"beta1": b1, "beta2": b2, "sigma1": s1, "eta_enc": ee, "eta_dec": ed, "tol": tol}
        | ({} if s2_fixed is None else {"sigma2": s2_fixed}),
    )
