"""``pca-protect serve``: run the REST service (FastAPI + uvicorn) on one model.

Options left unset fall back to the ``PCA_*`` environment variables and then to the defaults of
``service.settings.Settings``; bad values fail before anything is loaded. The slow-client limits
(``PCA_LIMIT_CONCURRENCY``, ``PCA_HEADER_TIMEOUT_S``, ``PCA_KEEP_ALIVE_TIMEOUT_S``, ``PCA_MAX_HEADER_BYTES``,
``PCA_BODY_TIMEOUT_S``, ``PCA_MIN_BODY_RATE``) are applied to uvicorn here (``service.limits``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from service.settings import Settings


def page_url(host: str, port: int) -> str:
    """The address to open in a browser: a wildcard bind is reached through the loopback address."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def _about(name: str) -> str:
    """Help of a serve option from the setting it overrides: description, environment variable, default."""
    info = Settings.model_fields[name]
    default = info.get_default(call_default_factory=True)
    shown = default if default not in (None, []) else "none"
    text = info.description or name
    return f"{text[0].upper()}{text[1:]} (env PCA_{name.upper()}, default: {shown})."


def serve_command(
    host: Annotated[str, typer.Option("--host", "-H", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-P", min=1, max=65535, help="TCP port.")] = 8000,
    model: Annotated[str | None, typer.Option("--model", "-m", help=_about("model"))] = None,
    device: Annotated[str | None, typer.Option("--device", "-d", help=_about("device"))] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help=_about("dtype"))] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=_about("data_dir"))] = None,
    database_url: Annotated[str | None, typer.Option("--database-url", help=_about("database_url"))] = None,
    api_key: Annotated[list[str] | None, typer.Option("--api-key", help=_about("api_keys"))] = None,
    queue_size: Annotated[int | None, typer.Option("--queue-size", help=_about("queue_size"))] = None,
    max_batch: Annotated[int | None, typer.Option("--max-batch", help=_about("max_batch"))] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network (HF_HUB_OFFLINE=1).")] = False,
    log_level: Annotated[str | None, typer.Option("--log-level", help=_about("log_level"))] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Serve on Ray Serve (pca-protect[ray]): replicas share the "
                                      "jobs store through the database URL.")] = False,
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="Ray Serve replicas (with --ray).")] = 1,
    ray_address: Annotated[str, typer.Option("--ray-address", help="Ray cluster (with --ray): auto or ADDRESS.")]
    = "auto",
) -> None:
    """Serve /v1/protect, /v1/jobs, /v1/diagnostics, /v1/models, /healthz, /readyz and /metrics."""
    from pydantic import ValidationError

    overrides = {
        "model": model,
        "device": device,
        "dtype": dtype,
        "data_dir": data_dir,
        "database_url": database_url,
        "api_keys": api_key or None,
        "queue_size": queue_size,
        "max_batch": max_batch,
        "offline": True if offline else None,
        "log_level": log_level,
    }
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        typer.echo(f"error: invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from exc

    if ray:
        _serve_on_ray(overrides, host, port, replicas, ray_address)
        return
    _serve_here(settings, host, port)


def _serve_here(settings: Settings, host: str, port: int) -> None:
    """Load the model, then serve the app with uvicorn in this process (one worker, graceful shutdown 30 s)."""
    import uvicorn

    from pca_attack.errors import PCAError
    from service.app import create_app, load_engine
    from service.limits import uvicorn_options

    typer.echo(f"pca-protect: loading {settings.model} ...")
    try:  # before uvicorn starts: a model that cannot be loaded is one clear line and exit 2, not a traceback
        engine = load_engine(settings)
    except PCAError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    app = create_app(settings, engine=engine)
    typer.echo(f"pca-protect: web page at {page_url(host, port)} (API under /v1) once the service has started")
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level,
        workers=1,
        timeout_graceful_shutdown=30,
        **uvicorn_options(settings),  # slow-client limits: concurrency, header deadline, keep-alive, header size
    )


def _serve_on_ray(overrides: Mapping[str, object], host: str, port: int, replicas: int, address: str) -> None:
    """``--ray``: the same app as a Ray Serve deployment of ``replicas`` replicas (settings as PCA_* env)."""
    import json

    try:
        from service.ray_app import run
    except ImportError as exc:
        typer.echo("error: Ray is not installed: pip install 'pca-protect[ray]' (ray[data,serve])", err=True)
        raise typer.Exit(2) from exc
    env = {
        f"PCA_{name.upper()}": json.dumps(value) if isinstance(value, list) else str(value)
        for name, value in overrides.items()
        if value is not None
    }
    typer.echo(f"pca-protect: {replicas} Ray Serve replica(s), web page at {page_url(host, port)}")
    run(env, host=host, port=port, replicas=replicas, address=address)
