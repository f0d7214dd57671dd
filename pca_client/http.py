"""Typed HTTP client of the pca-protect service: ``PCAClient`` (sync) and ``AsyncPCAClient`` (async).

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
import base64
import json
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

FileInput = str | os.PathLike[str] | bytes | tuple[str, bytes]
RETRY_STATUSES = frozenset({429, 502, 503, 504})
FINAL_JOB_STATES = frozenset({"done", "failed", "cancelled"})
_SUFFIX = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


class PCAClientError(Exception):
    """A request failed: ``status`` (None for connection errors), ``code`` and ``message`` from the
    service's ``{"error": {...}}`` body, ``detail``, and ``retry_after`` seconds when the server said."""

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        detail: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status or 'no response'} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.detail, self.retry_after = detail, retry_after
        self.abort_batch = False  # set when retries are exhausted on a transient error

    @property
    def fatal(self) -> bool:
        """True when the next request would fail too (bad API key, server gone after every retry):
        ``pca_client.runner`` then stops the batch instead of failing every remaining file."""
        return self.abort_batch or self.status in (401, 403)

    @property
    def transient(self) -> bool:
        return self.status is None or self.status in RETRY_STATUSES


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: attempt n waits ``min(max_backoff, backoff * 2**n)`` scaled by a random factor
    in [1 - jitter, 1 + jitter], or at least ``Retry-After`` (capped at ``max_retry_after``)."""

    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    jitter: float = 0.3
    max_retry_after: float = 300.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        base = min(self.max_backoff, self.backoff * (2**attempt))
        wait = base * random.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return max(0.0, wait)


@dataclass(frozen=True)
class ProtectSettings:
    """Form fields of /v1/protect and /v1/jobs; None means "the server's default"."""

    preset: str | None = None
    eps: float | None = None
    step: float | None = None
    steps: int | None = None
    seed: int | None = None
    random_start: bool | None = None
    format: str | None = None
    quality: int | None = None
    keep_exif: bool | None = None
    eot: str | None = None

    def merged(self, **options: Any) -> ProtectSettings:
        """A copy with ``options`` applied (unknown names raise TypeError)."""
        values = {**asdict(self), **{k: v for k, v in options.items() if v is not None}}
        return ProtectSettings(**values)

    def form(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in asdict(self).items():
            if value is None:
                continue
            if key == "format":
                value = "jpeg" if str(value).lower() in ("jpg", "jpeg") else str(value).lower()
            out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out


@dataclass
class ProtectResult:
    """The protected file and its certificate (measured by the server on these exact bytes)."""

    data: bytes
    certificate: dict[str, Any]
    format: str
    filename: str | None = None
    mime_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        return _SUFFIX.get(self.format, f".{self.format}")

    @property
    def linf_255(self) -> float | None:
        value = self.certificate.get("linf_255")
        return float(value) if value is not None else None

    @property
    def budget_ok(self) -> bool | None:
        value = self.certificate.get("budget_ok")
        return bool(value) if value is not None else None


@dataclass
class _Call:
    method: str
    path: str
    params: dict[str, str] | None = None
    data: dict[str, str] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    ok: tuple[int, ...] = (200,)
    idempotent: bool = True  # False: retry transport errors only when nothing reached the server


# -- request building and response parsing (shared by both clients) ----------------------------------
def _file_part(
    name: str, value: FileInput, filename: str | None = None
) -> tuple[str, tuple[str, bytes, str]]:
    if isinstance(value, bytes):
        return name, (filename or "image", value, "application/octet-stream")
    if isinstance(value, tuple):
        return name, (filename or value[0], value[1], "application/octet-stream")
    path = Path(value)
    return name, (filename or path.name, path.read_bytes(), "application/octet-stream")


def _settings(settings: ProtectSettings | None, options: dict[str, Any]) -> ProtectSettings:
    return (settings or ProtectSettings()).merged(**options)


def _error_from(response: httpx.Response) -> PCAClientError:
    code, message, detail = f"http_{response.status_code}", response.reason_phrase or "error", None
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
        detail = err.get("detail")
    elif isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
    elif response.text:
        message = response.text[:500]
    return PCAClientError(response.status_code, code, message, detail, _retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _b64url_json(value: str) -> dict[str, Any]:
    padded = value + "=" * (-len(value) % 4)
    decoded = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    return decoded if isinstance(decoded, dict) else {}


def _filename(response: httpx.Response) -> str | None:
    match = re.search(r'filename="?([^";]+)"?', response.headers.get("Content-Disposition", ""))
    return match.group(1) if match else None


def _parse_protect(response: httpx.Response, as_json: bool) -> ProtectResult:
    if as_json:
        body = response.json()
        return ProtectResult(
            data=base64.b64decode(body["image_base64"]),
            certificate=dict(body.get("certificate") or {}),
            format=str(body.get("format") or "png"),
            filename=body.get("filename"),
            mime_type=f"image/{body.get('format') or 'png'}",
            headers=dict(response.headers),
        )
    header = response.headers.get("X-PCA-Certificate")
    cert = _b64url_json(header) if header else {}
    mime = response.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip()
    fmt = str(cert.get("format") or mime.rsplit("/", 1)[-1])
    return ProtectResult(response.content, cert, fmt, _filename(response), mime, dict(response.headers))


def _protect_call(file: FileInput, settings: ProtectSettings, filename: str | None, as_json: bool) -> _Call:
    return _Call(
        "POST",
        "/v1/protect",
        params={"response": "json" if as_json else "image"},
        data=settings.form(),
        files=[_file_part("file", file, filename)],
    )


def _jobs_call(files: Sequence[FileInput], settings: ProtectSettings) -> _Call:
    parts = [_file_part("files", f) for f in files]
    return _Call("POST", "/v1/jobs", data=settings.form(), files=parts, ok=(200, 201, 202), idempotent=False)


def _diag_call(file: FileInput, protected: FileInput | None) -> _Call:
    parts = [_file_part("file", file)]
    if protected is not None:
        parts.append(_file_part("protected", protected))
    return _Call("POST", "/v1/diagnostics", files=parts)


def _job_timeout(job_id: str, job: dict[str, Any], timeout_s: float | None) -> PCAClientError:
    return PCAClientError(None, "timeout", f"job {job_id} still {job.get('status')} after {timeout_s} s")


class _Base:
    """Configuration shared by the sync and async clients."""

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
    ) -> None:
        from pca_attack import __version__

        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        if retries is not None:
            self.retry = RetryPolicy(**{**asdict(self.retry), "retries": max(0, int(retries))})
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.headers = {"User-Agent": f"pca-protect-client/{__version__}", **(headers or {})}
        if api_key:
            self.headers["X-API-Key"] = api_key

    def _decide(
        self, call: _Call, attempt: int, exc: Exception | None, response: httpx.Response | None
    ) -> float:
        """Seconds to wait before retrying, or -1 to stop (the caller then raises)."""
        if attempt >= self.retry.retries:
            return -1
        if exc is not None:
            if not call.idempotent and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                return -1
            return self.retry.delay(attempt)
        assert response is not None
        if response.status_code in RETRY_STATUSES:
            return self.retry.delay(attempt, _retry_after(response))
        return -1

    @staticmethod
    def _transport_error(exc: Exception, attempts: int) -> PCAClientError:
        code = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
        return PCAClientError(None, code, f"{type(exc).__name__}: {exc} (after {attempts} attempt(s))")


class PCAClient(_Base):
    """Synchronous client; thread-safe (one connection pool), so a batch can share it across threads."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", **kwargs: Any) -> None:
        transport = kwargs.pop("transport", None)
        super().__init__(base_url, **kwargs)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self.headers,
            timeout=self.timeout,
            limits=self.limits,
            transport=transport,
        )

    def __enter__(self) -> PCAClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, data=call.data, files=call.files
                )
            except httpx.TransportError as exc:
                wait = self._decide(call, attempt, exc, None)
                if wait < 0:
                    raise self._transport_error(exc, attempt + 1) from exc
            else:
                if response.status_code in call.ok:
                    return response
                wait = self._decide(call, attempt, None, response)
                if wait < 0:
                    raise _error_from(response)
            time.sleep(wait)
            attempt += 1

    def protect(
        self,
        file: FileInput,
        settings: ProtectSettings | None = None,
        *,
        filename: str | None = None,
        response: Literal["image", "json"] = "image",
        **options: Any,
    ) -> ProtectResult:
        """POST /v1/protect: the protected bytes and the parsed certificate."""
        as_json = response == "json"
        call = _protect_call(file, _settings(settings, options), filename, as_json)
        return _parse_protect(self._send(call), as_json)

    def create_job(
        self, files: Sequence[FileInput], settings: ProtectSettings | None = None, **options: Any
    ) -> dict[str, Any]:
        """POST /v1/jobs (202): the new job (``id``, ``status``, ``total``, ...)."""
        result: dict[str, Any] = self._send(_jobs_call(files, _settings(settings, options))).json()
        return result

    def get_job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}: status, progress and items."""
        result: dict[str, Any] = self._send(_Call("GET", f"/v1/jobs/{job_id}")).json()
        return result

    def wait_job(self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until the job is done, failed or cancelled; PCAClientError(code='timeout') after timeout_s."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            if job.get("status") in FINAL_JOB_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise _job_timeout(job_id, job, timeout_s)
            time.sleep(poll_s)

    def job_results(self, job_id: str, dest: str | os.PathLike[str] | None = None) -> bytes:
        """GET /v1/jobs/{id}/results: the zip (also written to ``dest`` when given)."""
        data = self._send(_Call("GET", f"/v1/jobs/{job_id}/results")).content
        if dest is not None:
            Path(dest).write_bytes(data)
        return data

    def job_item(self, job_id: str, index: int) -> bytes:
        """GET /v1/jobs/{id}/items/{index}: one protected image."""
        return self._send(_Call("GET", f"/v1/jobs/{job_id}/items/{index}")).content

    def delete_job(self, job_id: str) -> dict[str, Any]:
        """DELETE /v1/jobs/{id}: cancel and delete; returns the final state."""
        result: dict[str, Any] = self._send(_Call("DELETE", f"/v1/jobs/{job_id}")).json()
        return result

    def diagnostics(self, file: FileInput, protected: FileInput | None = None) -> dict[str, Any]:
        """POST /v1/diagnostics: posterior statistics of an image, or of a clean/protected pair."""
        result: dict[str, Any] = self._send(_diag_call(file, protected)).json()
        return result

    def models(self) -> dict[str, Any]:
        """GET /v1/models: loaded model, presets and limits."""
        result: dict[str, Any] = self._send(_Call("GET", "/v1/models")).json()
        return result

    def health(self) -> dict[str, Any]:
        """GET /healthz."""
        result: dict[str, Any] = self._send(_Call("GET", "/healthz")).json()
        return result

    def ready(self) -> dict[str, Any]:
        """GET /readyz, without retrying: the body, whether ready (200) or not (503)."""
        try:
            response = self._http.get("/readyz")
        except httpx.TransportError as exc:
            raise self._transport_error(exc, 1) from exc
        if response.status_code not in (200, 503):
            raise _error_from(response)
        result: dict[str, Any] = response.json()
        return result

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> dict[str, Any]:
        """Poll /readyz until ready; PCAClientError(code='not_ready') after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                body = self.ready()
                if body.get("status") == "ready":
                    return body
                last = body
            except PCAClientError as exc:
                last = exc
            time.sleep(poll_s)
        raise PCAClientError(None, "not_ready", f"service not ready after {timeout_s}s: {last}")

    def processor(self, settings: ProtectSettings | None = None, **options: Any) -> RemoteProcessor:
        """A batch processor ``(path, data) -> (bytes, suffix, certificate)`` for ``pca_client.runner``."""
        return RemoteProcessor(self, _settings(settings, options))


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


