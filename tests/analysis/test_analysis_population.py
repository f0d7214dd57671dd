"""The NumPy population objectives equal the PyTorch models' losses, value and gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pca_attack.analysis import moments_from_data
from pca_attack.analysis.simulate import build_model, population_objective

CASES = [
    ("vae", {"beta": 0.7, "eta_enc": 1.2, "eta_dec": 0.8}),
    ("vae", {"beta": 1.3, "sigma": [0.4, 0.9, 1.1]}),
    ("cvae", {"beta": 0.6, "eta_enc": 0.9, "eta_dec": 1.1}),
    ("hvae", {"beta1": 1.4, "beta2": 0.6, "sigma1": 0.7, "eta_enc": 1.1, "eta_dec": 0.9}),
    ("hvae", {"beta1": 1.0, "beta2": 2.0, "sigma1": 0.7, "sigma2": 0.5}),
]


@pytest.mark.parametrize(("kind", "params"), CASES)
def test_numpy_objective_matches_torch(kind: str, params: dict) -> None:
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(50, 4)), rng.normal(size=(50, 3))
    m = moments_from_data(X, Y if kind != "hvae" else None)
    if kind == "vae":
        m = moments_from_data(X[:, :3], Y)
    lay, f = population_objective(kind, m, latent_dim=3, **dict(params))  # type: ignore[arg-type]
    model = build_model(kind, m, latent_dim=3, seed=1, **params)  # type: ignore[arg-type]
    vec = lay.pack({name: getattr(model, name).detach().numpy() for name in lay.shapes})
    value, grad = f(vec)
    A, B, C = (torch.as_tensor(M if M is not None else m.Sxx) for M in (m.Sxx, m.Syy, m.Sxy))
    loss = model.population_loss(A, B, C)
    loss.backward()
    torch_grad = lay.pack({name: getattr(model, name).grad.numpy() for name in lay.shapes})
    assert value == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(grad, torch_grad, rtol=1e-9, atol=1e-12)
