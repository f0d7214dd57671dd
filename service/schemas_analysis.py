"""Pydantic request/response models for the `/analysis` routes (theory calculators, NC metrics).

Matrices travel as nested lists (rows).  Every matrix must be rectangular, at most ``MAX_DIM`` rows
and columns, and a request may carry at most ``MAX_NUMBERS`` numbers in total.  The numeric bounds
are declared once, here: matrix entries are finite with ``|v| <= MAX_ENTRY``; positive scalars (beta,
sigma, eta) lie in ``[MIN_SCALE, MAX_SCALE]``; labels are class ids ``0..MAX_CLASSES-1``.  Raw JSON
``NaN``/``Infinity`` and overflowing literals (``1e309``) are therefore 422s, never 500s.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

MAX_DIM = 512
MAX_NUMBERS = 100_000
MAX_ROWS = 100_000  # data matrices may have many rows, but the total-number limit still applies
MAX_ENTRY = 1e100  # largest |entry| of a matrix: squares and sums of squares stay far from 1.8e308
MIN_SCALE, MAX_SCALE = 1e-12, 1e12  # range of beta, sigma, eta: the closed forms square and divide by them
MAX_CLASSES = MAX_DIM  # neural collapse: class ids 0..MAX_CLASSES-1 (W has one row per class)


def _rectangular(rows: list[list[float]]) -> list[list[float]]:
    """Rows of one length (emptiness and sizes are the schema's ``min_length``/``max_length``)."""
    if any(len(r) != len(rows[0]) for r in rows):
        raise ValueError("matrix rows have different lengths; send a rectangular list of rows")
    return rows


def _schema_within(lo: float, hi: float) -> Any:
    """The bounds as they appear in the OpenAPI schema (and no NaN/Infinity)."""
    return Field(allow_inf_nan=False, json_schema_extra={"minimum": lo, "maximum": hi})


def _check_within(lo: float, hi: float) -> AfterValidator:
    """The same bounds enforced with a readable message (pydantic would print 1e100 digit by digit)."""

    def check(value: float) -> float:
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}, got {value:g}")
        return value

    return AfterValidator(check)


Finite = Annotated[float, _schema_within(-MAX_ENTRY, MAX_ENTRY), _check_within(-MAX_ENTRY, MAX_ENTRY)]
Row = Annotated[list[Finite], Field(min_length=1, max_length=MAX_DIM)]
Data = Annotated[list[Row], Field(min_length=1, max_length=MAX_ROWS), AfterValidator(_rectangular)]
Moment = Annotated[list[Row], Field(min_length=1, max_length=MAX_DIM), AfterValidator(_rectangular)]
Positive = Annotated[float, _schema_within(MIN_SCALE, MAX_SCALE), _check_within(MIN_SCALE, MAX_SCALE)]
Label = Annotated[int, Field(strict=True, ge=0, lt=MAX_CLASSES)]  # JSON integers only: no true/1.0
Status = Literal["collapsed", "active", "indeterminate"]


def _count(*mats: list[list[float]] | list[float] | None) -> int:
    total = 0
    for m in mats:
        if m:
            total += sum(len(r) for r in m) if isinstance(m[0], list) else len(m)
    return total


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _total_size(self) -> _Request:
        mats = [getattr(self, name) for name in type(self).model_fields if isinstance(getattr(self, name), list)]
        n = _count(*mats)
        if n > MAX_NUMBERS:
            raise ValueError(
                f"request carries {n} numbers; at most {MAX_NUMBERS} are allowed (send moments instead of data)"
            )
        return self


