"""Helpers the upload routes share (so that routes never import routes): the error table of upload
routes, bounded upload reading, decoding with the engine's errors mapped to 4xx, checking options against
this server, naming outputs, and waiting on the engine worker (timeout, client disconnect)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request, UploadFile
from starlette.concurrency import run_in_threadpool

from pca_attack import AttackConfig, DecodedImage, ProtectedImage, decode_image
from pca_attack.errors import ConfigError
from pca_attack.io import names
from pca_attack.io.names import clean_name
from pca_attack.options import ProtectOptions
from service.errors import ApiError, from_engine_error
from service.schemas import ErrorResponse
from service.settings import Settings
from service.worker import ProtectRequest

log = logging.getLogger("service.uploads")

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


async def read_upload(upload: UploadFile, limit: int, what: str = "file") -> bytes:
    """The upload's bytes, or 413 when it is over ``limit``."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "file_too_large", f"{what} is larger than the limit of {limit:,} bytes")
    return data


def _decode(data: bytes, max_pixels: int) -> DecodedImage:
    return decode_image(data, max_pixels=max_pixels)


def decode_failure(exc: Exception, what: str = "file") -> ApiError:
    """The answer to a failed decode (413 / 415 / 422): the same text for /v1/protect and a job's item."""
    api = from_engine_error(exc)
    if api.status >= 500:  # an unforeseen decoder failure (truncated header, ...) is still the file's fault
        return ApiError(415, "unsupported_image", f"{what} could not be decoded as an image ({exc})")
    if what != "file":
        api.message = f"{what}: {api.message}"
    return api


async def decode_upload(data: bytes, settings: Settings, what: str = "file") -> DecodedImage:
    """Decode in a thread; engine (and PIL) errors become 413 / 415 / 422 answers."""
    try:
        return await run_in_threadpool(_decode, data, settings.max_pixels)
    except Exception as exc:
        raise decode_failure(exc, what) from exc


def attack_config(options: ProtectOptions, settings: Settings) -> AttackConfig:
    """The validated AttackConfig of a request (422 when a value is out of range for this server)."""
    if options.steps > settings.max_steps:
        raise ApiError(
            422,
            "invalid_parameter",
            f"steps={options.steps} is over this server's max_steps={settings.max_steps}",
        )
    try:
        return options.to_attack_config()
    except ConfigError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from exc


def format_problem(image: Any, fmt: str) -> str | None:
    """Why ``image`` cannot be written as ``fmt`` (checked before the attack is spent), or None."""
    if image.levels > 255 and fmt != "png":
        return "16-bit images can only be written as PNG (lossless, full depth); ask for format=png"
    if fmt == "jpeg" and image.alpha is not None:
        return "JPEG has no alpha channel; ask for format=png or webp to keep the transparency"
    return None


def protect_request(image: DecodedImage, config: AttackConfig, options: ProtectOptions) -> ProtectRequest:
    """The worker request of one decoded image; ValueError when the format cannot hold it."""
    problem = format_problem(image, options.format)
    if problem:
        raise ValueError(problem)
    return ProtectRequest(image, config, options.format, options.quality, options.keep_exif)


def safe_filename(name: str | None, default: str = "image") -> str:
    """A display name safe as a file name, a zip entry and (RFC 5987) a header: basename only, letters of
    every script kept, no control characters, separators or ``..`` (``pca_attack.io.names.clean_name``)."""
    return clean_name(name, default)


def output_name(filename: str, suffix: str) -> str:
    """``café.jpg`` + ``.png`` -> ``café.png`` (sanitised; the one scheme of ``pca_attack.io.names``)."""
    return names.output_name(safe_filename(filename), suffix)


async def wait_for(
    request: Request, future: Any, timeout: float, retry_after: int, abandon: Callable[[], None] | None = None
) -> Any:
    """Await a worker future; on timeout or client disconnect cancel it (freeing its queue slot) and call
    ``abandon`` (a running attack then stops between PGD steps)."""
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
            if abandon is not None:
                abandon()
        if not waiter.done():
            waiter.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.sleep(0)


async def await_engine(
    request: Request, future: Any, settings: Settings, what: str, on_abandon: Callable[[], None] | None = None
) -> Any:
    """Wait for the engine worker's ``future``; engine errors become API errors (unexpected ones logged)."""
    try:
        return await wait_for(request, future, settings.request_timeout_s, settings.retry_after_s, on_abandon)
    except ApiError:
        raise
    except Exception as exc:
        api = from_engine_error(exc)
        if api.status >= 500:  # "it has been logged" must be true
            log.error("%s failed unexpectedly", what, exc_info=exc)
        raise api from exc


async def run_protect(request: Request, worker: Any, settings: Settings, req: ProtectRequest) -> ProtectedImage:
    """Submit one protect request and wait for it; engine errors become API errors."""
    result: ProtectedImage = await await_engine(request, worker.submit(req), settings, "protect", req.abandoned.set)
    return result
