"""Typed HTTP client of the pca-protect service: ``AsyncPCAClient``, and ``PCAClient``, its synchronous
twin (the same coroutines run on a private event-loop thread, so the logic exists once).

Every route has a method: ``protect``, ``create_job`` / ``get_job`` / ``wait_job`` / ``job_results`` /
``job_item`` / ``delete_job``, ``diagnostics``, ``models``, ``health``, ``ready``. Failures raise
``PCAClientError`` (HTTP status, error code, message, detail). Transient failures are retried with
exponential backoff and jitter, bounded by ``retries``: connection errors and timeouts, and answers
429 / 502 / 503 / 504, waiting at least the server's ``Retry-After`` when it sends one. A job creation
(not idempotent) is retried only when the request provably never reached the server.

    with PCAClient("http://127.0.0.1:8000", api_key="...") as client:
        out = client.protect("photo.jpg", steps=40, format="png")
        open("photo.protected.png", "wb").write(out.data); out.certificate["linf_255"]
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import httpx

from pca_client.protocol import (
    FINAL_JOB_STATES,
    Call,
    FileInput,
    PCAClientError,
    ProtectResult,
    ProtectSettings,
    RetryPolicy,
    diagnostics_call,
    error_from,
    job_timeout,
    jobs_call,
    merge_settings,
    parse_protect,
    protect_call,
    retry_wait,
    transport_error,
)

__all__ = ["AsyncPCAClient", "PCAClient", "PCAClientError", "ProtectResult", "ProtectSettings", "RetryPolicy"]

P = ParamSpec("P")
R = TypeVar("R")


async def _sleep(seconds: float) -> None:
    """Every wait of the client (backoff, polling); tests replace it."""
    await asyncio.sleep(seconds)


class AsyncPCAClient:
    """Asynchronous client; ``protect_many`` keeps several requests in flight."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 330.0,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        retries: int | None = None,
        max_connections: int = 16,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        from pca_attack import __version__

        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        if retries is not None:
            self.retry = RetryPolicy(**{**asdict(self.retry), "retries": max(0, int(retries))})
        self.headers = {"User-Agent": f"pca-protect-client/{__version__}", **(headers or {})}
        if api_key:
            self.headers["X-API-Key"] = api_key
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self.headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

    async def __aenter__(self) -> AsyncPCAClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, data=call.data, files=call.files
                )
            except httpx.TransportError as exc:
                wait = retry_wait(self.retry, call, attempt, exc, None)
                if wait < 0:
                    raise transport_error(exc, attempt + 1) from exc
            else:
                if response.status_code in call.ok:
                    return response
                wait = retry_wait(self.retry, call, attempt, None, response)
                if wait < 0:
                    raise error_from(response)
            await _sleep(wait)
            attempt += 1

    async def _json(self, call: Call) -> dict[str, Any]:
        result: dict[str, Any] = (await self._send(call)).json()
        return result

    async def protect(
        self,
        file: FileInput,
        settings: ProtectSettings | None = None,
        *,
        filename: str | None = None,
        response: Literal["image", "json"] = "image",
        **options: Any,
    ) -> ProtectResult:
        """POST /v1/protect: the protected bytes and the parsed certificate. ``options`` are the fields of
        ``ProtectSettings`` (validated here with the service's bounds); unset ones take the server's default."""
        as_json = response == "json"
        call = protect_call(file, merge_settings(settings, options), filename, as_json)
        return parse_protect(await self._send(call), as_json)

    async def protect_many(
        self,
        files: Sequence[FileInput],
        settings: ProtectSettings | None = None,
        *,
        concurrency: int = 4,
        **options: Any,
    ) -> list[ProtectResult | PCAClientError]:
        """Protect ``files`` with ``concurrency`` requests in flight; per-file results or errors, in order."""
        gate = asyncio.Semaphore(max(1, concurrency))
        merged = merge_settings(settings, options)

        async def one(file: FileInput) -> ProtectResult | PCAClientError:
            async with gate:
                try:
                    return await self.protect(file, merged)
                except PCAClientError as exc:
                    return exc

        return list(await asyncio.gather(*(one(f) for f in files)))

    async def create_job(
        self, files: Sequence[FileInput], settings: ProtectSettings | None = None, **options: Any
    ) -> dict[str, Any]:
        """POST /v1/jobs (202): the new job (``id``, ``status``, ``total``, ...)."""
        return await self._json(jobs_call(files, merge_settings(settings, options)))

    async def get_job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}: status, progress and items."""
        return await self._json(Call("GET", f"/v1/jobs/{job_id}"))

    async def wait_job(self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until the job is done, failed or cancelled; PCAClientError(code='timeout') after timeout_s."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = await self.get_job(job_id)
            if job.get("status") in FINAL_JOB_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise job_timeout(job_id, job, timeout_s)
            await _sleep(poll_s)

    async def job_results(self, job_id: str, dest: str | os.PathLike[str] | None = None) -> bytes:
        """GET /v1/jobs/{id}/results: the zip (also written to ``dest`` when given)."""
        data = (await self._send(Call("GET", f"/v1/jobs/{job_id}/results"))).content
        if dest is not None:
            Path(dest).write_bytes(data)
        return data

    async def job_item(self, job_id: str, index: int) -> bytes:
        """GET /v1/jobs/{id}/items/{index}: one protected image."""
        return (await self._send(Call("GET", f"/v1/jobs/{job_id}/items/{index}"))).content

    async def delete_job(self, job_id: str) -> dict[str, Any]:
        """DELETE /v1/jobs/{id}: cancel and delete; returns the final state."""
        return await self._json(Call("DELETE", f"/v1/jobs/{job_id}"))

    async def diagnostics(self, file: FileInput, protected: FileInput | None = None) -> dict[str, Any]:
        """POST /v1/diagnostics: posterior statistics of an image, or of a clean/protected pair."""
        return await self._json(diagnostics_call(file, protected))

    async def models(self) -> dict[str, Any]:
        """GET /v1/models: loaded model, presets and limits."""
        return await self._json(Call("GET", "/v1/models"))

    async def health(self) -> dict[str, Any]:
        """GET /healthz."""
        return await self._json(Call("GET", "/healthz"))

    async def ready(self) -> dict[str, Any]:
        """GET /readyz, without retrying: the body, whether ready (200) or not (503)."""
        try:
            response = await self._http.get("/readyz")
        except httpx.TransportError as exc:
            raise transport_error(exc, 1) from exc
        if response.status_code not in (200, 503):
            raise error_from(response)
        result: dict[str, Any] = response.json()
        return result

    async def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> dict[str, Any]:
        """Poll /readyz until ready; PCAClientError(code='not_ready') after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                body = await self.ready()
                if body.get("status") == "ready":
                    return body
                last = body
            except PCAClientError as exc:
                last = exc
            await _sleep(poll_s)
        raise PCAClientError(None, "not_ready", f"service not ready after {timeout_s}s: {last}")


