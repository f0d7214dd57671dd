"""Limits that keep one client from holding the server: request body size (413), slow request bodies
(408), and the uvicorn options ``pca-protect serve`` runs with (concurrency, keep-alive, header size and a
header deadline).

uvicorn has no header-read timeout: a connection that trickles its headers (or sends nothing) is held
forever. ``guarded_protocol`` returns uvicorn's h11 protocol with one more timer: a connection that is not
being answered must complete its next request's headers within ``header_timeout_s`` (counted from the
connection, or from its previous answer), else it gets a 408 and is closed. The body rules live in an
ASGI middleware (they hold under plain ``uvicorn --factory`` too): every wait for the next body piece is at
most ``body_timeout_s``, and after that grace the body must arrive at ``min_body_rate`` bytes/s.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import error_response
from service.settings import Settings

MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers around the files
_BODYLESS = ("GET", "HEAD", "OPTIONS", "DELETE")
_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: 42\r\n\r\nrequest headers not received within limit\n"
)


def body_limit(settings: Settings, path: str) -> int:
    """Largest body accepted on ``path``: one file, two for /diagnostics, max_files_per_job for /jobs."""
    per_file = settings.max_upload_bytes
    if path.rstrip("/").endswith("/jobs"):
        return per_file * settings.max_files_per_job + MULTIPART_OVERHEAD
    if path.rstrip("/").endswith("/diagnostics"):
        return 2 * per_file + MULTIPART_OVERHEAD
    return per_file + MULTIPART_OVERHEAD


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _BodyGuard:
    """One request's body: counted against the size limit and timed against the slow-body rule. Once it
    refuses (413/408) the app sees a disconnect and its own answer is swallowed."""

    def __init__(self, receive: Receive, send: Send, scope: Scope, limit: int, settings: Settings) -> None:
        self._receive, self._send, self._scope = receive, send, scope
        self.limit, self.settings = limit, settings
        self.received = 0
        self.waited = 0.0  # seconds spent waiting for the client's body (not for the app)
        self.body_done = False
        self.refused = self.started = self.finished = False

    def _wait_allowed(self) -> float:
        grace, rate = self.settings.body_timeout_s, self.settings.min_body_rate
        total = grace + self.received / rate if rate else math.inf
        return min(grace, total - self.waited)

    async def refuse(self, status: int, code: str, message: str) -> None:
        self.refused = True
        if not self.started:
            answer = error_response(status, code, message, headers={"Connection": "close"})
            await answer(self._scope, self._receive, self.send)

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        if self.body_done:  # waiting for a disconnect: no deadline
            return await self._receive()
        loop = asyncio.get_running_loop()
        start, allowed = loop.time(), self._wait_allowed()
        try:
            msg = await asyncio.wait_for(self._receive(), timeout=max(allowed, 0.0))
        except asyncio.TimeoutError:
            s = self.settings
            await self.refuse(
                408, "request_timeout", f"the request body arrived too slowly (limits: {s.body_timeout_s:g} s "
                f"without data, {s.min_body_rate} bytes/s after that); send it faster or retry",
            )
            return {"type": "http.disconnect"}
        self.waited += loop.time() - start
        if msg["type"] != "http.request":
            self.body_done = True
            return msg
        self.received += len(msg.get("body", b""))
        self.body_done = not msg.get("more_body", False)
        if self.received > self.limit:
            await self.refuse(413, "payload_too_large", too_large_message(self.limit))
            return {"type": "http.disconnect"}
        return msg

    async def send(self, msg: Message) -> None:
        if msg["type"] == "http.response.start":
            if self.started:
                return
            self.started = True
        elif msg["type"] == "http.response.body":
            if self.finished:
                return
            self.finished = not msg.get("more_body", False)
        await self._send(msg)


def too_large_message(limit: int) -> str:
    return f"request body is larger than the limit of {limit:,} bytes (max_upload_bytes per file)"


def header_bytes(scope: Scope) -> int:
    """Size of the request line and headers as received (near enough: names, values, separators)."""
    target = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) + 16
    return target + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", []))


class RequestLimitsMiddleware:
    """431 for headers over ``max_header_bytes`` (h11 bounds them only while they arrive in pieces); 413
    for request bodies over the limit (on Content-Length, and while streaming chunked uploads) before the
    multipart parser spools anything; 408 for bodies slower than the settings allow."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and header_bytes(scope) > self.settings.max_header_bytes:
            message = f"request headers are larger than the limit of {self.settings.max_header_bytes:,} bytes"
            await error_response(431, "headers_too_large", message, headers={"Connection": "close"})(
                scope, receive, send
            )
            return
        if scope["type"] != "http" or scope.get("method") in _BODYLESS:
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.settings, scope.get("path", ""))
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await error_response(413, "payload_too_large", too_large_message(limit))(scope, receive, send)
            return
        guard = _BodyGuard(receive, send, scope, limit, self.settings)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if not guard.refused:
                raise


class _HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, plus: a connection not being answered is closed (with a 408 when nothing
    of the current exchange was sent yet) unless its next request's headers complete in time."""

    header_timeout_s: float = 15.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None and not self._answering():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self._answering() or self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE:
            self.transport.write(_TIMEOUT_ANSWER)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._answering() or self.transport.get_protocol() is not self:  # answering, or upgraded (websocket)
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._answering():  # a pipelined request started at once
            self._disarm()
        elif not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """The h11 protocol class with this header deadline (uvicorn builds one instance per connection)."""
    return type("HeaderDeadlineH11Protocol", (_HeaderDeadline,), {"header_timeout_s": header_timeout_s})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The connection limits of ``settings`` as ``uvicorn.run`` keyword arguments."""
    return {
        "http": guarded_protocol(settings.header_timeout_s),
        "limit_concurrency": settings.limit_concurrency,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
