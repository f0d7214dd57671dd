"""Liveness, readiness and Prometheus metrics, at the root (not under /v1) and never behind API keys."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import MetricsDep
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="health-live", summary="Liveness: the process answers", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="health-ready",
    summary="Readiness: model loaded and worker running (503 otherwise)",
    response_model=Health,
    responses={503: {"model": Health, "description": "not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    worker = getattr(state, "worker", None)
    runner = getattr(state, "runner", None)
    detail = {
        "model_loaded": getattr(state, "engine", None) is not None,
        "worker_alive": bool(worker is not None and worker.alive),
        "job_runner_alive": bool(runner is not None and runner.alive),
        "queue_depth": worker.depth if worker is not None else 0,
    }
    ready = detail["model_loaded"] and detail["worker_alive"] and detail["job_runner_alive"]
    body = Health(status="ready" if ready else "not_ready", detail=detail).model_dump()
    headers = None if ready else {"Retry-After": str(state.settings.retry_after_s)}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


@router.get(
    "/metrics",
    operation_id="health-metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request, m: MetricsDep) -> Response:
    worker = getattr(request.app.state, "worker", None)
    m.queue_depth.set(worker.depth if worker is not None else 0)
    m.ready.set(1 if worker is not None and worker.alive else 0)
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
