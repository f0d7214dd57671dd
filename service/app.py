"""The FastAPI app factory. ``create_app(settings)`` builds the app; its lifespan loads the model once,
starts the engine worker and the job runner, resumes interrupted jobs and logs an environment dump.

Run it with ``uvicorn service.app:create_app --factory`` (settings from ``PCA_*`` env) or
``pca-protect serve``. Tests pass a ``Settings`` pointing at a tiny model, or a ready ``Engine``.
"""

from __future__ import annotations

import logging
import platform
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI

from pca_attack import Engine, __version__
from pca_attack.models.registry import DEMO_WARNING, uses_demo
from service.auth import ApiKeyMiddleware
from service.deps import ApiKeyDep
from service.errors import install_error_handlers
from service.job_runner import JobRunner
from service.job_store import JobStore
from service.limits import RequestLimitsMiddleware
from service.metrics import Metrics, MetricsMiddleware
from service.openapi import install_openapi
from service.routes import diagnostics_router, health_router, jobs_router, models_router, protect_router
from service.routes.analysis import router as analysis_router
from service.routes.roundtrip import router as roundtrip_router
from service.routes.web import router as web_router
from service.settings import Settings
from service.worker import EngineWorker

log = logging.getLogger("service")


def environment_dump(settings: Settings, engine: Engine) -> dict[str, Any]:
    """What runs where: versions, device, model, limits (logged at start)."""
    import diffusers
    import fastapi
    import torch

    enc = engine.encoder
    cuda = torch.cuda.get_device_name(enc.device) if enc.device.type == "cuda" else None
    return {
        "pca_protect": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "fastapi": fastapi.__version__,
        "device": str(enc.device),
        "gpu": cuda,
        "dtype": str(enc.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "model": enc.name,
        "latent_channels": enc.latent_channels,
        "encoder_parameters": enc.num_parameters(),
        "decoder_loaded": engine.decoder is not None,
        "settings": settings.redacted(),
    }


def configure_logging(level: str) -> None:
    """The service's loggers log at ``level`` even when a caller (the CLI) configured logging first: a
    no-op ``basicConfig`` would leave start-up and job-recovery INFO lines filtered by the root's WARNING."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("service").setLevel(level.upper())


def prepare_data_dir(settings: Settings) -> None:
    """Create the data folder, saying so (a warning when it is ``./data`` of the working directory)."""
    folder = settings.data_dir
    if folder.is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    if folder == (Path.cwd() / "data").resolve():
        log.warning(
            "created the data folder %s in the working directory (uploads, results, jobs.db); "
            "set PCA_DATA_DIR or pca-protect serve --data-dir to keep them elsewhere", folder,
        )
    else:
        log.info("created the data folder %s", folder)


def load_engine(settings: Settings) -> Engine:
    """The engine ``settings`` describe (model, device, dtype, decoder, batch); weights published as files are
    fetched first unless offline. Raises the engine's errors (``PCAError``) with what to do."""
    return Engine.from_spec(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        with_decoder=settings.with_decoder,
        offline=settings.offline,
        max_batch=settings.max_batch,
    )


def start_services(app: FastAPI, settings: Settings, metrics: Metrics, engine: Engine | None) -> None:
    """Load the model (unless given), start the engine worker and the job runner, resume interrupted jobs."""
    prepare_data_dir(settings)
    loaded = engine or load_engine(settings)
    if settings.max_memory:  # PCA_MAX_MEMORY: the engine plans every micro-batch within it (tiles, or 413)
        from pca_attack.attack.memory import parse_size

        loaded.max_memory = parse_size(settings.max_memory)
    app.state.generator_id = fast_mode_generator(settings, loaded)
    worker = EngineWorker(
        loaded,
        queue_size=settings.queue_size,
        max_batch=settings.max_batch,
        metrics=metrics,
        retry_after_s=settings.retry_after_s,
        generator=None if settings.generator is None else str(settings.generator),
    )
    store = JobStore(settings.db_url, settings.data_dir, settings.job_retention_s)
    recovered = store.recover()
    runner = JobRunner(
        store,
        worker,
        max_pixels=settings.max_pixels,
        batch=min(settings.max_batch, settings.queue_size),
        task_timeout_s=max(settings.request_timeout_s, 3600.0),
        cleanup_interval_s=settings.cleanup_interval_s,
    )
    app.state.engine, app.state.worker, app.state.store, app.state.runner = loaded, worker, store, runner
    log.info(
        "serving model %s on device %s (%s); data folder %s",
        loaded.encoder.name, loaded.encoder.device, str(loaded.encoder.dtype).removeprefix("torch."),
        settings.data_dir,
    )
    log.info("environment: %s", environment_dump(settings, loaded))
    log.info("job recovery after start: %s", recovered)
    if uses_demo(loaded.model_names()):
        log.warning("%s", DEMO_WARNING)
    worker.start()
    runner.start()
    metrics.ready.set(1)


def fast_mode_generator(settings: Settings, engine: Engine) -> str | None:
    """The id of the generator fast modes use (PCA_GENERATOR, else the one shipped for the model), or None when
    there is none (pgd only). A PCA_GENERATOR that is not a generator or was made for another model refuses the
    start (ConfigError with what to do)."""
    from pca_attack.errors import ConfigError
    from pca_attack.fast.weights import check_generator, shipped_generator

    if settings.generator is not None:
        return check_generator(str(settings.generator), engine.encoder).generator_id
    if shipped_generator(engine.encoder.name, engine.encoder) is None:
        return None
    try:
        return check_generator(None, engine.encoder).generator_id
    except ConfigError:
        log.warning("the generator shipped for %s does not suit the loaded weights: fast modes are off",
                    engine.encoder.name)
        return None


def stop_services(app: FastAPI, metrics: Metrics) -> None:
    """Stop taking work, then stop the runner, the worker and the store."""
    metrics.ready.set(0)
    app.state.runner.stop()
    app.state.worker.stop()
    app.state.store.close()
    app.state.engine = app.state.worker = app.state.store = app.state.runner = None


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """Build the service. ``engine`` (optional) is used instead of loading ``settings.model``."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        start_services(app, settings, metrics, engine)
        try:
            yield
        finally:
            stop_services(app, metrics)

    app = FastAPI(
        title="pca-protect",
        version=__version__,
        summary="Protect images against latent-diffusion editing with the Posterior Collapse Attack",
        description="Upload images, get them back protected (same size, lossless unless asked), with a "
        "certificate of the budget and of the measured posterior collapse. Batch jobs survive restarts.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = app.state.worker = app.state.store = app.state.runner = app.state.generator_id = None
    install_error_handlers(app)

    v1 = APIRouter(prefix="/v1", dependencies=[ApiKeyDep])
    v1.include_router(protect_router)
    v1.include_router(jobs_router)
    v1.include_router(diagnostics_router)
    v1.include_router(roundtrip_router)
    v1.include_router(models_router)
    v1.include_router(analysis_router)
    app.include_router(v1)
    app.include_router(health_router)
    app.include_router(web_router)
    install_openapi(app, settings)  # multipart schemas say what the routes accept (no null, no empty file)

    app.add_middleware(RequestLimitsMiddleware, settings=settings)
    app.add_middleware(ApiKeyMiddleware, settings=settings)  # outside the body limit: 401 before any byte is read
    app.add_middleware(MetricsMiddleware, metrics_getter=lambda: metrics)
    return app
