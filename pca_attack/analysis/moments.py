"""Inputs, validation and small shared helpers for the collapse-theory calculators.

Every calculator accepts either data (``X``, ``Y`` as arrays of shape (N, d)) or second-moment
matrices (``Sxx = E[x x^T]``, ``Syy = E[y y^T]``, ``Sxy = E[x y^T]``).  Linear models *without*
biases need **uncentered** moments; ``center=True`` subtracts the sample means first, which is
equivalent to giving the encoder and decoder learnable biases (see docs/theory.md).

Bad inputs raise subclasses of :class:`AnalysisInputError` (itself a ``ValueError``) whose message
says what was wrong and what to do about it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

#: Relative width of the band around a collapse threshold reported as ``indeterminate``.
DEFAULT_TOL = 0.05


class AnalysisInputError(ValueError):
    """Base class for invalid inputs to the analysis calculators."""


class ShapeMismatchError(AnalysisInputError):
    """Arrays have the wrong number of dimensions or inconsistent sizes."""


class NotPSDError(AnalysisInputError):
    """A second-moment matrix is not symmetric positive semi-definite."""


class SingularMomentError(AnalysisInputError):
    """A second-moment matrix that must be inverted is (numerically) singular."""


class InvalidParameterError(AnalysisInputError):
    """A scalar parameter (beta, eta, sigma, latent_dim, ...) is out of range."""


class NumericRangeError(AnalysisInputError):
    """The inputs are finite but the closed form leaves double precision (overflow, log of 0, ...)."""


#: What to do when the numbers leave double precision.
RESCALE_ADVICE = (
    "rescale the input (e.g. divide the data by its largest absolute value) and keep beta, sigma and eta "
    "within a few orders of magnitude of 1"
)


@dataclass(frozen=True)
class Moments:
    """Second moments of (x, y); ``Syy``/``Sxy`` are ``None`` for models of x alone."""

    Sxx: FloatArray  # (dx, dx)  E[x x^T]
    Syy: FloatArray | None  # (dy, dy)  E[y y^T]
    Sxy: FloatArray | None  # (dx, dy)  E[x y^T]
    n_samples: int | None = None  # number of rows the moments came from, if data was given
    centered: bool = False  # True when sample means were subtracted

    @property
    def dx(self) -> int:
        return int(self.Sxx.shape[0])

    @property
    def dy(self) -> int:
        return int(self.Syy.shape[0]) if self.Syy is not None else self.dx


def as_matrix(name: str, value: ArrayLike) -> FloatArray:
    """Convert to a finite 2-D float64 array or raise :class:`ShapeMismatchError`."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2:
        raise ShapeMismatchError(
            f"{name} must be a 2-D array, got shape {arr.shape}; pass data as (N, d) rows "
            "(use X[:, None] for a single feature)."
        )
    if arr.size == 0:
        raise ShapeMismatchError(f"{name} is empty (shape {arr.shape}); pass at least one row and column.")
    if not np.all(np.isfinite(arr)):
        raise AnalysisInputError(f"{name} contains NaN or infinite values; clean the input first.")
    return arr


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as float if it is finite and > 0, else raise :class:`InvalidParameterError`."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"{name} must be a number, got {value!r}.") from exc
    if not math.isfinite(v) or v <= 0.0:
        raise InvalidParameterError(f"{name} must be a finite number > 0, got {value!r}.")
    return v


def check_latent_dim(latent_dim: int | None, default: int) -> int:
    """Validate the number of latent slots (``None`` means ``default``)."""
    if latent_dim is None:
        return default
    if isinstance(latent_dim, bool) or int(latent_dim) != latent_dim or latent_dim < 1:
        raise InvalidParameterError(f"latent_dim must be a positive integer, got {latent_dim!r}.")
    return int(latent_dim)


def check_psd(name: str, M: FloatArray, *, square_dim: int | None = None) -> FloatArray:
    """Check ``M`` is square, symmetric and PSD (to round-off); return its symmetrised copy."""
    if M.shape[0] != M.shape[1]:
        raise ShapeMismatchError(f"{name} must be square, got shape {M.shape}.")
    if square_dim is not None and M.shape[0] != square_dim:
        raise ShapeMismatchError(f"{name} must be {square_dim}x{square_dim} to match the other inputs, got {M.shape}.")
    scale = max(1.0, float(np.max(np.abs(M))))
    if np.max(np.abs(M - M.T)) > 1e-8 * scale:
        raise NotPSDError(f"{name} is not symmetric; a second-moment matrix must equal its transpose.")
    S = 0.5 * (M + M.T)
    eig_min = float(np.linalg.eigvalsh(S)[0])
    if eig_min < -1e-9 * scale:
        raise NotPSDError(
            f"{name} is not positive semi-definite (smallest eigenvalue {eig_min:.3g}); pass E[x x^T] "
            "computed from data, or pass the data itself as X/Y."
        )
    return S


def check_nonsingular(name: str, S: FloatArray) -> None:
    """Raise :class:`SingularMomentError` when the PSD matrix ``S`` cannot be inverted reliably."""
    eig = np.linalg.eigvalsh(S)
    if eig[-1] <= 0.0 or eig[0] <= 1e-12 * eig[-1]:
        raise SingularMomentError(
            f"{name} is singular (eigenvalues from {eig[0]:.3g} to {eig[-1]:.3g}); remove constant or "
            f"duplicated features, use more samples than features, or add a small ridge ({name} + 1e-6 I)."
        )


