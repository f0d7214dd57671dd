"""``pca-protect serve``: run the REST service (FastAPI + uvicorn) on one model.

Options left unset fall back to the ``PCA_*`` environment variables and then to the defaults of
``service.settings.Settings``; bad values fail before anything is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def page_url(host: str, port: int) -> str:
    """The address to open in a browser: a wildcard bind is reached through the loopback address."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def serve_command(
    host: Annotated[str, typer.Option("--host", "-H", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-P", min=1, max=65535, help="TCP port.")] = 8000,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Registry name (demo, sd15, ...), diffusers folder or weights file. [default: PCA_MODEL or demo]",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", "-d", help="auto, cpu, cuda, cuda:N or mps. [default: auto]")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="auto (fp16 on CUDA, else fp32), fp32, fp16, bf16. [default: auto]")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Uploads, results and the SQLite job database. [default: ./data]"),
    ] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="SQLAlchemy URL. [default: sqlite under --data-dir]")
    ] = None,
    api_key: Annotated[
        list[str] | None, typer.Option("--api-key", help="Accepted API key (repeat for several). [default: open]")
    ] = None,
    queue_size: Annotated[int | None, typer.Option("--queue-size", help="Engine queue length. [default: 16]")] = None,
    max_batch: Annotated[int | None, typer.Option("--max-batch", help="Micro-batch size. [default: 4]")] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Never touch the network (also HF_HUB_OFFLINE=1).")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="critical, error, warning, info, debug.")] = "info",
) -> None:
    """Serve /v1/protect, /v1/jobs, /v1/diagnostics, /v1/models, /healthz, /readyz and /metrics."""
    from pydantic import ValidationError

    from service.app import create_app
    from service.settings import Settings

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

    import uvicorn

    app = create_app(settings)
    typer.echo(f"pca-protect: web page at {page_url(host, port)} (API under /v1) once the model is loaded")
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level, workers=1, timeout_graceful_shutdown=30)
