"""POST /v1/protect: one image in, the protected image (or JSON with it and its certificate) out.

Also holds the helpers the other upload routes share: bounded upload reading, decoding with the
engine's errors mapped, attack-config building, and waiting on the worker (timeout, client disconnect).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pca_attack import AttackConfig, DecodedImage, ProtectedImage, decode_image
from pca_attack.errors import ConfigError
from service.deps import ProtectParamsDep, SettingsDep, WorkerDep
from service.errors import ApiError, from_engine_error
from service.jobs import format_problem, output_name
from service.schemas import ErrorResponse, ProtectJSON, ProtectParams
from service.settings import Settings
from service.worker import ProtectRequest

router = APIRouter(tags=["protect"])

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "API key missing or wrong",
        413: "file or image larger than the limits",
        415: "not a supported image",
        422: "invalid parameter or image too small",
        429: "engine queue full; see Retry-After",
        503: "model not ready or request timed out; see Retry-After",
    }.items()
}

_IMAGE_SCHEMA = {"schema": {"type": "string", "format": "binary"}}
_CERT_HEADERS = {
    "X-PCA-Linf-255": {
        "description": "measured Linf distance on the 0-255 scale",
        "schema": {"type": "string"},
    },
    "X-PCA-Budget-OK": {"description": "true when linf_255 <= eps", "schema": {"type": "string"}},
    "X-PCA-KL-Clean": {"description": "KL(q(z|input) || N(0,I)) per element", "schema": {"type": "string"}},
    "X-PCA-KL-Protected": {
        "description": "KL(q(z|output) || N(0,I)) per element",
        "schema": {"type": "string"},
    },
    "X-PCA-Certificate": {"description": "the certificate JSON, base64url", "schema": {"type": "string"}},
}


async def read_upload(upload: UploadFile, limit: int, what: str = "file") -> bytes:
    """The upload's bytes, or 413 when it is over ``limit``."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "file_too_large", f"{what} is larger than the limit of {limit:,} bytes")
    return data


def _decode(data: bytes, max_pixels: int) -> DecodedImage:
    return decode_image(data, max_pixels=max_pixels)


async def decode_upload(data: bytes, settings: Settings, what: str = "file") -> DecodedImage:
    """Decode in a thread; engine (and PIL) errors become 413 / 415 / 422 answers."""
    try:
        return await run_in_threadpool(_decode, data, settings.max_pixels)
    except Exception as exc:
        api = from_engine_error(exc)
        if api.status >= 500:  # an unforeseen decoder failure is still the file's fault
            api = ApiError(415, "unsupported_image", f"{what} could not be decoded as an image ({exc})")
        elif what != "file":
            api.message = f"{what}: {api.message}"
        raise api from exc


def check_eot(name: str) -> None:
    """422 unless ``name`` is an expectation-over-transformations preset the engine knows."""
    from pca_attack.attack.eot import build_eot
    from pca_attack.errors import ConfigError

    try:
        build_eot(name)
    except ConfigError as exc:
        raise ApiError(422, "invalid_parameter", f"unknown eot {name!r}: {exc}") from exc


def attack_config(params: ProtectParams, settings: Settings) -> AttackConfig:
    """The validated AttackConfig of a request (422 when a value is out of range for this server)."""
    if params.steps > settings.max_steps:
        raise ApiError(
            422,
            "invalid_parameter",
            f"steps={params.steps} is over this server's max_steps={settings.max_steps}",
        )
    if params.eot:
        check_eot(params.eot)
    try:
        return AttackConfig(
            eps=params.eps,
            step=params.step,
            steps=params.steps,
            preset=params.preset,
            seed=params.seed,
            random_start=params.random_start,
            eot=params.eot,
        )
    except ConfigError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from exc


async def wait_for(request: Request, future: Any, timeout: float, retry_after: int) -> Any:
    """Await a worker future; cancel it (freeing its queue slot) on timeout or client disconnect."""
    waiter = asyncio.wrap_future(future)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ApiError(
                    503,
                    "timeout",
                    f"the request did not finish within {timeout:g} s; retry later",
                    headers={"Retry-After": str(retry_after)},
                )
            done, _ = await asyncio.wait({waiter}, timeout=min(0.25, remaining))
            if done:
                return waiter.result()
            if await request.is_disconnected():
                raise ApiError(408, "client_disconnected", "the client went away; the request was dropped")
    finally:
        if not future.done():
            future.cancel()
        if not waiter.done():
            waiter.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.sleep(0)


async def run_protect(request: Request, worker: Any, settings: Settings, req: ProtectRequest) -> ProtectedImage:
    future = worker.submit(req)
    try:
        result: ProtectedImage = await wait_for(request, future, settings.request_timeout_s, settings.retry_after_s)
    except ApiError:
        raise
    except Exception as exc:
        raise from_engine_error(exc) from exc
    return result


def certificate_headers(out: ProtectedImage) -> dict[str, str]:
    cert = out.certificate
    return {
        "X-PCA-Linf-255": f"{cert.linf_255:g}",
        "X-PCA-Budget-OK": "true" if cert.budget_ok else "false",
        "X-PCA-KL-Clean": repr(float(cert.kl_clean)),
        "X-PCA-KL-Protected": repr(float(cert.kl_protected)),
        "X-PCA-Certificate": base64.urlsafe_b64encode(cert.model_dump_json().encode()).decode("ascii"),
    }


@router.post(
    "/protect",
    operation_id="protect-image",
    summary="Protect one image",
    response_model=None,
    responses={
        200: {
            "description": "the protected image (default) or, with ?response=json, JSON with it and its certificate",
            "model": ProtectJSON,
            "content": {"image/png": _IMAGE_SCHEMA, "image/jpeg": _IMAGE_SCHEMA, "image/webp": _IMAGE_SCHEMA},
            "headers": _CERT_HEADERS,
        },
        **ERROR_RESPONSES,
    },
)
async def protect_image(
    request: Request,
    settings: SettingsDep,
    worker: WorkerDep,
    params: ProtectParamsDep,
    file: Annotated[UploadFile, File(description="the image (PNG, JPEG, WebP, TIFF, BMP, still GIF)")],
    response_kind: Annotated[
        Literal["image", "json"], Query(alias="response", description="image bytes or JSON with base64")
    ] = "image",
) -> Response:
    """Protect one image with the Posterior Collapse Attack. The output has the input's size; it is PNG
    unless another format is asked for. The certificate (measured on the returned bytes) comes in the
    `X-PCA-*` headers or, with `?response=json`, in the body."""
    config = attack_config(params, settings)
    data = await read_upload(file, settings.max_upload_bytes)
    image = await decode_upload(data, settings)
    problem = format_problem(image, params.format)
    if problem:
        raise ApiError(422, "invalid_parameter", problem)
    req = ProtectRequest(image, config, params.format, params.quality, params.keep_exif)
    out = await run_protect(request, worker, settings, req)
    name = output_name(file.filename or "image", out.suffix)
    if response_kind == "json":
        body = ProtectJSON(
            certificate=out.certificate,
            format=out.format,  # type: ignore[arg-type]
            filename=name,
            image_base64=base64.b64encode(out.data).decode("ascii"),
        )
        return JSONResponse(body.model_dump(mode="json"))
    headers = {"Content-Disposition": f'attachment; filename="{name}"', **certificate_headers(out)}
    return Response(content=out.data, media_type=out.mime_type, headers=headers)
