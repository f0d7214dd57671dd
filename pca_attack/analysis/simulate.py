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
import math
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
    Layout,
    Objective,
    cvae_objective,
    hvae_objective,
    minimize_restarts,
    vae_objective,
)

Kind = Literal["vae", "cvae", "hvae"]
DT = torch.float64


def _p(*shape: int, gen: torch.Generator, scale: float) -> nn.Parameter:
    return nn.Parameter(scale * torch.randn(*shape, generator=gen, dtype=DT))


def _kl_gauss(mean_sq: Tensor, var: Tensor, prior_var: float) -> Tensor:
    """Per-dimension KL(N(m, var) || N(0, prior_var)) given E[m^2] (all tensors broadcast)."""
    return 0.5 * ((mean_sq + var) / prior_var - 1 - torch.log(var / prior_var))


class LinearVAEModel(nn.Module):
    """q(z|x) = N(W^T x, diag(sigma^2)), p(y|z) = N(U z, eta_dec^2 I)."""

    def __init__(
        self,
        dx: int,
        dy: int,
        dz: int,
        *,
        beta: float = 1.0,
        eta_enc: float = 1.0,
        eta_dec: float = 1.0,
        sigma: ArrayLike | float | None = None,
        seed: int = 0,
        init_scale: float = 0.5,
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.beta, self.ee, self.ed = beta, eta_enc, eta_dec
        self.W = _p(dx, dz, gen=g, scale=init_scale)  # (dx, dz)
        self.U = _p(dy, dz, gen=g, scale=init_scale)  # (dy, dz)
        self.log_sigma = _p(dz, gen=g, scale=init_scale)
        if sigma is not None:
            s = torch.as_tensor(np.broadcast_to(np.asarray(sigma, dtype=np.float64), (dz,)).copy(), dtype=DT)
            self.log_sigma = nn.Parameter(torch.log(s), requires_grad=False)

    def population_loss(self, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        var = torch.exp(2 * self.log_sigma)
        UW = self.U @ self.W.T  # (dy, dx)
        recon = torch.trace(B) - 2 * torch.trace(UW @ C) + torch.trace(UW @ A @ UW.T) + (self.U**2 * var).sum()
        mean_sq = torch.diagonal(self.W.T @ A @ self.W)
        return recon / (2 * self.ed**2) + self.beta * _kl_gauss(mean_sq, var, self.ee**2).sum()

    def minibatch_loss(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        mu = x @ self.W  # (B, dz)
        sigma = torch.exp(self.log_sigma)
        z = mu + sigma * torch.randn(mu.shape, generator=gen, dtype=DT)
        recon = ((z @ self.U.T - y) ** 2).sum(dim=1).mean()
        kl = _kl_gauss(mu**2, sigma**2, self.ee**2).sum(dim=1).mean()
        return recon / (2 * self.ed**2) + self.beta * kl

    def summary(self, m: Moments) -> dict[str, FloatArray]:
        with torch.no_grad():
            A = torch.as_tensor(m.Sxx, dtype=DT)
            var = torch.exp(2 * self.log_sigma)
            if not self.log_sigma.requires_grad and bool(torch.all(var == var[0])):
                # Fixed isotropic Sigma: the latent basis is not identified, so use singular values.
                evals, V = torch.linalg.eigh(A)
                lam = torch.linalg.svdvals((V * evals.clamp_min(0).sqrt()) @ V.T @ self.W)
                var = torch.sort(var).values
                return _per_dim(torch.linalg.svdvals(self.U), lam**2, var, _kl_gauss(lam**2, var, self.ee**2))
            lam2 = torch.diagonal(self.W.T @ A @ self.W)
            return _per_dim(self.U.norm(dim=0), lam2, var, _kl_gauss(lam2, var, self.ee**2))


class LinearCVAEModel(nn.Module):
    """q(z|x,y) = N(W1 x + W2 y, diag(sigma^2)), p(y|z,x) = N(U1 z + U2 x, eta_dec^2 I)."""

    def __init__(
        self,
        dx: int,
        dy: int,
        dz: int,
        *,
        beta: float = 1.0,
        eta_enc: float = 1.0,
        eta_dec: float = 1.0,
        seed: int = 0,
        init_scale: float = 0.5,
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.beta, self.ee, self.ed = beta, eta_enc, eta_dec
        self.W1, self.W2 = _p(dz, dx, gen=g, scale=init_scale), _p(dz, dy, gen=g, scale=init_scale)
        self.U1, self.U2 = _p(dy, dz, gen=g, scale=init_scale), _p(dy, dx, gen=g, scale=init_scale)
        self.log_sigma = _p(dz, gen=g, scale=init_scale)

    def population_loss(self, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        S = torch.cat([torch.cat([A, C], 1), torch.cat([C.T, B], 1)], 0)  # joint moment of (x, y)
        dy = B.shape[0]
        enc = torch.cat([self.W1, self.W2], 1)  # (dz, dx+dy)
        P = torch.cat([self.U2 + self.U1 @ self.W1, self.U1 @ self.W2 - torch.eye(dy, dtype=DT)], 1)
        var = torch.exp(2 * self.log_sigma)
        recon = torch.trace(P @ S @ P.T) + (self.U1**2 * var).sum()
        mean_sq = torch.diagonal(enc @ S @ enc.T)
        return recon / (2 * self.ed**2) + self.beta * _kl_gauss(mean_sq, var, self.ee**2).sum()

    def minibatch_loss(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        mu = x @ self.W1.T + y @ self.W2.T
        sigma = torch.exp(self.log_sigma)
        z = mu + sigma * torch.randn(mu.shape, generator=gen, dtype=DT)
        recon = ((z @ self.U1.T + x @ self.U2.T - y) ** 2).sum(dim=1).mean()
        kl = _kl_gauss(mu**2, sigma**2, self.ee**2).sum(dim=1).mean()
        return recon / (2 * self.ed**2) + self.beta * kl

    def summary(self, m: Moments) -> dict[str, FloatArray]:
        assert m.Syy is not None and m.Sxy is not None
        with torch.no_grad():
            S = torch.as_tensor(np.block([[m.Sxx, m.Sxy], [m.Sxy.T, m.Syy]]), dtype=DT)
            enc = torch.cat([self.W1, self.W2], 1)
            lam2 = torch.diagonal(enc @ S @ enc.T)
            var = torch.exp(2 * self.log_sigma)
            return _per_dim(self.U1.norm(dim=0), lam2, var, _kl_gauss(lam2, var, self.ee**2))


class LinearHVAEModel(nn.Module):
    """Two-level linear HVAE with fixed sigma1 and learnable (or fixed) diagonal Sigma2."""

    def __init__(
        self,
        dx: int,
        dz: int,
        *,
        beta1: float = 1.0,
        beta2: float = 1.0,
        sigma1: float = 1.0,
        eta_enc: float = 1.0,
        eta_dec: float = 1.0,
        sigma2: float | None = None,
        seed: int = 0,
        init_scale: float = 0.5,
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.b1, self.b2, self.s1, self.ee, self.ed = beta1, beta2, sigma1, eta_enc, eta_dec
        self.W1, self.U1 = _p(dz, dx, gen=g, scale=init_scale), _p(dx, dz, gen=g, scale=init_scale)
        self.W2, self.U2 = _p(dz, dz, gen=g, scale=init_scale), _p(dz, dz, gen=g, scale=init_scale)
        self.log_sigma = _p(dz, gen=g, scale=init_scale)
        if sigma2 is not None:
            self.log_sigma = nn.Parameter(torch.full((dz,), math.log(sigma2), dtype=DT), requires_grad=False)

    def _kl1_const(self, d1: int) -> float:
        return -0.5 * d1 * (1 + math.log(self.s1**2 / self.ed**2))

    def population_loss(self, A: Tensor, B: Tensor | None = None, C: Tensor | None = None) -> Tensor:
        d1 = self.W1.shape[0]
        eye = torch.eye(d1, dtype=DT)
        var2 = torch.exp(2 * self.log_sigma)
        UW = self.U1 @ self.W1
        recon = torch.trace(A) - 2 * torch.trace(UW @ A) + torch.trace(UW @ A @ UW.T) + self.s1**2 * (self.U1**2).sum()
        P = self.W1 @ A @ self.W1.T + self.s1**2 * eye  # E[z1 z1^T]
        T = eye - self.U2 @ self.W2
        kl1 = (torch.trace(T @ P @ T.T) + (self.U2**2 * var2).sum()) / (2 * self.ed**2) + self._kl1_const(d1)
        kl2 = _kl_gauss(torch.diagonal(self.W2 @ P @ self.W2.T), var2, self.ee**2).sum()
        return recon / (2 * self.ed**2) + self.b1 * kl1 + self.b2 * kl2

    def minibatch_loss(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        d1 = self.W1.shape[0]
        z1 = x @ self.W1.T + self.s1 * torch.randn((x.shape[0], d1), generator=gen, dtype=DT)
        mu2 = z1 @ self.W2.T
        sigma2 = torch.exp(self.log_sigma)
        z2 = mu2 + sigma2 * torch.randn(mu2.shape, generator=gen, dtype=DT)
        recon = ((z1 @ self.U1.T - x) ** 2).sum(dim=1).mean()
        kl1 = ((z1 - z2 @ self.U2.T) ** 2).sum(dim=1).mean() / (2 * self.ed**2) + self._kl1_const(d1)
        kl2 = _kl_gauss(mu2**2, sigma2**2, self.ee**2).sum(dim=1).mean()
        return recon / (2 * self.ed**2) + self.b1 * kl1 + self.b2 * kl2

    def summary(self, m: Moments) -> dict[str, FloatArray]:
        with torch.no_grad():
            A = torch.as_tensor(m.Sxx, dtype=DT)
            evals, V = torch.linalg.eigh(A)
            A_half = (V * evals.clamp_min(0).sqrt()) @ V.T
            lam = torch.linalg.svdvals(self.W1 @ A_half)
            return {
                "omega": np.sort(torch.linalg.svdvals(self.U2).numpy())[::-1].copy(),
                "lam": np.sort(lam.numpy())[::-1].copy(),
                "sigma": np.sort(torch.exp(self.log_sigma).numpy()).copy(),
            }


def _per_dim(omega: Tensor, lam2: Tensor, var: Tensor, kl: Tensor) -> dict[str, FloatArray]:
    """Per-latent-dimension values, dimensions ordered by KL (descending)."""
    order = torch.argsort(kl, descending=True)
    return {
        "omega": omega[order].numpy(),
        "lam": lam2.clamp_min(0).sqrt()[order].numpy(),
        "sigma": var.sqrt()[order].numpy(),
        "kl_per_dim": kl[order].numpy(),
    }


def build_model(kind: Kind, m: Moments, *, latent_dim: int, seed: int, **params: Any) -> nn.Module:
    """Create the PyTorch model for ``kind`` sized to the moments ``m``."""
    if kind == "vae":
        return LinearVAEModel(m.dx, m.dy, latent_dim, seed=seed, **params)
    if kind == "cvae":
        return LinearCVAEModel(m.dx, m.dy, latent_dim, seed=seed, **params)
    if kind == "hvae":
        return LinearHVAEModel(m.dx, latent_dim, seed=seed, **params)
    raise InvalidParameterError(f"kind must be 'vae', 'cvae' or 'hvae', got {kind!r}.")


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
    if kind == "vae":
        sigma = params.pop("sigma", None)
        fixed = None if sigma is None else np.broadcast_to(np.asarray(sigma, dtype=np.float64), (latent_dim,)).copy()
        return vae_objective(A, B, C, latent_dim, sigma=fixed, **params)
    if kind == "cvae":
        return cvae_objective(A, B, C, latent_dim, **params)
    if kind == "hvae":
        return hvae_objective(A, latent_dim, **params)
    raise InvalidParameterError(f"kind must be 'vae', 'cvae' or 'hvae', got {kind!r}.")


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
