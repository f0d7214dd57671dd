"""Linear VAE closed forms vs direct optimisation of the exact population objective."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pca_attack.analysis import linear_vae
from pca_attack.analysis.simulate import theory_vs_trained

ATOL = 1e-4


@pytest.mark.parametrize(
    "params",
    [
        {"beta": 1.0},
        {"beta": 0.5, "eta_enc": 1.3, "eta_dec": 0.8},
        {"beta": 2.0, "eta_dec": 0.7},
        {"beta": 1.0, "sigma": [0.3, 0.5, 0.8, 1.0, 1.2]},
        {"beta": 0.7, "eta_enc": 0.8, "sigma": 0.6},
    ],
)
def test_closed_form_matches_optimisation(spd5: np.ndarray, params: dict) -> None:
    cmp = theory_vs_trained("vae", Sxx=spd5, restarts=4, **params)
    for key, diff in cmp.max_abs_diff.items():
        assert diff < ATOL, (key, cmp.theory[key], cmp.trained[key])
    assert cmp.trained_loss == pytest.approx(cmp.theory_loss, abs=1e-8)


def test_regression_target_and_latent_bottleneck() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 4))
    Y = X @ rng.normal(size=(4, 3)) * 0.7 + 0.5 * rng.normal(size=(400, 3))
    cmp = theory_vs_trained("vae", X, Y, latent_dim=2, restarts=4, beta=0.8)
    assert max(cmp.max_abs_diff.values()) < ATOL
    assert cmp.trained_loss == pytest.approx(cmp.theory_loss, abs=1e-8)


def test_threshold_and_status() -> None:
    res = linear_vae(Sxx=np.diag([4.0, 1.02, 0.25]), beta=1.0, eta_enc=3.0)
    assert res.status == ["active", "indeterminate", "collapsed"]
    np.testing.assert_array_equal(res.collapsed, [False, False, True])  # 1.02 > 1: active, but barely
    assert res.sigma[2] == 3.0  # a collapsed mode sits at the prior
    assert res.kl_per_dim[0] == pytest.approx(0.5 * np.log(4.0))
    assert not res.complete_collapse
    assert linear_vae(Sxx=np.diag([0.9, 0.5]), beta=1.0).complete_collapse


def test_collapse_independent_of_eta_enc() -> None:
    A = np.diag([3.0, 1.5, 0.4])
    base = linear_vae(Sxx=A, beta=1.2)
    for ee in (0.1, 1.0, 7.0):
        np.testing.assert_array_equal(linear_vae(Sxx=A, beta=1.2, eta_enc=ee).collapsed, base.collapsed)


def test_ppca_special_case() -> None:
    """beta = 1, eta_enc = 1, eta_dec = s: U columns = U_q (Lambda_q - s^2)^{1/2} (Lucas et al.)."""
    eig = np.array([5.0, 2.0, 0.9, 0.3])
    s2 = 1.0
    res = linear_vae(Sxx=np.diag(eig), beta=1.0, eta_enc=1.0, eta_dec=np.sqrt(s2))
    np.testing.assert_allclose(res.omega, np.sqrt(np.maximum(eig - s2, 0)))
    np.testing.assert_array_equal(res.collapsed, eig <= s2)


def test_fixed_sigma_reports_mean_and_prior_separately() -> None:
    res = linear_vae(Sxx=np.diag([4.0, 0.01]), beta=1.0, sigma=[0.5, 0.7])
    np.testing.assert_array_equal(res.mean_collapsed, [False, True])
    np.testing.assert_array_equal(res.posterior_equals_prior, [False, False])  # sigma != eta_enc
    assert res.kl_per_dim[1] > 0
    assert not res.learnable_sigma


def test_to_dict_is_json() -> None:
    d = linear_vae(Sxx=np.diag([2.0, 0.5])).to_dict()
    text = json.dumps(d)
    assert set(["omega", "lam", "sigma", "kl_per_dim", "collapsed", "status", "loss"]) <= set(d)
    assert json.loads(text)["collapsed"] == [False, True]