def moments_from_data(X: ArrayLike, Y: ArrayLike | None = None, *, center: bool = False) -> Moments:
    """Empirical second moments of rows of ``X`` (N, dx) and optionally ``Y`` (N, dy)."""
    Xa = as_matrix("X", X)
    Ya = as_matrix("Y", Y) if Y is not None else None
    if Ya is not None and Ya.shape[0] != Xa.shape[0]:
        raise ShapeMismatchError(
            f"X and Y must have the same number of rows (samples): X has {Xa.shape[0]}, Y has {Ya.shape[0]}."
        )
    if center:
        Xa = Xa - Xa.mean(axis=0)
        Ya = Ya - Ya.mean(axis=0) if Ya is not None else None
    n = Xa.shape[0]
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below
        Sxx = Xa.T @ Xa / n  # (dx, dx)
        Syy, Sxy = (None, None) if Ya is None else (Ya.T @ Ya / n, Xa.T @ Ya / n)  # (dy, dy), (dx, dy)
    if not all(np.all(np.isfinite(S)) for S in (Sxx, Syy, Sxy) if S is not None):
        raise NumericRangeError(f"the second moments of the data overflow double precision; {RESCALE_ADVICE}.")
    return Moments(Sxx=Sxx, Syy=Syy, Sxy=Sxy, n_samples=n, centered=center)


def resolve_moments(
    *,
    X: ArrayLike | None = None,
    Y: ArrayLike | None = None,
    Sxx: ArrayLike | None = None,
    Syy: ArrayLike | None = None,
    Sxy: ArrayLike | None = None,
    center: bool = False,
    need_y: bool = False,
    allow_y: bool = True,
) -> Moments:
    """Build validated :class:`Moments` from either data or moment matrices (not both)."""
    has_data = X is not None or Y is not None
    has_moments = Sxx is not None or Syy is not None or Sxy is not None
    if has_data and has_moments:
        raise AnalysisInputError("pass either data (X, Y) or moments (Sxx, Syy, Sxy), not both.")
    if not has_data and not has_moments:
        raise AnalysisInputError("no input: pass data X (and Y) or the second moments Sxx (and Syy, Sxy).")
    if not allow_y and (Y is not None or Syy is not None or Sxy is not None):
        raise AnalysisInputError("this model has no separate output y; pass only X or Sxx.")
    if has_data:
        if X is None:
            raise AnalysisInputError("Y was given without X; pass the inputs X as well.")
        if need_y and Y is None:
            raise AnalysisInputError("this model needs outputs Y (N, dy) as well as inputs X (N, dx).")
        m = moments_from_data(X, Y, center=center)
    else:
        if center:
            raise AnalysisInputError(
                "center=True needs data: moments are used as given; pass centered covariances instead."
            )
        if Sxx is None:
            raise AnalysisInputError("Syy/Sxy were given without Sxx; pass Sxx = E[x x^T] as well.")
        given_y = (Syy is not None, Sxy is not None)
        if any(given_y) and not all(given_y):
            raise AnalysisInputError("pass both Syy = E[y y^T] and Sxy = E[x y^T], or neither.")
        if need_y and not all(given_y):
            raise AnalysisInputError("this model needs Syy = E[y y^T] and Sxy = E[x y^T] as well as Sxx.")
        A = as_matrix("Sxx", Sxx)
        B = as_matrix("Syy", Syy) if Syy is not None else None
        C = as_matrix("Sxy", Sxy) if Sxy is not None else None
        m = Moments(Sxx=A, Syy=B, Sxy=C)
    return _validated(m)


def _validated(m: Moments) -> Moments:
    A = check_psd("Sxx", m.Sxx)
    if m.Syy is None or m.Sxy is None:
        return dataclasses.replace(m, Sxx=A)
    B = check_psd("Syy", m.Syy)
    if m.Sxy.shape != (A.shape[0], B.shape[0]):
        raise ShapeMismatchError(
            f"Sxy must have shape (dx, dy) = ({A.shape[0]}, {B.shape[0]}) to match Sxx and Syy, got {m.Sxy.shape}."
        )
    joint = np.block([[A, m.Sxy], [m.Sxy.T, B]])
    check_psd("the joint moment [[Sxx, Sxy], [Sxy^T, Syy]]", joint)
    return dataclasses.replace(m, Sxx=A, Syy=B)


def sym_inv_sqrt(S: FloatArray) -> FloatArray:
    """``S^{-1/2}`` for a symmetric positive-definite matrix."""
    w, V = np.linalg.eigh(S)
    return (V / np.sqrt(w)) @ V.T


def band_status(ratio: FloatArray, tol: float) -> list[str]:
    """Per-mode status from ``ratio = signal / threshold``: within ``tol`` of 1 is indeterminate."""
    out = []
    for r in np.asarray(ratio, dtype=np.float64):
        if abs(r - 1.0) <= tol:
            out.append("indeterminate")
        else:
            out.append("active" if r > 1.0 else "collapsed")
    return out


def to_jsonable(value: Any) -> Any:
    """Recursively convert numpy arrays/scalars and dataclasses to plain JSON types (NaN/inf -> None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()] if value.ndim else to_jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None  # NaN/inf are not JSON: None
    return value


class ResultMixin:
    """Adds ``to_dict()`` (JSON-ready) to the result dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        out = to_jsonable(self)
        assert isinstance(out, dict)
        return out
