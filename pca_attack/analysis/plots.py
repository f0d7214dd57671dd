"""Parameter sweeps and their plots (matplotlib, Agg backend, PNG files).

* :func:`sweep_beta` - active modes of a calculator as beta varies;
* :func:`correlation_sweep` - active CVAE modes as the x-y correlation rho grows
  (``x = rho y / std(y) + sqrt(1 - rho^2) xi``; ``rho=None`` means x independent of y), from exact
  moments (:func:`correlated_moments`) or from samples (:func:`correlated_pair`);
* :func:`plot_singular_values`, :func:`plot_active_vs_beta`, :func:`plot_active_vs_correlation`.

matplotlib is imported inside the plotting functions so that importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pca_attack.analysis.linear_cvae import linear_cvae
from pca_attack.analysis.moments import FloatArray


def sweep_beta(calculator: Callable[..., Any], betas: Sequence[float], **inputs: Any) -> dict[str, list[float]]:
    """``n_active`` (modes whose mean is not collapsed) for each beta; ``inputs`` go to the calculator."""
    counts = [int(np.count_nonzero(~np.asarray(calculator(beta=b, **inputs).collapsed))) for b in betas]
    return {"beta": [float(b) for b in betas], "n_active": [float(c) for c in counts]}


DEFAULT_VARIANCES = (4.0, 1.25, 1.04, 1.01)  # each crosses beta=1 at a different rho of the sweep


def correlated_pair(
    rho: float | None,
    *,
    n: int = 20_000,
    variances: Sequence[float] = DEFAULT_VARIANCES,
    seed: int = 0,
) -> tuple[FloatArray, FloatArray]:
    """Synthetic (X, Y) with ``x = rho y/std(y) + sqrt(1 - rho^2) xi``; ``rho=None``: independent."""
    rng = np.random.default_rng(seed)
    Y = rng.normal(size=(n, len(variances))) * np.sqrt(np.asarray(variances, dtype=np.float64))
    xi = rng.normal(size=Y.shape)
    if rho is None:
        return xi, Y
    X = rho * Y / Y.std(axis=0) + math.sqrt(max(0.0, 1 - rho**2)) * xi
    if rho >= 1.0:
        X = X + 1e-6 * rng.normal(size=X.shape)  # keep Sxx invertible at rho = 1
    return X, Y


def correlated_moments(rho: float | None, variances: Sequence[float] = DEFAULT_VARIANCES) -> dict[str, FloatArray]:
    """Exact (population) moments of :func:`correlated_pair`: ``Sxx = I``, ``Sxy = rho diag(std y)``."""
    v = np.asarray(variances, dtype=np.float64)
    r = 0.0 if rho is None else float(rho)
    return {"Sxx": np.eye(v.size), "Syy": np.diag(v), "Sxy": r * np.diag(np.sqrt(v))}


def correlation_sweep(
    rhos: Sequence[float | None] = (None, 1 / 8, 1 / 4, 1 / 2, 1.0),
    *,
    beta: float = 1.0,
    sampled: bool = False,
    n: int = 20_000,
    seed: int = 0,
    variances: Sequence[float] = DEFAULT_VARIANCES,
    **params: Any,
) -> dict[str, list[Any]]:
    """Active CVAE modes for each correlation ``rho`` (``None`` = independent), with the kappas.

    ``sampled=False`` uses the exact population moments (E = diag(var (1 - rho^2))); ``sampled=True``
    draws ``n`` samples per rho, so sampling noise can blur modes near the threshold.
    """
    out: dict[str, list[Any]] = {"rho": [], "n_active": [], "kappa": []}
    for rho in rhos:
        if sampled:
            X, Y = correlated_pair(rho, n=n, seed=seed, variances=variances)
            res = linear_cvae(X, Y, beta=beta, **params)
        else:
            mom = correlated_moments(rho, variances)
            res = linear_cvae(Sxx=mom["Sxx"], Syy=mom["Syy"], Sxy=mom["Sxy"], beta=beta, **params)
        out["rho"].append(0.0 if rho is None else float(rho))
        out["n_active"].append(res.n_active)
        out["kappa"].append(res.kappa.tolist())
    return out


def _figure(title: str) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=110)
    ax.set_title(title, fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def plot_singular_values(
    theory: dict[str, FloatArray],
    trained: dict[str, FloatArray],
    path: str | Path,
    *,
    title: str = "Predicted vs trained",
) -> Path:
    """Per-mode markers: closed-form prediction (open) vs trained value (filled) for each quantity."""
    fig, ax = _figure(title)
    for i, key in enumerate(k for k in ("omega", "lam", "sigma") if k in theory and k in trained):
        modes = np.arange(1, len(theory[key]) + 1)
        color = f"C{i}"
        ax.plot(modes, theory[key], "o", mfc="none", ms=10, color=color, label=f"{key} theory")
        ax.plot(modes, trained[key], "x", ms=8, color=color, label=f"{key} trained")
    from matplotlib.ticker import AutoLocator

    ax.yaxis.set_major_locator(AutoLocator())
    ax.set_xlabel("mode (sorted)")
    ax.set_ylabel("value")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_active_vs_beta(sweeps: dict[str, dict[str, list[float]]], path: str | Path) -> Path:
    """Step plot of active modes vs beta, one line per labelled sweep."""
    fig, ax = _figure("Active latent modes vs beta")
    for label, sw in sweeps.items():
        ax.step(sw["beta"], sw["n_active"], where="post", label=label)
    ax.set_xscale("log")  # replaces the integer x locator
    ax.set_xlabel("beta")
    ax.set_ylabel("active modes")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_active_vs_correlation(sweep: dict[str, list[Any]], path: str | Path) -> Path:
    """Active CVAE modes vs the x-y correlation rho (rho = 0 stands for independent x)."""
    fig, ax = _figure("Linear CVAE: active modes vs x-y correlation")
    ax.plot(sweep["rho"], sweep["n_active"], "o-")
    ax.set_xlabel("rho (0 = independent)")
    ax.set_ylabel("active modes")
    return _save(fig, path)