class MomentsInput(_Request):
    """Either data rows (X, Y) or second moments (Sxx, Syy, Sxy)."""

    X: Data | None = Field(None, description="Inputs, one row per sample, shape (N, dx).")
    Y: Data | None = Field(None, description="Targets, one row per sample, shape (N, dy).")
    Sxx: Moment | None = Field(None, description="Uncentred second moment E[x x^T], (dx, dx).")
    Syy: Moment | None = Field(None, description="Uncentred second moment E[y y^T], (dy, dy).")
    Sxy: Moment | None = Field(None, description="Cross moment E[x y^T], (dx, dy).")
    center: bool = Field(False, description="Subtract sample means first (models with biases); data only.")
    latent_dim: int | None = Field(None, ge=1, le=MAX_DIM, description="Number of latent slots.")
    eta_enc: Positive = Field(1.0, description="Prior standard deviation eta_enc.")
    eta_dec: Positive = Field(1.0, description="Decoder standard deviation eta_dec.")


class LinearVAERequest(MomentsInput):
    """Linear (beta-)VAE; y = x unless Y (or Syy and Sxy) is given."""

    beta: Positive = Field(1.0, description="KL weight beta.")
    sigma: Positive | Annotated[list[Positive], Field(min_length=1, max_length=MAX_DIM)] | None = Field(
        None, description="Fixed encoder std (scalar or one per latent slot); omit to learn it."
    )


class LinearCVAERequest(MomentsInput):
    """Linear conditional VAE: x is the condition, y the target."""

    beta: Positive = Field(1.0, description="KL weight beta.")


class LinearHVAERequest(_Request):
    """Two-level linear hierarchical VAE of x."""

    X: Data | None = Field(None, description="Data, one row per sample, shape (N, dx).")
    Sxx: Moment | None = Field(None, description="Uncentred second moment E[x x^T], (dx, dx).")
    center: bool = Field(False, description="Subtract the sample mean first; data only.")
    latent_dim: int | None = Field(None, ge=1, le=MAX_DIM, description="d1 = d2, number of latent slots.")
    beta1: Positive = Field(1.0, description="Weight of the z1 KL term.")
    beta2: Positive = Field(1.0, description="Weight of the z2 KL term.")
    sigma1: Positive = Field(1.0, description="Fixed std of q(z1|x).")
    sigma2: Positive | None = Field(None, description="Fixed std of q(z2|z1); omit to learn Sigma2.")
    eta_enc: Positive = Field(1.0, description="Prior standard deviation eta_enc.")
    eta_dec: Positive = Field(1.0, description="Decoder standard deviation eta_dec.")


class NeuralCollapseRequest(_Request):
    """Features, labels and an optional linear classifier."""

    H: Data = Field(..., description="Features, one row per sample, shape (N, d).")
    labels: list[Label] = Field(
        ...,
        min_length=2,
        max_length=MAX_ROWS,
        description=f"Class ids 0..C-1, (N,), every class present (not renumbered), C <= N and C <= {MAX_CLASSES}.",
    )
    W: Moment | None = Field(None, description="Classifier weights, shape (C, d).")
    b: Annotated[list[Finite], Field(min_length=2, max_length=MAX_CLASSES)] | None = Field(
        None, description="Classifier bias, shape (C,)."
    )
    global_mean: Literal["sample", "class"] = Field("sample", description="Global mean: of samples or of class means.")


class _ModeResult(BaseModel):
    omega: list[float] = Field(..., description="Per-mode singular values of the decoder (U, U1 or U2).")
    lam: list[float] = Field(..., description="Per-mode singular values of the (whitened) encoder mean map.")
    sigma: list[float] = Field(..., description="Per-mode posterior standard deviations.")
    kl_per_dim: list[float] = Field(..., description="Per-mode KL of the posterior to the prior (without beta).")
    collapsed: list[bool] = Field(..., description="Per-mode: the encoder mean carries no information.")
    status: list[Status] = Field(..., description="Per-mode 'collapsed' / 'active' / 'indeterminate' (near threshold).")
    loss: float = Field(..., description="Objective (negative beta-ELBO per sample, constants dropped) at the optimum.")
    params: dict[str, float] = Field(..., description="Parameters used.")


