"""Imbalanced bias-free MSE deep linear UFM: closed form vs optimisation, and the depth-3 trap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pca_attack.analysis import deep_linear_mse_geometry, gram_deviation, neural_collapse_metrics
from pca_attack.analysis.simulate import lbfgs_minimize


def solve_ufm(n_k: list[int], depth: int, lam: float, d: int = 4, restarts: int = 5):
    """Best of ``restarts`` L-BFGS runs on the full objective; returns (f*, ||w_k||^2, class means)."""
    K, N = len(n_k), sum(n_k)
    labels = np.repeat(np.arange(K), n_k)
    Y = torch.as_tensor(np.eye(K)[labels].T)  # (K, N)
    best = None
    for r in range(restarts):
        g = torch.Generator().manual_seed(r)
        shapes = [(d, d)] * (depth - 1) + [(K, d)]
        Ws = [(0.5 * torch.randn(*s, generator=g, dtype=torch.float64)).requires_grad_() for s in shapes]
        H = (0.5 * torch.randn(d, N, generator=g, dtype=torch.float64)).requires_grad_()

        def f(Ws: list[torch.Tensor] = Ws, H: torch.Tensor = H) -> torch.Tensor:
            out = H
            for W in Ws:
                out = W @ out
            return ((out - Y) ** 2).sum() / (2 * N) + lam / 2 * sum((W**2).sum() for W in Ws) + lam / 2 * (H**2).sum()

        value = lbfgs_minimize([*Ws, H], f)
        if best is None or value < best[0]:
            with torch.no_grad():
                prod = Ws[0].detach().T
                for W in Ws[1:]:
                    prod = prod @ W.T
                means = np.stack([H.numpy()[:, labels == k].mean(axis=1) for k in range(K)])
            best = (value, (prod.numpy() ** 2).sum(axis=0), means, H.detach().numpy().T, labels, prod.numpy().T)
    assert best is not None
    return best


@pytest.mark.parametrize(("n_k", "depth", "lam"), [([1, 2, 5], 1, 0.15), ([2, 3, 6], 3, 0.05)])
def test_closed_form_matches_optimisation(n_k: list[int], depth: int, lam: float) -> None:
    geo = deep_linear_mse_geometry(n_k, depth=depth, lambda_W=lam, lambda_H=lam)
    assert geo.collapsed[0] and not geo.collapsed[-1]  # a minority class collapses
    value, w_norm2, means, H, labels, W = solve_ufm(n_k, depth, lam)
    assert value == pytest.approx(geo.loss, abs=1e-7)
    np.testing.assert_allclose(w_norm2, geo.w_norm2, atol=1e-4)
    np.testing.assert_allclose((means**2).sum(axis=1), geo.h_norm2, atol=1e-4)
    np.testing.assert_allclose(W @ means.T, np.diag(geo.logit), atol=1e-4)  # orthogonal, W hbar_k = logit e_k
    assert gram_deviation(means, geo.gram_diag) < 1e-3  # uncentred Gram is the predicted diagonal
    assert neural_collapse_metrics(H, labels).nc1 < 1e-6


def test_depth_one_closed_form() -> None:
    n_k, lam = np.array([10.0, 40.0, 150.0]), 0.01
    N = n_k.sum()
    geo = deep_linear_mse_geometry(n_k, depth=1, lambda_W=lam, lambda_H=lam)
    expected = np.maximum(np.sqrt(n_k) / (N * lam) - 1, 0)
    np.testing.assert_allclose(geo.x, expected)
    np.testing.assert_array_equal(geo.collapsed, n_k <= N**2 * lam * lam)


def test_depth3_trap_zero_beats_root() -> None:
    """N = 400, n_k = 50, lambda = 0.015, depth 3: a positive root exists but f(0) is lower."""
    geo = deep_linear_mse_geometry([50, 350], depth=3, lambda_W=0.015, lambda_H=0.015)
    assert np.isfinite(geo.root[0]) and geo.root[0] > 1.0  # the naive "largest root" answer
    assert geo.f_at_zero[0] < geo.f_at_root[0]
    assert geo.collapsed[0] and geo.x[0] == 0.0 and geo.w_norm2[0] == 0.0
    assert not geo.collapsed[1]
    # brute force over x confirms the global minimiser of f_k is 0
    N, M, lam = 400.0, 3, 0.015
    xs = np.linspace(0, 5, 200_001)
    fk = 50 / (2 * N * (xs**M + 1)) + (M / 2) * lam * (N * lam) ** (1 / M) * xs
    assert xs[np.argmin(fk)] == 0.0
    assert fk.min() == pytest.approx(geo.f_at_zero[0])


def test_bad_geometry_inputs() -> None:
    with pytest.raises(ValueError, match="lambda_W must be one value or 3"):
        deep_linear_mse_geometry([1, 2], depth=3, lambda_W=[0.1, 0.1])
    with pytest.raises(ValueError, match="positive class sizes"):
        deep_linear_mse_geometry([0, 2])
    with pytest.raises(ValueError, match="d >= K"):
        deep_linear_mse_geometry([1, 2, 3], d=2)
