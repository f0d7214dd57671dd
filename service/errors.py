"""One JSON error shape for every failure: ``{"error": {"code", "message", "detail"}}``.

Engine errors map to status codes here (and nowhere else): unreadable image 415, too many bytes or
pixels 413, too small / bad parameters 422, full queue 429, not ready or timed out 503, auth 401.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pca_attack import errors as engine
from pca_attack.errors import PCAError

log = logging.getLogger("service")


class ApiError(Exception):
    """An error answered to the client in the common shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class QueueFullError(ApiError):
    """The engine queue is full: come back later."""

    def __init__(self, retry_after: int = 5) -> None:
        super().__init__(
            429,
            "queue_full",
            "the engine queue is full; retry after the number of seconds in Retry-After",
            headers={"Retry-After": str(retry_after)},
        )


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail}}


def error_response(
    status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, jsonable_encoder(detail)), status_code=status, headers=headers)


def from_engine_error(exc: Exception) -> ApiError:
    """The ApiError for an engine exception (PIL's decompression-bomb guard included)."""
    from PIL import Image

    message = str(exc) or exc.__class__.__name__
    if isinstance(exc, engine.ImageTooLargeError):
        return ApiError(413, "image_too_large", message)
    if isinstance(exc, Image.DecompressionBombError):
        return ApiError(413, "image_too_large", f"image has too many pixels (decompression-bomb guard): {message}")
    if isinstance(exc, engine.UnsupportedImageError):
        return ApiError(415, "unsupported_image", message)
    if isinstance(exc, engine.ImageTooSmallError):
        return ApiError(422, "image_too_small", message)
    if isinstance(exc, engine.ConfigError):
        return ApiError(422, "invalid_parameter", message)
    if isinstance(exc, engine.ModelNotFoundError | engine.ModelLoadError):
        return ApiError(503, "model_unavailable", message)
    if isinstance(exc, PCAError):
        return ApiError(422, "engine_error", message)
    return ApiError(500, "internal_error", "unexpected server error; it has been logged")


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    429: "queue_full",
    503: "unavailable",
}


#: At most this many validation errors are listed in ``detail`` (a matrix of NaNs gives one per entry).
MAX_LISTED_ERRORS = 20


def _echoable(value: Any) -> bool:
    """Short scalars only: never bytes, containers, huge strings or NaN/Infinity (not valid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, str | int | float | bool) and len(str(value)) <= 200


def _clean_validation(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic error list without echoing uploads back (inputs may be bytes, huge or non-finite)."""
    out = []
    for err in errors[:MAX_LISTED_ERRORS]:
        item = {"loc": list(err.get("loc", ()))[:10], "msg": str(err.get("msg", ""))[:300], "type": err.get("type")}
        value = err.get("input")
        if _echoable(value):
            item["input"] = value
        out.append(item)
    if len(errors) > MAX_LISTED_ERRORS:
        out.append({"loc": [], "msg": f"... and {len(errors) - MAX_LISTED_ERRORS} more errors", "type": "truncated"})
    return out


def allowed_methods(request: Request, named: str = "") -> str:
    """Every method the app answers on this path (the ``Allow`` header of a 405): the methods of every
    documented operation whose path template matches, plus those Starlette ``named`` (undocumented routes)."""
    import re

    methods = {m.strip().upper() for m in named.split(",") if m.strip()}
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, request.url.path):
            methods |= {m.upper() for m in operations if m.lower() != "parameters"}
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the common shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_validation(list(exc.errors()))
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path", "header"))
        message = f"invalid parameter {where}: {first['msg']}" if where else f"invalid request: {first['msg']}"
        return error_response(422, "invalid_parameter", message, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the first matching route's methods only
            headers["Allow"] = allowed_methods(request, headers.get("Allow", headers.get("allow", "")))
            headers.pop("allow", None)
        return error_response(exc.status_code, code, str(exc.detail), None, headers)

    @app.exception_handler(PCAError)
    async def _engine(_: Request, exc: PCAError) -> JSONResponse:
        api = from_engine_error(exc)
        return error_response(api.status, api.code, api.message, api.detail, api.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "unexpected server error; it has been logged")
