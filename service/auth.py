"""API keys: which key a request carries, whether it is accepted, who owns a job, and the ASGI middleware
that refuses a request without an accepted key BEFORE its body is read.

FastAPI parses ``Form``/``File`` parameters before dependencies run, so a dependency alone would let an
unauthenticated client spool a large multipart upload to disk (or get a 400 for garbage) before its 401.
``ApiKeyMiddleware`` checks the headers of every ``/v1`` request first and answers 401 without calling
``receive``; the dependency in ``service.deps`` stays for the OpenAPI security schemes and the owner.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ApiError, error_response
from service.settings import Settings

UNAUTHORIZED_MESSAGE = "missing or wrong API key; send it in the X-API-Key header or as 'Authorization: Bearer <key>'"
PROTECTED_PREFIX = "/v1"


def key_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key in ``X-API-Key`` or ``Authorization: Bearer <key>`` (X-API-Key first), or None."""
    api_key = bearer = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1").strip()
        elif lowered == b"authorization" and bearer is None:
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                bearer = credentials.strip()
    return api_key or bearer


def _matches(given: str, keys: Iterable[str]) -> bool:
    found = False
    for key in keys:  # compare with every key (no early exit): timing does not tell which one matched
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def owner_of(key: str) -> str:
    """What a job stores about the key that created it: the SHA-256 of the key, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who is asking: ``owner`` is the hash of their key (None on an open server); ``admin`` sees every job."""

    owner: str | None
    admin: bool = False

    def may_see(self, job_owner: str | None) -> bool:
        """Jobs belong to the key that created them; a job created while the server was open is anyone's."""
        return self.admin or job_owner is None or job_owner == self.owner


def identify(settings: Settings, given: str | None) -> Caller | None:
    """The caller of a request carrying ``given``, or None when keys are configured and it is not one."""
    if not settings.api_keys and not settings.admin_key:
        return Caller(owner=None, admin=True)  # open server: no ownership to enforce
    if not given:
        return None
    if settings.admin_key and _matches(given, [settings.admin_key]):
        return Caller(owner=owner_of(given), admin=True)
    if _matches(given, settings.api_keys):
        return Caller(owner=owner_of(given))
    return None


def unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", UNAUTHORIZED_MESSAGE, headers={"WWW-Authenticate": "Bearer"})


class ApiKeyMiddleware:
    """401 for a ``/v1`` request without an accepted key, answered from the headers alone."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        guarded = path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")
        if guarded and identify(self.settings, key_from_headers(scope.get("headers", []))) is None:
            err = unauthorized()
            await error_response(err.status, err.code, err.message, headers=err.headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)