class LinearVAEResponse(_ModeResult):
    zeta: list[float] = Field(..., description="Singular values of E[y x~^T] (x whitened) paired with each slot.")
    mean_collapsed: list[bool] = Field(..., description="Per-mode: encoder mean is zero.")
    posterior_equals_prior: list[bool] = Field(..., description="Per-mode: mean zero and sigma == eta_enc.")
    threshold: list[float] = Field(..., description="Per-mode: active iff zeta > threshold.")
    nll_constant: float = Field(..., description="d_y/2 log(2 pi eta_dec^2): add to loss for the full negative ELBO.")
    n_active: int = Field(..., description="Number of modes whose mean is not collapsed.")
    complete_collapse: bool = Field(..., description="Every mode collapsed.")
    learnable_sigma: bool = Field(..., description="Encoder variance optimised (False: fixed sigma given).")


class LinearCVAEResponse(_ModeResult):
    kappa: list[float] = Field(..., description="Eigenvalues of the residual covariance E = Syy - Sxy^T Sxx^-1 Sxy.")
    threshold: float = Field(..., description="beta * eta_dec^2: a mode is active iff kappa > threshold.")
    nll_constant: float = Field(..., description="d_y/2 log(2 pi eta_dec^2).")
    n_active: int = Field(..., description="Number of active modes.")
    U2: list[list[float]] = Field(..., description="Optimal decoder skip weights Sxy^T Sxx^-1, (dy, dx).")
    E: list[list[float]] = Field(..., description="Residual covariance of y given x, (dy, dy).")


class LinearHVAEResponse(_ModeResult):
    theta: list[float] = Field(..., description="sqrt(eig Sxx) paired with each latent slot.")
    kl1_per_dim: list[float] = Field(..., description="E[log q(z1|x) - log p(z1|z2)] per mode.")
    kl2_per_dim: list[float] = Field(..., description="E KL(q(z2|z1) || p(z2)) per mode.")
    mean_collapsed: list[bool] = Field(..., description="Per-mode: z1's mean collapsed (lam = 0).")
    z2_collapsed: list[bool] = Field(..., description="Per-mode: p(z1|z2) ignores z2 (omega = 0).")
    posterior_equals_prior: list[bool] = Field(..., description="Per-mode: q(z2|z1) equals the prior p(z2).")
    case: Literal["I", "II", "fixed"] = Field(..., description="Which closed-form regime applied.")


class NeuralCollapseResponse(BaseModel):
    n_classes: int = Field(..., description="Number of classes C.")
    nc1: float = Field(..., description="Tr(Sigma_W Sigma_B^+)/C (pseudo-inverse truncated to rank C-1).")
    nc1_trace_ratio: float | None = Field(..., description="Tr Sigma_W / Tr Sigma_B (null if Tr Sigma_B = 0).")
    nc2_equinorm_means: float = Field(..., description="std/mean of centred class-mean norms.")
    nc2_equiangular_means: float = Field(..., description="mean |cos + 1/(C-1)| over class-mean pairs.")
    nc2_cos_std_means: float = Field(..., description="std of the class-mean pair cosines.")
    nc2_gram_means: float = Field(..., description="Frobenius distance of the normalised Gram to the simplex ETF.")
    nc2_equinorm_classifier: float | None = Field(None, description="std/mean of classifier row norms.")
    nc2_equiangular_classifier: float | None = Field(None, description="mean |cos + 1/(C-1)| over classifier rows.")
    nc2_gram_classifier: float | None = Field(None, description="Gram distance of classifier rows to the simplex ETF.")
    nc3: float | None = Field(None, description="||W^T/||W|| - M/||M||||_F^2 (self-duality).")
    nc4: float | None = Field(None, description="Fraction where the classifier disagrees with the nearest class mean.")
    global_mean: Literal["sample", "class"] = Field(..., description="Which global mean was used.")
