"""Linear CVAE: closed form vs optimisation, the correlation sweep, and the beta = 0.5 trap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pca_attack.analysis import linear_cvae
from pca_attack.analysis.population import Weights
from pca_attack.analysis.simulate import LinearCVAEModel, lbfgs_minimize, theory_vs_trained


def _data(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    Y = 0.4 * X @ rng.normal(size=(4, 4)) + rng.normal(size=(n, 4)) * np.array([1.6, 1.1, 0.6, 0.25])
    return X, Y


@pytest.mark.parametrize("params", [{"beta": 1.0}, {"beta": 0.5, "eta_enc": 1.3, "eta_dec": 0.8}])
def test_closed_form_matches_optimisation(params: dict) -> None:
    X, Y = _data()
    res = linear_cvae(X, Y, **params)
    assert 0 < res.n_active < 4  # the problem has both active and collapsed modes
    cmp = theory_vs_trained("cvae", X, Y, restarts=4, **params)
    for key, diff in cmp.max_abs_diff.items():
        assert diff < 1e-4, (key, cmp.theory[key], cmp.trained[key])
    assert cmp.trained_loss == pytest.approx(cmp.theory_loss, abs=1e-8)


def sweep_data(rho: float | None, n: int = 20_000, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x = rho y + sqrt(1 - rho^2) xi (rho=None: x independent of y); y has spread-out variances."""
    rng = np.random.default_rng(seed)
    Y = rng.normal(size=(n, d)) * np.sqrt([3.0, 2.0, 1.4, 1.1])
    scale = Y.std(axis=0)
    xi = rng.normal(size=(n, d))
    if rho is None:
        return xi, Y
    return rho * Y / scale + math.sqrt(1 - rho**2) * xi, Y


def test_correlation_sweep_active_modes_fall_as_rho_grows() -> None:
    rhos = [None, 1 / 8, 1 / 4, 1 / 2, 1.0]
    active = []
    for rho in rhos:
        X, Y = sweep_data(rho)
        if rho == 1.0:
            X = X + 1e-6 * np.random.default_rng(1).normal(size=X.shape)  # keep Sxx invertible
        active.append(linear_cvae(X, Y, beta=1.0).n_active)
    assert active == sorted(active, reverse=True)
    assert active[0] == 4 and active[-1] == 0
    assert len(set(active)) >= 3  # strictly falling somewhere in the middle


def test_y_equal_x_is_total_collapse() -> None:
    X = np.random.default_rng(0).normal(size=(500, 3)) * 3
    res = linear_cvae(X, X, beta=0.01)
    assert res.collapsed.all() and res.n_active == 0
    np.testing.assert_allclose(res.U2, np.eye(3), atol=1e-10)


def test_beta_half_trap_sigma_is_0937_not_1() -> None:
    """kappa = 0.5695 with beta = 0.5, eta = 1: active (kappa > beta eta_dec^2 = 0.5), sigma ~ 0.937.

    The wrong rule ``theta >= sqrt(beta) eta_dec`` (0.707 here) would call this mode collapsed and
    report sigma = 1.0; direct optimisation confirms 0.937.
    """
    kappa = 0.5695
    Sxx, Syy, Sxy = np.eye(2), np.diag([kappa, 0.1]), np.zeros((2, 2))
    res = linear_cvae(Sxx=Sxx, Syy=Syy, Sxy=Sxy, beta=0.5)
    assert res.sigma[0] == pytest.approx(0.937, abs=5e-4)
    assert not res.collapsed[0] and kappa < math.sqrt(0.5)  # the wrong rule would collapse it
    model = LinearCVAEModel(2, 2, 2, Weights(beta=0.5), seed=3)
    A, B, C = (torch.as_tensor(M) for M in (Sxx, Syy, Sxy))
    loss = lbfgs_minimize([p for p in model.parameters()], lambda: model.population_loss(A, B, C))
    trained_sigma = torch.exp(model.log_sigma).min().item()
    assert trained_sigma == pytest.approx(res.sigma[0], abs=1e-4)
    assert loss == pytest.approx(res.loss, abs=1e-9)
    wrong_loss = kappa / 2 + 0.1 / 2  # the collapsed answer's objective (both modes unused)
    assert res.loss < wrong_loss - 1e-3
