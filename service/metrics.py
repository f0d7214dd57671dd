"""Prometheus metrics, one CollectorRegistry per app (several apps in one process never collide)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The service's metrics: requests, latency, queue depth, images protected, attack throughput."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "pca_http_requests_total", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "pca_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("pca_engine_queue_depth", "engine requests waiting", registry=r)
        self.in_flight = Gauge("pca_engine_in_flight", "images being protected right now", registry=r)
        self.images = Counter("pca_images_protected_total", "images protected", ["format"], registry=r)
        self.image_failures = Counter("pca_engine_failures_total", "engine tasks that failed", ["code"], registry=r)
        self.rejected = Counter("pca_engine_rejected_total", "requests refused: queue full", registry=r)
        self.batches = Histogram(
            "pca_engine_batch_size", "images per micro-batch", buckets=(1, 2, 3, 4, 6, 8, 16, 32), registry=r
        )
        self.attack_steps = Counter(
            "pca_attack_steps_total", "PGD steps run, summed over the images of each batch", registry=r
        )
        self.attack_seconds = Counter("pca_attack_seconds_total", "time spent in protect batches", registry=r)
        self.steps_per_second = Gauge(
            "pca_attack_steps_per_second", "image-steps per second of the last micro-batch", registry=r
        )
        self.jobs = Counter("pca_jobs_total", "jobs by final status", ["status"], registry=r)
        self.ready = Gauge("pca_ready", "1 when the model is loaded and the worker runs", registry=r)

    def record_batch(self, images: int, steps_run: int, seconds: float, fmt: str) -> None:
        self.images.labels(format=fmt).inc(images)
        self.batches.observe(images)
        self.attack_steps.inc(images * steps_run)
        self.attack_seconds.inc(seconds)
        if seconds > 0:
            self.steps_per_second.set(images * steps_run / seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure-ASGI middleware counting requests per route template (not per raw path: no label explosion)."""

    def __init__(self, app: ASGIApp, metrics_getter: Callable[[], Metrics | None]) -> None:
        self.app = app
        self.metrics_getter = metrics_getter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics = self.metrics_getter()
            if metrics is not None:
                route = _route_template(scope)
                method = scope.get("method", "GET")
                metrics.requests.labels(method=method, route=route, status=str(status["code"])).inc()
                metrics.latency.labels(method=method, route=route).observe(time.perf_counter() - start)


def _route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), prefix included."""
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    path = getattr(context, "path_format", None) or getattr(scope.get("route"), "path_format", None)
    if path:
        return str(path)
    for route in getattr(scope.get("app"), "routes", ()):  # /docs, /openapi.json, static files: plain routes
        if route.matches(scope)[0] == Match.FULL:
            return str(getattr(route, "path_format", None) or getattr(route, "path", "unmatched"))
    return "unmatched"
