"""Exact population objectives of the linear VAE / CVAE / HVAE with analytic gradients (NumPy).

These are the same functions as ``torch_models.Linear*Model.population_loss`` (a test checks value and
gradient against PyTorch autograd), written in NumPy so that L-BFGS from many random starts runs in
milliseconds: the direct-optimisation checks of the closed forms use them.  Parameters are packed
in one flat vector; ``log_sigma`` holds log standard deviations (absent when the variance is fixed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from pca_attack.analysis.moments import FloatArray

Objective = Callable[[FloatArray], tuple[float, FloatArray]]


@dataclass(frozen=True)
class Layout:
    """Names and shapes of the parameters packed into one vector."""

    shapes: dict[str, tuple[int, ...]]

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def unpack(self, v: FloatArray) -> dict[str, FloatArray]:
        out, off = {}, 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            out[name] = v[off : off + n].reshape(shape)
            off += n
        return out

    def pack(self, parts: dict[str, FloatArray]) -> FloatArray:
        return np.concatenate([np.asarray(parts[name]).ravel() for name in self.shapes])


@dataclass(frozen=True)
class Weights:
    """KL weight and Gaussian scales of the linear VAE / CVAE (the calculators' keyword names)."""

    beta: float = 1.0
    eta_enc: float = 1.0  # prior standard deviation
    eta_dec: float = 1.0  # decoder standard deviation


@dataclass(frozen=True)
class HWeights:
    """KL weights and scales of the two-level linear HVAE (``sigma2=None``: Sigma2 is learned)."""

    beta1: float = 1.0
    beta2: float = 1.0
    sigma1: float = 1.0
    eta_enc: float = 1.0
    eta_dec: float = 1.0
    sigma2: float | None = None


def _kl_terms(mean_sq: FloatArray, v: FloatArray, prior_var: float) -> float:
    return float(0.5 * np.sum((mean_sq + v) / prior_var - 1 - np.log(v / prior_var)))


def vae_objective(
    A: FloatArray, B: FloatArray, C: FloatArray, dz: int, w: Weights = Weights(), *, sigma: FloatArray | None = None
) -> tuple[Layout, Objective]:
    """Linear VAE: W (dx, dz), U (dy, dz), log_sigma (dz) unless ``sigma`` (dz,) is fixed."""
    dx, dy = A.shape[0], B.shape[0]
    shapes: dict[str, tuple[int, ...]] = {"W": (dx, dz), "U": (dy, dz)}
    if sigma is None:
        shapes["log_sigma"] = (dz,)
    lay, ed2, ee2, beta = Layout(shapes), w.eta_dec**2, w.eta_enc**2, w.beta

    def f(vec: FloatArray) -> tuple[float, FloatArray]:
        p = lay.unpack(vec)
        W, U = p["W"], p["U"]
        v = np.exp(2 * p["log_sigma"]) if sigma is None else np.asarray(sigma) ** 2
        AW = A @ W
        WAW = W.T @ AW
        recon = np.trace(B) - 2 * np.sum(U * (C.T @ W)) + np.sum((U @ WAW) * U) + np.sum(U**2 * v)
        loss = recon / (2 * ed2) + beta * _kl_terms(np.diag(WAW), v, ee2)
        g = {
            "U": (-2 * C.T @ W + 2 * U @ WAW + 2 * U * v) / (2 * ed2),
            "W": (-2 * C @ U + 2 * AW @ (U.T @ U)) / (2 * ed2) + beta * AW / ee2,
        }
        if sigma is None:
            g["log_sigma"] = (np.sum(U**2, axis=0) / (2 * ed2) + 0.5 * beta * (1 / ee2 - 1 / v)) * 2 * v
        return float(loss), lay.pack(g)

    return lay, f


def cvae_objective(
    A: FloatArray, B: FloatArray, C: FloatArray, dz: int, w: Weights = Weights()
) -> tuple[Layout, Objective]:
    """Linear CVAE: W1 (dz, dx), W2 (dz, dy), U1 (dy, dz), U2 (dy, dx), log_sigma (dz)."""
    dx, dy = A.shape[0], B.shape[0]
    lay = Layout({"W1": (dz, dx), "W2": (dz, dy), "U1": (dy, dz), "U2": (dy, dx), "log_sigma": (dz,)})
    S = np.block([[A, C], [C.T, B]])  # (dx+dy, dx+dy) joint moment
    ed2, ee2, beta = w.eta_dec**2, w.eta_enc**2, w.beta

    def f(vec: FloatArray) -> tuple[float, FloatArray]:
        p = lay.unpack(vec)
        W1, W2, U1, U2 = p["W1"], p["W2"], p["U1"], p["U2"]
        v = np.exp(2 * p["log_sigma"])
        P = np.hstack([U2 + U1 @ W1, U1 @ W2 - np.eye(dy)])  # residual map of (x, y)
        enc = np.hstack([W1, W2])
        PS, ES = P @ S, enc @ S
        loss = (np.sum(PS * P) + np.sum(U1**2 * v)) / (2 * ed2) + beta * _kl_terms(np.sum(ES * enc, axis=1), v, ee2)
        G = 2 * PS / (2 * ed2)  # d loss / d P
        Gx, Gy = G[:, :dx], G[:, dx:]
        Genc = beta * ES / ee2
        g = {
            "W1": U1.T @ Gx + Genc[:, :dx],
            "W2": U1.T @ Gy + Genc[:, dx:],
            "U1": Gx @ W1.T + Gy @ W2.T + U1 * v / ed2,
            "U2": Gx,
            "log_sigma": (np.sum(U1**2, axis=0) / (2 * ed2) + 0.5 * beta * (1 / ee2 - 1 / v)) * 2 * v,
        }
        return float(loss), lay.pack(g)

    return lay, f


def hvae_objective(A: FloatArray, dz: int, w: HWeights = HWeights()) -> tuple[Layout, Objective]:
    """Two-level linear HVAE: W1 (dz, dx), U1 (dx, dz), W2 (dz, dz), U2 (dz, dz), log_sigma (dz)."""
    dx, sigma2, beta1, beta2 = A.shape[0], w.sigma2, w.beta1, w.beta2
    shapes: dict[str, tuple[int, ...]] = {"W1": (dz, dx), "U1": (dx, dz), "W2": (dz, dz), "U2": (dz, dz)}
    if sigma2 is None:
        shapes["log_sigma"] = (dz,)
    lay, ed2, ee2, s1sq = Layout(shapes), w.eta_dec**2, w.eta_enc**2, w.sigma1**2
    eye = np.eye(dz)
    kl1_const = -0.5 * dz * (1 + math.log(s1sq / ed2))

    def f(vec: FloatArray) -> tuple[float, FloatArray]:
        p = lay.unpack(vec)
        W1, U1, W2, U2 = p["W1"], p["U1"], p["W2"], p["U2"]
        v = np.exp(2 * p["log_sigma"]) if sigma2 is None else np.full(dz, sigma2**2)
        AW = A @ W1.T  # (dx, dz)
        P = W1 @ AW + s1sq * eye  # E[z1 z1^T]
        recon = np.trace(A) - 2 * np.sum(U1 * AW) + np.sum((U1 @ P) * U1)
        T = eye - U2 @ W2
        TP, WP = T @ P, W2 @ P
        k1 = np.sum(TP * T) + np.sum(U2**2 * v)
        loss = (
            recon / (2 * ed2)
            + beta1 * (k1 / (2 * ed2) + kl1_const)
            + beta2 * _kl_terms(np.sum(WP * W2, axis=1), v, ee2)
        )
        GP = U1.T @ U1 / (2 * ed2) + beta1 * T.T @ T / (2 * ed2) + beta2 * W2.T @ W2 / (2 * ee2)  # d loss / d P
        g = {
            "W1": (-2 * U1.T @ A) / (2 * ed2) + 2 * GP @ W1 @ A,
            "U1": 2 * (U1 @ P - AW) / (2 * ed2),
            "W2": -beta1 * U2.T @ TP / ed2 + beta2 * WP / ee2,
            "U2": beta1 * (-2 * TP @ W2.T + 2 * U2 * v) / (2 * ed2),
        }
        if sigma2 is None:
            g["log_sigma"] = (beta1 * np.sum(U2**2, axis=0) / (2 * ed2) + 0.5 * beta2 * (1 / ee2 - 1 / v)) * 2 * v
        return float(loss), lay.pack(g)

    return lay, f


def minimize_restarts(
    lay: Layout, f: Objective, *, restarts: int = 4, seed: int = 0, init_scale: float = 0.5, max_iter: int = 5000
) -> tuple[dict[str, FloatArray], float]:
    """L-BFGS-B from ``restarts`` random starts; returns the best parameters and objective value."""
    rng = np.random.default_rng(seed)
    best: tuple[FloatArray, float] | None = None
    for _ in range(restarts):
        res = minimize(
            f,
            init_scale * rng.normal(size=lay.size),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter, "maxfun": 2 * max_iter, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 30},
        )
        value = f(res.x)[0]
        if math.isfinite(value) and (best is None or value < best[1]):
            best = (res.x, value)
    assert best is not None, "every restart diverged"
    return lay.unpack(best[0]), best[1]