class AsyncPCAClient(_Base):
    """Asynchronous client with the same methods (awaitable) plus ``protect_many`` for throughput."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", **kwargs: Any) -> None:
        transport = kwargs.pop("transport", None)
        super().__init__(base_url, **kwargs)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self.headers,
            timeout=self.timeout,
            limits=self.limits,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncPCAClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, data=call.data, files=call.files
                )
            except httpx.TransportError as exc:
                wait = self._decide(call, attempt, exc, None)
                if wait < 0:
                    raise self._transport_error(exc, attempt + 1) from exc
            else:
                if response.status_code in call.ok:
                    return response
                wait = self._decide(call, attempt, None, response)
                if wait < 0:
                    raise _error_from(response)
            await asyncio.sleep(wait)
            attempt += 1

    async def _json(self, call: _Call) -> dict[str, Any]:
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
        """POST /v1/protect."""
        as_json = response == "json"
        call = _protect_call(file, _settings(settings, options), filename, as_json)
        return _parse_protect(await self._send(call), as_json)

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
        merged = _settings(settings, options)

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
        """POST /v1/jobs (202)."""
        return await self._json(_jobs_call(files, _settings(settings, options)))

    async def get_job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}."""
        return await self._json(_Call("GET", f"/v1/jobs/{job_id}"))

    async def wait_job(
        self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Poll until done, failed or cancelled."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = await self.get_job(job_id)
            if job.get("status") in FINAL_JOB_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise _job_timeout(job_id, job, timeout_s)
            await asyncio.sleep(poll_s)

    async def job_results(self, job_id: str, dest: str | os.PathLike[str] | None = None) -> bytes:
        """GET /v1/jobs/{id}/results (zip)."""
        data = (await self._send(_Call("GET", f"/v1/jobs/{job_id}/results"))).content
        if dest is not None:
            Path(dest).write_bytes(data)
        return data

    async def job_item(self, job_id: str, index: int) -> bytes:
        """GET /v1/jobs/{id}/items/{index}."""
        return (await self._send(_Call("GET", f"/v1/jobs/{job_id}/items/{index}"))).content

    async def delete_job(self, job_id: str) -> dict[str, Any]:
        """DELETE /v1/jobs/{id}."""
        return await self._json(_Call("DELETE", f"/v1/jobs/{job_id}"))

    async def diagnostics(self, file: FileInput, protected: FileInput | None = None) -> dict[str, Any]:
        """POST /v1/diagnostics."""
        return await self._json(_diag_call(file, protected))

    async def models(self) -> dict[str, Any]:
        """GET /v1/models."""
        return await self._json(_Call("GET", "/v1/models"))

    async def health(self) -> dict[str, Any]:
        """GET /healthz."""
        return await self._json(_Call("GET", "/healthz"))

    async def ready(self) -> dict[str, Any]:
        """GET /readyz without retrying (body of a 200 or a 503)."""
        try:
            response = await self._http.get("/readyz")
        except httpx.TransportError as exc:
            raise self._transport_error(exc, 1) from exc
        if response.status_code not in (200, 503):
            raise _error_from(response)
        result: dict[str, Any] = response.json()
        return result
