"""Input handling: data vs moments, centering, and clear errors for bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from pca_attack.analysis import (
    AnalysisInputError,
    InvalidParameterError,
    NotPSDError,
    ShapeMismatchError,
    SingularMomentError,
    linear_cvae,
    linear_hvae,
    linear_vae,
    moments_from_data,
)


def test_data_and_moments_agree() -> None:
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(200, 3)), rng.normal(size=(200, 2))
    m = moments_from_data(X, Y)
    a = linear_cvae(X, Y, beta=0.3)
    b = linear_cvae(Sxx=m.Sxx, Syy=m.Syy, Sxy=m.Sxy, beta=0.3)
    np.testing.assert_allclose(a.kappa, b.kappa)
    assert a.loss == pytest.approx(b.loss)


def test_center_equals_subtracting_means() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 4)) + 5.0
    centered = linear_vae(X, center=True, beta=0.5)
    manual = linear_vae(X - X.mean(axis=0), beta=0.5)
    raw = linear_vae(X, beta=0.5)
    np.testing.assert_allclose(centered.zeta, manual.zeta)
    assert raw.zeta[0] > centered.zeta[0] + 5  # the mean dominates uncentered moments


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_beta(beta: float) -> None:
    with pytest.raises(InvalidParameterError, match="beta must be a finite number > 0"):
        linear_vae(Sxx=np.eye(2), beta=beta)


def test_not_psd() -> None:
    with pytest.raises(NotPSDError, match="not positive semi-definite"):
        linear_vae(Sxx=np.array([[1.0, 0.0], [0.0, -0.5]]))
    with pytest.raises(NotPSDError, match="not symmetric"):
        linear_vae(Sxx=np.array([[1.0, 0.3], [0.0, 1.0]]))
    with pytest.raises(NotPSDError, match="joint moment"):
        linear_cvae(Sxx=np.eye(1), Syy=np.eye(1), Sxy=np.array([[2.0]]))


def test_singular() -> None:
    X = np.random.default_rng(0).normal(size=(50, 2))
    X = np.hstack([X, X[:, :1]])  # duplicated feature
    with pytest.raises(SingularMomentError, match="ridge"):
        linear_cvae(X, X[:, :2])
    linear_vae(X)  # the plain VAE does not invert Sxx: rank-deficient data is fine


def test_shape_mismatch() -> None:
    with pytest.raises(ShapeMismatchError, match="same number of rows"):
        linear_cvae(np.zeros((5, 2)) + 1, np.ones((4, 2)))
    with pytest.raises(ShapeMismatchError, match="Sxy must have shape"):
        linear_cvae(Sxx=np.eye(2), Syy=np.eye(3), Sxy=np.zeros((3, 2)))
    with pytest.raises(ShapeMismatchError, match="2-D"):
        linear_vae(np.ones(5))
    with pytest.raises(ShapeMismatchError, match="square"):
        linear_vae(Sxx=np.ones((2, 3)))


def test_other_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="not both"):
        linear_vae(np.ones((3, 2)), Sxx=np.eye(2))
    with pytest.raises(AnalysisInputError, match="needs outputs Y"):
        linear_cvae(np.ones((3, 2)))
    with pytest.raises(AnalysisInputError, match="NaN"):
        linear_vae(np.array([[1.0, np.nan]]))
    with pytest.raises(AnalysisInputError, match="center=True needs data"):
        linear_vae(Sxx=np.eye(2), center=True)
    with pytest.raises(InvalidParameterError, match="latent_dim"):
        linear_hvae(Sxx=np.eye(2), latent_dim=0)
    with pytest.raises(InvalidParameterError, match="sigma1"):
        linear_hvae(Sxx=np.eye(2), sigma1=0)
    with pytest.raises(InvalidParameterError, match="one entry per latent slot"):
        linear_vae(Sxx=np.eye(2), sigma=[0.5, 0.5, 0.5])
