"""Neural-collapse metrics: exact zeros on a simplex ETF, known non-zero cases, perturbed helpers."""

from __future__ import annotations

import numpy as np
import pytest

from pca_attack.analysis import (
    AnalysisInputError,
    ShapeMismatchError,
    neural_collapse_metrics,
    noise_baselines,
    perturbed_collapse,
    simplex_etf,
)


def etf_problem(C: int = 5, d: int = 8, per_class: int = 6, offset: float = 0.0):
    M = simplex_etf(C, d, scale=2.0, seed=1)  # (C, d)
    labels = np.repeat(np.arange(C), per_class)
    return M[labels] + offset, labels, 3.0 * M


@pytest.mark.parametrize("global_mean", ["sample", "class"])
@pytest.mark.parametrize("C", [2, 3, 6])
def test_all_metrics_zero_on_simplex_etf(C: int, global_mean: str) -> None:
    H, labels, W = etf_problem(C=C)
    res = neural_collapse_metrics(H, labels, W, np.zeros(C), global_mean=global_mean)
    values = {k: v for k, v in res.to_dict().items() if isinstance(v, float)}
    assert len(values) == 11
    for name, value in values.items():
        assert abs(value) < 1e-12, (name, value)


def test_etf_geometry() -> None:
    M = simplex_etf(4, 6)
    G = M @ M.T
    np.testing.assert_allclose(np.diag(G), 1.0)
    np.testing.assert_allclose(G[~np.eye(4, dtype=bool)], -1 / 3)


def test_within_class_spread_gives_positive_nc1() -> None:
    H, labels, W = etf_problem()
    noise = np.random.default_rng(0).normal(size=H.shape) * 0.3
    res = neural_collapse_metrics(H + noise, labels, W)
    assert res.nc1 > 1e-3 and res.nc1_trace_ratio > 1e-3
    assert res.nc3 is not None and res.nc3 > 0


def test_known_values_two_classes() -> None:
    # 1-D features: class means -1 and +1, within-class deviations +-0.5
    H = np.array([[-1.5], [-0.5], [0.5], [1.5]])
    labels = np.array([0, 0, 1, 1])
    res = neural_collapse_metrics(H, labels)
    assert res.nc1_trace_ratio == pytest.approx(0.25 / 1.0)
    assert res.nc1 == pytest.approx(0.25 / 1.0 / 2)
    assert res.nc2_equiangular_means == pytest.approx(0.0)


def test_nc4_counts_disagreements() -> None:
    H, labels, W = etf_problem(C=3, per_class=4)
    b = np.array([100.0, 0.0, 0.0])  # bias forces class 0 everywhere
    res = neural_collapse_metrics(H, labels, W, b)
    assert res.nc4 == pytest.approx(2 / 3)


def test_bad_inputs() -> None:
    H, labels, W = etf_problem(C=3)
    with pytest.raises(ShapeMismatchError, match="labels must have shape"):
        neural_collapse_metrics(H, labels[:-1])
    with pytest.raises(ShapeMismatchError, match="W must have shape"):
        neural_collapse_metrics(H, labels, W.T)
    with pytest.raises(AnalysisInputError, match="classes without samples"):
        neural_collapse_metrics(H, np.where(labels == 1, 2, labels))
    with pytest.raises(AnalysisInputError, match="class means are equal"):
        neural_collapse_metrics(np.ones((4, 2)), [0, 0, 1, 1])
    with pytest.raises(AnalysisInputError, match="at least 2 classes"):
        neural_collapse_metrics(H, np.zeros(len(labels), dtype=int))


def test_perturbed_identical_is_zero_shift() -> None:
    H, labels, W = etf_problem(C=4)
    res = perturbed_collapse(H, H.copy(), labels, W)
    np.testing.assert_allclose(res.angle_deg, 0.0, atol=1e-6)
    np.testing.assert_allclose(res.distance, 0.0, atol=1e-12)
    assert res.leap_fraction == 0.0
    assert res.perturbed.nc1 == pytest.approx(res.clean.nc1)


def test_targeted_leap_between_vertices() -> None:
    H, labels, W = etf_problem(C=4)
    target = (labels + 1) % 4
    H_adv = H[np.searchsorted(labels, target)]  # each sample moved onto its target class's vertex
    by_true = perturbed_collapse(H, H_adv, labels, W)
    assert by_true.leap_fraction == 1.0
    np.testing.assert_array_equal(by_true.nearest_clean_class, [1, 2, 3, 0])
    np.testing.assert_allclose(by_true.angle_deg, np.degrees(np.arccos(-1 / 3)))
    by_target = perturbed_collapse(H, H_adv, labels, W, perturbed_labels=target)
    assert by_target.leap_fraction == 0.0 and by_target.perturbed.nc1 < 1e-12


def test_noise_baselines() -> None:
    X = np.zeros((100, 3))
    gauss, sign = noise_baselines(X, eps=0.1, seed=0)
    assert np.allclose(np.abs(sign), 0.1)
    assert 0.08 < gauss.std() < 0.12
