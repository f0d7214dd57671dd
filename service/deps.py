"""``Annotated`` dependency aliases: settings, the engine worker, the job store, metrics, API keys and
the attack parameters shared by /v1/protect and /v1/jobs."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Form, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from pca_attack import Engine
from service.errors import ApiError
from service.jobs import JobRunner, JobStore
from service.metrics import Metrics
from service.schemas import OutputFormat, PresetName, ProtectParams
from service.settings import Settings
from service.worker import EngineWorker


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def _not_ready(request: Request) -> ApiError:
    retry = str(request.app.state.settings.retry_after_s)
    return ApiError(503, "not_ready", "the model is not loaded (yet); retry shortly", headers={"Retry-After": retry})


def get_worker(request: Request) -> EngineWorker:
    worker = getattr(request.app.state, "worker", None)
    if worker is None or not worker.alive:
        raise _not_ready(request)
    return worker  # type: ignore[no-any-return]


def get_engine(request: Request) -> Engine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise _not_ready(request)
    return engine  # type: ignore[no-any-return]


def get_store(request: Request) -> JobStore:
    store = getattr(request.app.state, "store", None)
    if store is None:
        raise _not_ready(request)
    return store  # type: ignore[no-any-return]


def get_runner(request: Request) -> JobRunner:
    runner = getattr(request.app.state, "runner", None)
    if runner is None:
        raise _not_ready(request)
    return runner  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
WorkerDep = Annotated[EngineWorker, Depends(get_worker)]
EngineDep = Annotated[Engine, Depends(get_engine)]
StoreDep = Annotated[JobStore, Depends(get_store)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key (when configured)")
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token (when configured)")


def require_api_key(
    request: Request,
    api_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """401 unless settings.api_keys is empty or the request carries one of them."""
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    given = api_key or (bearer.credentials if bearer is not None else None)
    if given and any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
        return
    raise ApiError(
        401,
        "unauthorized",
        "missing or wrong API key; send it in the X-API-Key header or as 'Authorization: Bearer <key>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


ApiKeyDep = Depends(require_api_key)


def protect_params(
    preset: Annotated[PresetName, Form(description="collapse-loss preset (see GET /v1/models)")] = "pca-",
    eps: Annotated[float, Form(gt=0, le=64, description="Linf budget on the 0-255 scale")] = 16.0,
    step: Annotated[float, Form(gt=0, le=64, description="PGD step size on the 0-255 scale")] = 2.0,
    steps: Annotated[int, Form(ge=1, le=10_000, description="PGD iterations (<= the server's max_steps)")] = 40,
    seed: Annotated[int, Form(ge=0, le=2**32 - 1, description="seed of random start / EOT")] = 3407,
    random_start: Annotated[bool, Form(description="start from uniform noise in the budget")] = False,
    format: Annotated[OutputFormat, Form(description="output format; png is lossless")] = "png",
    quality: Annotated[int | None, Form(ge=1, le=100, description="jpeg/webp quality")] = None,
    keep_exif: Annotated[bool, Form(description="copy the input's EXIF to the output")] = True,
    eot: Annotated[str | None, Form(max_length=64, description="expectation-over-transformations preset")] = None,
) -> ProtectParams:
    return ProtectParams(
        preset=preset,
        eps=eps,
        step=step,
        steps=steps,
        seed=seed,
        random_start=random_start,
        format=format,
        quality=quality,
        keep_exif=keep_exif,
        eot=eot or None,
    )


ProtectParamsDep = Annotated[ProtectParams, Depends(protect_params)]
