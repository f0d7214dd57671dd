"""`/analysis` routes: the posterior-collapse calculators and neural-collapse metrics over JSON.

Imports only schemas from ``service`` (no other route): the app mounts ``router`` under ``/v1``.
Invalid inputs (non-PSD or singular moments, mismatched shapes, labels with gaps, numbers that
overflow double precision, ...) answer 422 with the calculator's message (at most 500 characters).
Handlers are plain ``def`` so FastAPI runs the CPU work in its threadpool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException

from pca_attack.analysis import linear_cvae, linear_hvae, linear_vae, neural_collapse_metrics
from service.schemas import ErrorResponse
from service.schemas_analysis import (
    LinearCVAERequest,
    LinearCVAEResponse,
    LinearHVAERequest,
    LinearHVAEResponse,
    LinearVAERequest,
    LinearVAEResponse,
    NeuralCollapseRequest,
    NeuralCollapseResponse,
)

router = APIRouter(prefix="/analysis", tags=["analysis"])

#: Every status these routes answer besides 200, in the common error shape (schemathesis checks the list).
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "the body is not valid JSON",
        401: "API key missing or wrong (when keys are configured)",
        413: "request body larger than the limit",
        422: "invalid input: the message names the field and what to do",
    }.items()
}

R = TypeVar("R")


def _run(fn: Callable[..., Any], response: type[R], **kwargs: Any) -> R:
    try:
        result = fn(**kwargs)
    except ValueError as exc:  # AnalysisInputError, NumericRangeError, ...: the message says what to fix
        raise HTTPException(status_code=422, detail=_short(str(exc))) from exc
    except ArithmeticError as exc:  # belt and braces: the calculators turn these into NumericRangeError
        raise HTTPException(
            status_code=422,
            detail=f"the numbers leave double precision ({type(exc).__name__}); "
            "rescale the input and keep beta, sigma and eta nearer 1.",
        ) from exc
    return response.model_validate(result.to_dict())  # type: ignore[attr-defined, no-any-return]


def _short(message: str, limit: int = 500) -> str:
    """Error messages never echo a huge input back."""
    return message if len(message) <= limit else message[: limit - 3] + "..."


@router.post(
    "/linear-vae",
    operation_id="analysis-linear-vae",
    response_model=LinearVAEResponse,
    responses=_ERRORS,
    summary="Optimal linear VAE: per-mode collapse",
)
def post_linear_vae(body: LinearVAERequest) -> LinearVAEResponse:
    """Closed-form optimum of the linear (beta-)VAE for data or second moments."""
    return _run(linear_vae, LinearVAEResponse, **body.model_dump())


@router.post(
    "/linear-cvae",
    operation_id="analysis-linear-cvae",
    response_model=LinearCVAEResponse,
    responses=_ERRORS,
    summary="Optimal linear conditional VAE: collapse from x-y correlation",
)
def post_linear_cvae(body: LinearCVAERequest) -> LinearCVAEResponse:
    """Closed-form optimum of the linear CVAE (residual covariance E = Syy - Sxy^T Sxx^-1 Sxy)."""
    return _run(linear_cvae, LinearCVAEResponse, **body.model_dump())


@router.post(
    "/linear-hvae",
    operation_id="analysis-linear-hvae",
    response_model=LinearHVAEResponse,
    responses=_ERRORS,
    summary="Optimal two-level linear hierarchical VAE",
)
def post_linear_hvae(body: LinearHVAERequest) -> LinearHVAEResponse:
    """Closed-form optimum of the two-level linear HVAE (learnable or fixed Sigma2)."""
    return _run(linear_hvae, LinearHVAEResponse, **body.model_dump())


@router.post(
    "/neural-collapse",
    operation_id="analysis-neural-collapse",
    response_model=NeuralCollapseResponse,
    responses=_ERRORS,
    summary="Neural-collapse metrics NC1-NC4",
)
def post_neural_collapse(body: NeuralCollapseRequest) -> NeuralCollapseResponse:
    """NC1-NC4 of features, labels and an optional classifier."""
    return _run(neural_collapse_metrics, NeuralCollapseResponse, **body.model_dump())