class _LoopThread:
    """A private event loop on a daemon thread; ``run`` blocks the calling thread (any thread) until done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pca-client-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:  # Ctrl-C in the caller: stop the request too
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
        if not self.thread.is_alive():
            self.loop.close()


def _blocking(method: Callable[Concatenate[AsyncPCAClient, P], Awaitable[R]]) -> Callable[Concatenate[PCAClient, P], R]:
    """The synchronous twin of an ``AsyncPCAClient`` method (same signature and docstring)."""

    @functools.wraps(method)
    def call(self: PCAClient, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._loop.run(method(self._async, *args, **kwargs))  # type: ignore[arg-type]

    return call


class PCAClient:
    """Synchronous client with the methods of ``AsyncPCAClient``; thread-safe (one connection pool), so a
    batch can share it across threads. Takes the same arguments (``transport`` may be an httpx mock)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", **kwargs: Any) -> None:
        self._async = AsyncPCAClient(base_url, **kwargs)
        self.base_url, self.retry, self.headers = self._async.base_url, self._async.retry, self._async.headers
        self._loop = _LoopThread()
        self._finalizer = weakref.finalize(self, self._loop.stop)

    def __enter__(self) -> PCAClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._finalizer.alive:
            self._loop.run(self._async.aclose())
            self._finalizer()

    protect = _blocking(AsyncPCAClient.protect)
    protect_many = _blocking(AsyncPCAClient.protect_many)
    create_job = _blocking(AsyncPCAClient.create_job)
    get_job = _blocking(AsyncPCAClient.get_job)
    wait_job = _blocking(AsyncPCAClient.wait_job)
    job_results = _blocking(AsyncPCAClient.job_results)
    job_item = _blocking(AsyncPCAClient.job_item)
    delete_job = _blocking(AsyncPCAClient.delete_job)
    diagnostics = _blocking(AsyncPCAClient.diagnostics)
    models = _blocking(AsyncPCAClient.models)
    health = _blocking(AsyncPCAClient.health)
    ready = _blocking(AsyncPCAClient.ready)
    wait_ready = _blocking(AsyncPCAClient.wait_ready)

    def processor(self, settings: ProtectSettings | None = None, **options: Any) -> RemoteProcessor:
        """A batch processor ``(path, data) -> (bytes, suffix, certificate)`` for ``pca_client.runner``."""
        return RemoteProcessor(self, merge_settings(settings, options))


class RemoteProcessor:
    """Plugs the sync client into ``pca_client.runner.BatchRunner`` (one POST /v1/protect per file)."""

    def __init__(self, client: PCAClient, settings: ProtectSettings) -> None:
        self.client, self.settings = client, settings

    def __call__(self, path: Path, data: bytes) -> tuple[bytes, str, dict[str, Any]]:
        try:
            out = self.client.protect((path.name, data), self.settings)
        except PCAClientError as exc:
            if exc.transient:  # retries exhausted: the server is gone or overloaded, not this file's fault
                exc.abort_batch = True
            raise
        return out.data, out.suffix, out.certificate
