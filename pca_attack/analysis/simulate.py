"""PyTorch trainers for the linear VAE / CVAE / HVAE, to check the closed forms against training.

Two ways to train the same models:

* ``fit_population`` minimises the exact population objective (expectations written in terms of the
  second moments) with L-BFGS in float64 from several random starts;
* ``fit_minibatch`` minimises the reparameterised minibatch negative ELBO on samples with Adam
  (``lr`` then ``lr_final``), which is what users actually do.

``theory_vs_trained`` runs the calculator and a trainer on the same data and returns both side by
side.  The losses match the calculators' ``loss`` (Gaussian normalising constants dropped).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from torch import Tensor, nn

from pca_attack.analysis.linear_cvae import linear_cvae
from pca_attack.analysis.linear_hvae import linear_hvae
from pca_attack.analysis.linear_vae import linear_vae
from pca_attack.analysis.moments import FloatArray, InvalidParameterError, Moments, ResultMixin, resolve_moments
from pca_attack.analysis.population import (
    HWeights,
    Layout,
    Objective,
    cvae_objective,
    hvae_objective,
    minimize_restarts,
    vae_objective,
)
from pca_attack.analysis.torch_models import (
    DT,
    LinearCVAEModel,
    LinearHVAEModel,
    LinearVAEModel,
    build_model,
    split_params,
)

Kind = Literal["vae", "cvae", "hvae"]

__all__ = [
    "Kind",
    "LinearCVAEModel",
    "LinearHVAEModel",
    "LinearVAEModel",
    "TheoryComparison",
    "build_model",
    "fit_minibatch",
    "fit_population",
    "lbfgs_minimize",
    "population_objective",
    "theory_vs_trained",
]


def _tensors(m: Moments) -> tuple[Tensor, Tensor, Tensor]:
    A = torch.as_tensor(m.Sxx, dtype=DT)
    B = torch.as_tensor(m.Syy if m.Syy is not None else m.Sxx, dtype=DT)
    C = torch.as_tensor(m.Sxy if m.Sxy is not None else m.Sxx, dtype=DT)
    return A, B, C


def lbfgs_minimize(params: list[Tensor], loss_fn: Any, max_iter: int = 3000) -> float:
    """Minimise ``loss_fn()`` (a scalar tensor) over float64 leaf tensors with SciPy's L-BFGS-B."""
    sizes = [p.numel() for p in params]

    def value_and_grad(v: FloatArray) -> tuple[float, FloatArray]:
        with torch.no_grad():
            for p, chunk in zip(params, np.split(v, np.cumsum(sizes)[:-1]), strict=True):
                p.copy_(torch.as_tensor(chunk, dtype=DT).view_as(p))
        for p in params:
            p.grad = None
        loss = loss_fn()
        loss.backward()
        grad = np.concatenate([p.grad.numpy().ravel() if p.grad is not None else np.zeros(p.numel()) for p in params])
        return float(loss.detach()), grad

    x0 = np.concatenate([p.detach().numpy().ravel() for p in params])
    res = minimize(
        value_and_grad,
        x0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-11, "maxcor": 30},
    )
    value, _ = value_and_grad(res.x)
    return value


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread (tiny matrices; threads only contend) when threadpoolctl is present."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(limits=1):
        yield


def population_objective(kind: Kind, m: Moments, *, latent_dim: int, **params: Any) -> tuple[Layout, Objective]:
    """NumPy objective + gradient equal to ``build_model(kind, ...).population_loss``."""
    A, B, C = (t.numpy() for t in _tensors(m))
    w, extra = split_params(kind, params)
    if isinstance(w, HWeights):
        return hvae_objective(A, latent_dim, w)
    if kind == "cvae":
        return cvae_objective(A, B, C, latent_dim, w)
    sigma = extra.get("sigma")
    fixed = None if sigma is None else np.broadcast_to(np.asarray(sigma, dtype=np.float64), (latent_dim,)).copy()
    return vae_objective(A, B, C, latent_dim, w, sigma=fixed)


def fit_population(
    kind: Kind, m: Moments, *, latent_dim: int, restarts: int = 4, max_iter: int = 5000, seed: int = 0, **params: Any
) -> tuple[nn.Module, float]:
    """Minimise the exact population objective with L-BFGS from ``restarts`` random starts; best wins.

    The optimisation runs on the NumPy objective (fast); the optimum is loaded into the PyTorch model.
    """
    lay, f = population_objective(kind, m, latent_dim=latent_dim, **dict(params))
    with single_threaded_blas():
        best, value = minimize_restarts(lay, f, restarts=restarts, seed=seed, max_iter=max_iter)
    model = build_model(kind, m, latent_dim=latent_dim, seed=seed, **params)
    with torch.no_grad():
        for name, arr in best.items():
            getattr(model, name).copy_(torch.as_tensor(arr, dtype=DT))
    return model, value


