"""Neural-collapse diagnostics (NC1-NC4) and perturbed-feature measurements.

(The closed-form geometry of the imbalanced deep linear model lives in :mod:`pca_attack.analysis.deep_linear`.)

Conventions (docs/theory.md): features ``H`` are rows, shape (N, d); ``labels`` (N,)
are integers 0..C-1; the classifier ``W`` is (C, d) with optional bias ``b`` (C,).  All metrics are
exactly 0 on a simplex equiangular tight frame with no within-class spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from pca_attack.analysis.moments import (
    AnalysisInputError,
    FloatArray,
    InvalidParameterError,
    ResultMixin,
    ShapeMismatchError,
    as_matrix,
)
from pca_attack.analysis.numeric import numeric_guard

#: Missing classes named in an error message (the rest are counted).
_SHOWN = 10


@dataclass
class NeuralCollapseResult(ResultMixin):
    """NC metrics; classifier metrics are ``None`` when no classifier was given."""

    n_classes: int
    nc1: float  # Tr(Sigma_W Sigma_B^+)/C, pseudo-inverse truncated to rank C-1
    nc1_trace_ratio: float  # Tr Sigma_W / Tr Sigma_B
    nc2_equinorm_means: float  # std/mean of ||mu_c - mu_G|| (ddof=1)
    nc2_equiangular_means: float  # mean_{c != c'} |cos + 1/(C-1)|
    nc2_cos_std_means: float  # std of the off-diagonal cosines
    nc2_gram_means: float  # ||G/||G||_F - (I - 11^T/C)/sqrt(C-1)||_F
    nc2_equinorm_classifier: float | None = None
    nc2_equiangular_classifier: float | None = None
    nc2_gram_classifier: float | None = None
    nc3: float | None = None  # ||W^T/||W||_F - M~/||M~||_F||_F^2
    nc4: float | None = None  # fraction where the classifier disagrees with the nearest class mean
    global_mean: str = "sample"


def _labels(labels: ArrayLike, n: int) -> tuple[np.ndarray, int]:
    """Validate ``labels`` (N,) as class ids 0..C-1 with every class present; return them and ``C``.

    Ids are NOT remapped (row ``c`` of ``W`` belongs to class ``c``), so a gap is an error.  Since
    every class needs a sample, ``C = max(labels) + 1 <= N``: the check runs before anything of size
    ``C`` is allocated, and the message names at most :data:`_SHOWN` missing classes.
    """
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise ShapeMismatchError(f"labels must have shape (N,) = ({n},) to match H, got {lab.shape}.")
    integral = lab.dtype.kind in "iub" or (
        lab.dtype.kind == "f" and bool(np.all(np.isfinite(lab))) and bool(np.all(np.mod(lab, 1) == 0))
    )
    if not integral:
        raise AnalysisInputError("labels must be integers 0..C-1.")
    if lab.min() < 0:
        raise AnalysisInputError("labels must be non-negative integers 0..C-1.")
    if lab.max() >= n:
        raise AnalysisInputError(
            f"the largest label is {_short(lab.max())} but there are only {n} samples: labels must be "
            f"0..C-1 with every class present, so C <= N = {n}; renumber the classes 0..C-1."
        )
    lab = lab.astype(np.int64)
    C = int(lab.max()) + 1
    missing = np.flatnonzero(np.bincount(lab, minlength=C) == 0)  # (<= C,) with C <= N
    if missing.size or C < 2:
        shown = ", ".join(str(int(c)) for c in missing[:_SHOWN]) + (", ..." if missing.size > _SHOWN else "")
        raise AnalysisInputError(
            f"need at least 2 classes numbered 0..C-1, each with samples; {missing.size} classes without "
            f"samples{': ' + shown if missing.size else ''}; renumber the classes 0..C-1."
        )
    return lab, C


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def class_means(H: FloatArray, labels: np.ndarray, C: int) -> FloatArray:
    """(C, d) per-class feature means (labels already validated: 0..C-1, every class present)."""
    sums = np.zeros((C, H.shape[1]))  # (C, d)
    np.add.at(sums, labels, H)
    return sums / np.bincount(labels, minlength=C)[:, None]


def _equinorm(vectors: FloatArray) -> float:
    norms = np.linalg.norm(vectors, axis=1)
    mean = norms.mean()
    return float(norms.std(ddof=1) / mean) if mean > 0 else 0.0


def _cosines(vectors: FloatArray) -> FloatArray:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-300)
    cos = unit @ unit.T
    return np.asarray(cos[~np.eye(len(vectors), dtype=bool)])


def _gram_to_etf(vectors: FloatArray) -> float:
    C = len(vectors)
    G = vectors @ vectors.T
    target = (np.eye(C) - np.ones((C, C)) / C) / math.sqrt(C - 1)
    return float(np.linalg.norm(G / np.linalg.norm(G) - target))


@numeric_guard
def neural_collapse_metrics(
    H: ArrayLike,
    labels: ArrayLike,
    W: ArrayLike | None = None,
    b: ArrayLike | None = None,
    *,
    global_mean: str = "sample",
) -> NeuralCollapseResult:
    """NC1-NC4 of features ``H`` (N, d) with ``labels`` (N,) and optional classifier ``W`` (C, d), ``b``.

    ``global_mean='sample'`` uses the mean of all samples; ``'class'`` the mean of the class means.
    """
    Hm = as_matrix("H", H)
    lab, C = _labels(labels, Hm.shape[0])
    if global_mean not in ("sample", "class"):
        raise InvalidParameterError(f"global_mean must be 'sample' or 'class', got {global_mean!r}.")
    mu = class_means(Hm, lab, C)  # (C, d)
    mu_g = Hm.mean(axis=0) if global_mean == "sample" else mu.mean(axis=0)
    Mt = mu - mu_g  # (C, d), rows are mu_c - mu_G
    dev = Hm - mu[lab]
    sigma_w = dev.T @ dev / Hm.shape[0]
    sigma_b = Mt.T @ Mt / C
    ev, V = np.linalg.eigh(sigma_b)
    keep = np.argsort(ev)[::-1][: C - 1]
    keep = keep[ev[keep] > 1e-12 * max(float(ev.max()), 1e-300)]
    pinv = (V[:, keep] / ev[keep]) @ V[:, keep].T
    tr_b = float(np.trace(sigma_b))
    if tr_b <= 1e-300:
        raise AnalysisInputError("all class means are equal (zero between-class spread): NC metrics are undefined.")
    cos = _cosines(Mt)
    res = NeuralCollapseResult(
        n_classes=C,
        nc1=float(np.trace(sigma_w @ pinv) / C),
        nc1_trace_ratio=float(np.trace(sigma_w) / tr_b),
        nc2_equinorm_means=_equinorm(Mt),
        nc2_equiangular_means=float(np.mean(np.abs(cos + 1 / (C - 1)))),
        nc2_cos_std_means=float(np.std(cos)),
        nc2_gram_means=_gram_to_etf(Mt),
        global_mean=global_mean,
    )
    if W is None:
        return res
    Wm = as_matrix("W", W)
    if Wm.shape != (C, Hm.shape[1]):
        raise ShapeMismatchError(f"W must have shape (C, d) = ({C}, {Hm.shape[1]}), got {Wm.shape}.")
    bv = np.zeros(C) if b is None else np.asarray(b, dtype=np.float64)
    if bv.shape != (C,):
        raise ShapeMismatchError(f"b must have shape (C,) = ({C},), got {bv.shape}.")
    res.nc2_equinorm_classifier = _equinorm(Wm)
    res.nc2_equiangular_classifier = float(np.mean(np.abs(_cosines(Wm) + 1 / (C - 1))))
    res.nc2_gram_classifier = _gram_to_etf(Wm)
    res.nc3 = float(np.linalg.norm(Wm.T / np.linalg.norm(Wm) - Mt.T / np.linalg.norm(Mt)) ** 2)
    res.nc4 = _nc4(Hm, mu, Wm, bv)
    return res


def _nearest(points: FloatArray, centres: FloatArray) -> np.ndarray:
    """(n,) index of the nearest centre (C, d) to each point (n, d)."""
    return np.asarray(np.argmin(((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2), axis=1))


def _nc4(H: FloatArray, mu: FloatArray, W: FloatArray, b: FloatArray, *, budget: int = 1 << 20) -> float:
    """Fraction of rows of ``H`` (N, d) where ``argmax(W h + b)`` differs from the nearest class mean.

    Rows go in chunks so that no temporary holds more than about ``budget`` numbers (an (N, C, d)
    array would be 0.5 GB for N = 20000, C = 400, d = 8).
    """
    rows = max(1, budget // max(1, mu.size))
    disagree = 0
    for i in range(0, len(H), rows):
        chunk = H[i : i + rows]  # (rows, d)
        pred = np.argmax(chunk @ W.T + b, axis=1)  # (rows,)
        disagree += int(np.sum(pred != _nearest(chunk, mu)))
    return disagree / len(H)


def simplex_etf(n_classes: int, dim: int | None = None, *, scale: float = 1.0, seed: int = 0) -> FloatArray:
    """(C, d) rows forming a centred simplex ETF (unit norm times ``scale``), randomly rotated."""
    C = int(n_classes)
    d = C if dim is None else int(dim)
    if C < 2 or d < C - 1:
        raise InvalidParameterError(f"a simplex ETF with {C} classes needs C >= 2 and dim >= C-1, got dim={d}.")
    M = np.eye(C) - np.ones((C, C)) / C  # rows: centred one-hot, norm sqrt((C-1)/C)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(max(d, C), max(d, C))))
    basis = np.linalg.svd(M)[2][: C - 1]  # (C-1, C) orthonormal basis of the row space
    rows = (M @ basis.T) @ Q[: C - 1, :d]  # (C, d)
    return np.asarray(scale * rows / np.linalg.norm(rows, axis=1, keepdims=True))


@dataclass
class PerturbedCollapseResult(ResultMixin):
    """Collapse of clean vs perturbed features and how far each class mean moved."""

    clean: NeuralCollapseResult
    perturbed: NeuralCollapseResult
    angle_deg: FloatArray  # (C,) angle between clean and perturbed centred class means
    distance: FloatArray  # (C,) ||mu_c(perturbed) - mu_c(clean)||
    nearest_clean_class: np.ndarray  # (C,) clean class mean nearest to each perturbed class mean
    leap_fraction: float  # fraction of classes whose perturbed mean is nearest another clean class


def perturbed_collapse(
    H_clean: ArrayLike,
    H_perturbed: ArrayLike,
    labels: ArrayLike,
    W: ArrayLike | None = None,
    b: ArrayLike | None = None,
    *,
    perturbed_labels: ArrayLike | None = None,
) -> PerturbedCollapseResult:
    """NC metrics of perturbed vs clean features plus per-class angle/distance of the class means.

    Perturbed features are grouped by ``perturbed_labels`` (e.g. the attack's target labels for a
    targeted attack) or, by default, by the true ``labels``.  Angles are measured around the clean
    global mean.
    """
    Hc, Hp = as_matrix("H_clean", H_clean), as_matrix("H_perturbed", H_perturbed)
    if Hp.shape[1] != Hc.shape[1]:
        raise ShapeMismatchError(
            f"H_perturbed must have {Hc.shape[1]} feature columns like H_clean, got {Hp.shape[1]}."
        )
    lab_c, C = _labels(labels, Hc.shape[0])
    lab_p, Cp = _labels(labels if perturbed_labels is None else perturbed_labels, Hp.shape[0])
    if Cp != C:
        raise AnalysisInputError(f"perturbed features have {Cp} classes but clean features have {C}.")
    mu_c, mu_p = class_means(Hc, lab_c, C), class_means(Hp, lab_p, C)
    g = Hc.mean(axis=0)
    a, p = mu_c - g, mu_p - g
    cos = np.sum(a * p, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(p, axis=1), 1e-300)
    nearest = _nearest(mu_p, mu_c)
    return PerturbedCollapseResult(
        clean=neural_collapse_metrics(Hc, lab_c, W, b),
        perturbed=neural_collapse_metrics(Hp, lab_p, W, b),
        angle_deg=np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))),
        distance=np.linalg.norm(mu_p - mu_c, axis=1),
        nearest_clean_class=nearest,
        leap_fraction=float(np.mean(nearest != np.arange(C))),
    )


def noise_baselines(X: ArrayLike, eps: float = 8 / 255, *, seed: int = 0) -> tuple[FloatArray, FloatArray]:
    """Gaussian ``x + eps N(0,1)`` and sign ``x + eps sign(N(0,1))`` baselines (Su et al. 2023)."""
    Xa = np.asarray(X, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return Xa + eps * rng.normal(size=Xa.shape), Xa + eps * np.sign(rng.normal(size=Xa.shape))
