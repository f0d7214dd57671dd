"""Closed-form geometry of the imbalanced, bias-free MSE deep linear unconstrained-features model.

For class sizes ``n_k``, depth ``M`` and weight decays, each class either keeps a positive optimum
``x_k`` (its classifier row and class-mean norms follow) or suffers *minority collapse* (``x_k = 0``).
:func:`gram_deviation` measures how far trained class means are from the predicted Gram diagonal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq

from pca_attack.analysis.moments import (
    DEFAULT_TOL,
    FloatArray,
    InvalidParameterError,
    ResultMixin,
    ShapeMismatchError,
    as_matrix,
    check_positive,
)


@dataclass
class DeepLinearGeometry(ResultMixin):
    """Closed-form optimum of the imbalanced bias-free MSE deep linear UFM, per class."""

    n_k: FloatArray  # (K,) class sizes
    x: FloatArray  # (K,) optimal x_k (0 means minority collapse)
    root: FloatArray  # (K,) best positive stationary point of f_k (nan if none exists)
    f_at_zero: FloatArray  # (K,) f_k(0) = n_k / (2N)
    f_at_root: FloatArray  # (K,) f_k(root) (nan if no root)
    p2: FloatArray  # (K,) p_k^2 = ||w_k||^2 (w_k: row k of W_M...W_1)
    w_norm2: FloatArray  # (K,) ||w_k||^2
    h_norm2: FloatArray  # (K,) ||hbar_k||^2 (class-mean feature norms)
    logit: FloatArray  # (K,) w_k . hbar_k  (W hbar_k = logit_k e_k)
    collapsed: np.ndarray  # (K,) bool: minority collapse (x_k = 0)
    status: list[str]  # (K,) 'collapsed' / 'active' / 'indeterminate' (f(0) within tol of f(root))
    loss: float  # sum_k f_k(x_k): the objective at the global optimum
    gram_diag: FloatArray  # (K,) predicted diagonal of the uncentred class-mean Gram
    params: dict[str, float] = field(default_factory=dict)


def _positive_roots(M: int, a: float) -> list[float]:
    """Positive roots of ``a = M x^{M-1} / (x^M + 1)^2`` (a = b / n_k)."""
    g = lambda x: M * x ** (M - 1) / (x**M + 1) ** 2 - a  # noqa: E731
    if M == 1:
        r = 1 / math.sqrt(a) - 1
        return [r] if r > 0 else []
    x_peak = ((M - 1) / (M + 1)) ** (1 / M)  # maximiser of M x^{M-1}/(x^M+1)^2
    if g(x_peak) <= 0:
        return [x_peak] if g(x_peak) == 0 else []
    hi = x_peak * 2 + 1
    while g(hi) > 0:
        hi *= 2
    return [brentq(g, 1e-300, x_peak, xtol=1e-15), brentq(g, x_peak, hi, xtol=1e-15)]


def _layer_decays(lambda_W: float | Sequence[float], M: int) -> FloatArray:
    """(M,) weight decay per layer from one value or ``M`` values, each finite and > 0."""
    lw = np.atleast_1d(np.asarray(lambda_W, dtype=np.float64))
    lw = np.full(M, float(lw[0])) if lw.size == 1 else lw
    if lw.size != M:
        raise InvalidParameterError(f"lambda_W must be one value or {M} values (one per layer), got {lw.size}.")
    for v in lw:
        check_positive("lambda_W", float(v))
    return lw


def deep_linear_mse_geometry(
    n_k: Sequence[float] | ArrayLike,
    *,
    lambda_W: float | Sequence[float] = 5e-3,
    lambda_H: float = 5e-3,
    depth: int = 1,
    d: int | None = None,
    tol: float = DEFAULT_TOL,
) -> DeepLinearGeometry:
    """Optimal per-class geometry for class sizes ``n_k``, ``depth`` layers and weight decays.

    ``lambda_W`` is one value for every layer or a sequence of ``depth`` values.  For ``depth >= 2``
    the collapse transition is discontinuous, so ``f_k(0)`` is always compared against the root.
    """
    n = np.asarray(n_k, dtype=np.float64).reshape(-1)
    if n.size < 1 or np.any(~np.isfinite(n)) or np.any(n <= 0):
        raise InvalidParameterError("n_k must be a non-empty list of positive class sizes.")
    if isinstance(depth, bool) or int(depth) != depth or depth < 1:
        raise InvalidParameterError(f"depth must be a positive integer, got {depth!r}.")
    M = int(depth)
    lw = _layer_decays(lambda_W, M)
    lh = check_positive("lambda_H", lambda_H)
    if d is not None and d < n.size:
        raise InvalidParameterError(f"the model needs feature dimension d >= K = {n.size}, got d={d}.")
    N = float(n.sum())
    prod_root = float(np.prod(lw)) ** (1 / M)
    b = M * N * (N * lh) ** (1 / M) * prod_root
    slope = 0.5 * M * prod_root * (N * lh) ** (1 / M)
    rows = []
    for nk in n:
        f = lambda x, nk=nk: nk / (2 * N * (x**M + 1)) + slope * x  # noqa: E731
        roots = _positive_roots(M, b / nk)
        best_root = min(roots, key=f) if roots else math.nan
        f0, fr = f(0.0), (f(best_root) if roots else math.nan)
        x_k = best_root if roots and fr < f0 else 0.0
        near = roots and abs(fr - f0) <= tol * abs(f0)
        rows.append(
            (x_k, best_root, f0, fr, f(x_k), "indeterminate" if near else ("active" if x_k > 0 else "collapsed"))
        )
    x = np.array([r[0] for r in rows])
    p2 = N * lh * x**M
    h2 = p2 / (p2 + N * lh) ** 2
    return DeepLinearGeometry(
        n_k=n,
        x=x,
        root=np.array([r[1] for r in rows]),
        f_at_zero=np.array([r[2] for r in rows]),
        f_at_root=np.array([r[3] for r in rows]),
        p2=p2,
        w_norm2=p2.copy(),
        h_norm2=h2,
        logit=p2 / (p2 + N * lh),
        collapsed=x <= 0,
        status=[r[5] for r in rows],
        loss=float(sum(r[4] for r in rows)),
        gram_diag=h2.copy(),
        params={"depth": M, "lambda_H": lh, "N": N} | {f"lambda_W{i + 1}": float(v) for i, v in enumerate(lw)},
    )


def gram_deviation(class_means_: ArrayLike, predicted_diag: ArrayLike) -> float:
    """Uncentred ``||G/||G||_F - D/||D||_F||_F`` with ``G`` the class-mean Gram, ``D = diag(pred)``."""
    Mu = as_matrix("class_means", class_means_)
    D = np.diag(np.asarray(predicted_diag, dtype=np.float64))
    if D.shape[0] != Mu.shape[0]:
        raise ShapeMismatchError(f"predicted_diag needs {Mu.shape[0]} entries (one per class), got {D.shape[0]}.")
    G = Mu @ Mu.T
    nd = np.linalg.norm(D)
    return float(np.linalg.norm(G / np.linalg.norm(G) - (D / nd if nd > 0 else D)))