def fit_minibatch(
    kind: Kind,
    X: ArrayLike,
    Y: ArrayLike | None,
    *,
    latent_dim: int,
    steps: int = 30_000,
    batch_size: int = 128,
    lr: float = 3e-3,
    lr_final: float = 3e-4,
    switch: float = 0.5,
    average_last: float = 0.1,
    seed: int = 0,
    **params: Any,
) -> nn.Module:
    """Adam on the reparameterised minibatch negative ELBO; ``lr`` for ``switch`` of the steps, then ``lr_final``.

    The returned parameters are averaged over the last ``average_last`` fraction of the steps
    (Polyak-Ruppert averaging), which removes most of the minibatch jitter; 0 disables it.
    """
    m = resolve_moments(X=X, Y=Y)
    x = torch.as_tensor(np.asarray(X, dtype=np.float64), dtype=DT)
    y = torch.as_tensor(np.asarray(Y if Y is not None else X, dtype=np.float64), dtype=DT)
    model = build_model(kind, m, latent_dim=latent_dim, seed=seed, **params)
    gen = torch.Generator().manual_seed(seed + 12345)
    n = x.shape[0]
    bs = min(batch_size, n)
    trainable = [p for p in model.parameters() if p.requires_grad]
    avg_start = steps - max(1, int(average_last * steps)) if average_last > 0 else steps
    sums = [torch.zeros_like(p) for p in trainable]
    opt = torch.optim.Adam(trainable, lr=lr)
    for step in range(steps):
        if step == int(switch * steps):
            for group in opt.param_groups:
                group["lr"] = lr_final
        idx = torch.randint(0, n, (bs,), generator=gen) if bs < n else slice(None)
        opt.zero_grad()
        loss = model.minibatch_loss(x[idx], y[idx], gen)  # type: ignore[operator]
        loss.backward()
        opt.step()
        if step >= avg_start:
            with torch.no_grad():
                for acc, p in zip(sums, trainable, strict=True):
                    acc += p
    if avg_start < steps:
        with torch.no_grad():
            for acc, p in zip(sums, trainable, strict=True):
                p.copy_(acc / (steps - avg_start))
    return model


@dataclass
class TheoryComparison(ResultMixin):
    """Closed-form prediction and trained values side by side (sorted per quantity)."""

    kind: str
    method: str
    theory: dict[str, FloatArray]
    trained: dict[str, FloatArray]
    max_abs_diff: dict[str, float]
    theory_loss: float
    trained_loss: float
    extra: dict[str, Any] = field(default_factory=dict)


def _sorted(values: dict[str, FloatArray]) -> dict[str, FloatArray]:
    return {k: np.sort(np.asarray(v, dtype=np.float64))[::-1].copy() for k, v in values.items()}


def theory_vs_trained(
    kind: Kind,
    X: ArrayLike | None = None,
    Y: ArrayLike | None = None,
    *,
    Sxx: ArrayLike | None = None,
    Syy: ArrayLike | None = None,
    Sxy: ArrayLike | None = None,
    method: Literal["population", "minibatch"] = "population",
    latent_dim: int | None = None,
    restarts: int = 4,
    steps: int = 30_000,
    batch_size: int = 128,
    lr: float = 3e-3,
    lr_final: float = 3e-4,
    seed: int = 0,
    **params: Any,
) -> TheoryComparison:
    """Run the calculator and a trainer on the same (empirical, uncentred) moments and compare.

    ``params`` are the model's keyword arguments (``beta``, ``eta_enc``, ``eta_dec``, ``sigma`` for
    the VAE; ``beta1``, ``beta2``, ``sigma1``, ``sigma2`` for the HVAE).  ``method='minibatch'`` needs
    data ``X`` (and ``Y``).
    """
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    m = resolve_moments(X=X, Y=Y, Sxx=Sxx, Syy=Syy, Sxy=Sxy)
    calc: dict[str, Any] = {"vae": linear_vae, "cvae": linear_cvae, "hvae": linear_hvae}
    if kind not in calc:
        raise InvalidParameterError(f"kind must be 'vae', 'cvae' or 'hvae', got {kind!r}.")
    moment_args = {"Sxx": m.Sxx} | ({} if kind == "hvae" or m.Syy is None else {"Syy": m.Syy, "Sxy": m.Sxy})
    theory = calc[kind](latent_dim=latent_dim, **moment_args, **params)
    k = len(theory.omega)
    if method == "population":
        model, trained_loss = fit_population(kind, m, latent_dim=k, restarts=restarts, seed=seed, **params)
    elif method == "minibatch":
        if X is None:
            raise InvalidParameterError("method='minibatch' needs data X (and Y), not moments.")
        model = fit_minibatch(
            kind, X, Y, latent_dim=k, steps=steps, batch_size=batch_size, lr=lr, lr_final=lr_final, seed=seed, **params
        )
        with torch.no_grad():
            trained_loss = float(model.population_loss(*_tensors(m)))  # type: ignore[operator]
    else:
        raise InvalidParameterError(f"method must be 'population' or 'minibatch', got {method!r}.")
    trained = _sorted(model.summary(m))  # type: ignore[operator]
    th = _sorted({key: getattr(theory, key) for key in trained})
    return TheoryComparison(
        kind=kind,
        method=method,
        theory=th,
        trained=trained,
        max_abs_diff={key: float(np.max(np.abs(th[key] - trained[key]))) for key in trained},
        theory_loss=float(theory.loss),
        trained_loss=trained_loss,
    )
