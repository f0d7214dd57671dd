"""``Annotated`` dependency aliases: settings, the engine worker, the job store, metrics, API keys and
the protect options of /v1/protect and /v1/jobs (form fields generated from ``ProtectOptions``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Form, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator, ValidationError

from pca_attack import Engine
from pca_attack.options import ProtectOptions, field_bounds
from service.auth import Caller, identify, unauthorized
from service.errors import ApiError
from service.job_runner import JobRunner
from service.job_store import JobStore
from service.metrics import Metrics
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
) -> Caller:
    """The caller; 401 unless no key is configured or the request carries an accepted one (the
    ``ApiKeyMiddleware`` has already refused the request before its body when it does not)."""
    given = api_key or (bearer.credentials if bearer is not None else None)
    caller = identify(request.app.state.settings, given)
    if caller is None:
        raise unauthorized()
    return caller


ApiKeyDep = Depends(require_api_key)
CallerDep = Annotated[Caller, Depends(require_api_key)]


def _form_bool(value: Any) -> Any:
    """A form boolean is the text ``true`` or ``false`` (what the schema's boolean means in a form);
    pydantic's other spellings (0, off, yes, ...) are refused so that schema and behaviour agree."""
    if isinstance(value, str) and value not in ("true", "false"):
        raise ValueError(f"must be true or false, got {value[:20]!r}")
    return value


def _form_annotation(annotation: Any, form: Any) -> Any:
    if annotation is bool:
        return Annotated[bool, BeforeValidator(_form_bool), form]
    return Annotated[annotation, form]


def options_form(model: type[ProtectOptions] = ProtectOptions) -> Callable[..., Any]:
    """A dependency reading ``model``'s fields as form fields: one ``Form`` per field with the field's type,
    default, bounds and description, so the form and its OpenAPI schema are derived from the model. A
    request that leaves ``steps`` out gets the default capped at this server's ``max_steps`` (an explicit
    ``steps`` over the cap is still refused, by ``service.uploads.attack_config``)."""
    parameters = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
    parameters += [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=info.default,
            annotation=_form_annotation(info.annotation, Form(description=info.description, **field_bounds(info))),
        )
        for name, info in model.model_fields.items()
    ]

    async def read_form(request: Request, **values: Any) -> ProtectOptions:
        try:
            options = model(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ApiError(422, "invalid_parameter", problems) from exc
        cap = request.app.state.settings.max_steps
        if options.steps > cap and "steps" not in await request.form():  # parsed once, cached by Starlette
            options = options.model_copy(update={"steps": cap})
        return options

    read_form.__signature__ = inspect.Signature(parameters, return_annotation=model)  # type: ignore[attr-defined]
    return read_form


ProtectOptionsDep = Annotated[ProtectOptions, Depends(options_form())]
