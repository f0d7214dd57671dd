"""Two-level linear HVAE closed forms (learnable Sigma2 cases I/II, both fixed) vs optimisation."""

from __future__ import annotations

import numpy as np
import pytest

from pca_attack.analysis import linear_hvae
from pca_attack.analysis.simulate import theory_vs_trained


def random_spd(eigs: list[float], seed: int = 0) -> np.ndarray:
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigs), len(eigs))))
    return np.asarray(Q @ np.diag(eigs) @ Q.T)


CASES = [
    # case I (sigma1^2 > beta2/beta1 eta_dec^2): z1 means collapse below sqrt(beta2) eta_dec
    ({"beta1": 1.5, "beta2": 0.7, "sigma1": 0.8, "eta_dec": 0.9, "eta_enc": 1.1}, "I"),
    ({"beta1": 1.0, "beta2": 1.0, "sigma1": 1.3}, "I"),
    # case II: small sigma1, z2 collapses for small theta
    ({"beta1": 2.0, "beta2": 1.0, "sigma1": 0.5}, "II"),
    # both variances fixed
    ({"beta1": 1.0, "beta2": 1.0, "sigma1": 0.8, "sigma2": 0.6}, "fixed"),
    ({"beta1": 1.0, "beta2": 0.5, "sigma1": 0.6, "sigma2": 1.2, "eta_enc": 0.9}, "fixed"),
]


@pytest.mark.parametrize(("params", "case"), CASES)
def test_closed_form_matches_optimisation(params: dict, case: str) -> None:
    A = random_spd([4.0, 2.2, 1.44, 0.35, 0.1], seed=4)
    res = linear_hvae(Sxx=A, **params)
    assert res.case == case
    cmp = theory_vs_trained("hvae", Sxx=A, restarts=4, **params)
    for key, diff in cmp.max_abs_diff.items():
        assert diff < 1e-4, (key, cmp.theory[key], cmp.trained[key])
    assert cmp.trained_loss == pytest.approx(cmp.theory_loss, abs=1e-8)


def test_mean_collapse_and_posterior_prior_are_separate() -> None:
    # case I with sigma1^2 > beta2/beta1 eta_dec^2: small modes lose z1's mean but z2 is still used
    res = linear_hvae(Sxx=np.diag([4.0, 0.25]), beta1=1.0, beta2=1.0, sigma1=1.3)
    np.testing.assert_array_equal(res.mean_collapsed, [False, True])
    np.testing.assert_array_equal(res.z2_collapsed, [False, False])
    np.testing.assert_array_equal(res.posterior_equals_prior, [False, False])
    res2 = linear_hvae(Sxx=np.diag([4.0, 0.25]), beta1=2.0, beta2=1.0, sigma1=0.5)
    np.testing.assert_array_equal(res2.z2_collapsed, [False, True])
    assert res2.posterior_equals_prior[1] and res2.sigma[1] == pytest.approx(1.0)


def test_smaller_beta2_larger_beta1_reduce_collapse() -> None:
    A = np.diag([3.0, 1.5, 0.9, 0.5, 0.2])
    case_one = {"beta1": 1.0, "sigma1": 1.3}
    assert linear_hvae(Sxx=A, beta2=0.3, **case_one).mean_collapsed.sum() == 1
    assert linear_hvae(Sxx=A, beta2=1.0, **case_one).mean_collapsed.sum() == 3
    case_two = {"beta2": 1.0, "sigma1": 0.5}
    assert linear_hvae(Sxx=A, beta1=4.0, **case_two).z2_collapsed.sum() == 3
    assert linear_hvae(Sxx=A, beta1=1.0, **case_two).z2_collapsed.sum() == 5
