"""The client's protocol, free of any I/O: errors, the retry policy, the protect settings (derived from
``pca_attack.options.ProtectOptions``), how each route's request is built and how answers are parsed.
``pca_client.http`` sends these requests."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from pca_attack.io.formats import FORMATS
from pca_attack.options import ProtectOptions, field_bounds, format_alias

FileInput = str | os.PathLike[str] | bytes | tuple[str, bytes]
RETRY_STATUSES = frozenset({429, 502, 503, 504})
FINAL_JOB_STATES = frozenset({"done", "failed", "cancelled"})


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


class _SettingsBase(BaseModel):
    """Form fields of /v1/protect and /v1/jobs; None (the default of every field) means "the server's
    default". Fields, bounds and descriptions are those of ``ProtectOptions``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("format", mode="before", check_fields=False)
    @classmethod
    def _format_alias(cls, value: Any) -> Any:
        return format_alias(value)

    def merged(self, **options: Any) -> ProtectSettings:
        """A copy with the non-None ``options`` applied (unknown names raise TypeError)."""
        unknown = sorted(set(options) - set(type(self).model_fields))
        if unknown:
            raise TypeError(f"unknown protect option(s): {', '.join(unknown)}")
        changes = {k: v for k, v in options.items() if v is not None}
        return type(self)(**{**self.model_dump(exclude_none=True), **changes})

    def form(self) -> dict[str, str]:
        """The set fields as form values (booleans as true/false)."""
        values = self.model_dump(exclude_none=True)
        return {k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in values.items()}


def optional_fields(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s fields, each optional with default None, same bounds and description."""
    return {
        name: (info.annotation | None, Field(default=None, description=info.description, **field_bounds(info)))  # type: ignore[operator]
        for name, info in model.model_fields.items()
    }


if TYPE_CHECKING:
    ProtectSettings = _SettingsBase
else:
    ProtectSettings = create_model("ProtectSettings", __base__=_SettingsBase, **optional_fields(ProtectOptions))
    ProtectSettings.__doc__ = _SettingsBase.__doc__


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
        known = FORMATS.get(self.format)
        return known.suffix if known else f".{self.format}"

    @property
    def linf_255(self) -> float | None:
        value = self.certificate.get("linf_255")
        return float(value) if value is not None else None

    @property
    def budget_ok(self) -> bool | None:
        value = self.certificate.get("budget_ok")
        return bool(value) if value is not None else None


@dataclass
class Call:
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


def merge_settings(settings: ProtectSettings | None, options: dict[str, Any]) -> ProtectSettings:
    return (settings or ProtectSettings()).merged(**options)


def error_from(response: httpx.Response) -> PCAClientError:
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
    return PCAClientError(response.status_code, code, message, detail, retry_after(response))


def retry_after(response: httpx.Response) -> float | None:
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
    """The download name: RFC 5987 ``filename*=UTF-8''...`` (Unicode) first, else the plain ``filename=``."""
    header = response.headers.get("Content-Disposition", "")
    extended = re.search(r"filename\*=UTF-8''([^;\s]+)", header, re.IGNORECASE)
    if extended:
        return unquote(extended.group(1))
    match = re.search(r'filename="?([^";]+)"?', header)
    return match.group(1) if match else None


def parse_protect(response: httpx.Response, as_json: bool) -> ProtectResult:
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


def protect_call(file: FileInput, settings: ProtectSettings, filename: str | None, as_json: bool) -> Call:
    return Call(
        "POST",
        "/v1/protect",
        params={"response": "json" if as_json else "image"},
        data=settings.form(),
        files=[_file_part("file", file, filename)],
    )


def jobs_call(files: Sequence[FileInput], settings: ProtectSettings) -> Call:
    parts = [_file_part("files", f) for f in files]
    return Call("POST", "/v1/jobs", data=settings.form(), files=parts, ok=(200, 201, 202), idempotent=False)


def diagnostics_call(file: FileInput, protected: FileInput | None) -> Call:
    parts = [_file_part("file", file)]
    if protected is not None:
        parts.append(_file_part("protected", protected))
    return Call("POST", "/v1/diagnostics", files=parts)


def job_timeout(job_id: str, job: dict[str, Any], timeout_s: float | None) -> PCAClientError:
    return PCAClientError(None, "timeout", f"job {job_id} still {job.get('status')} after {timeout_s} s")




def retry_wait(
    policy: RetryPolicy, call: Call, attempt: int, exc: Exception | None, response: httpx.Response | None
) -> float:
    """Seconds to wait before retrying ``call``, or -1 to stop (the caller then raises)."""
    if attempt >= policy.retries:
        return -1
    if exc is not None:
        if not call.idempotent and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return -1  # the request may have reached the server: never replay it
        return policy.delay(attempt)
    assert response is not None
    if response.status_code in RETRY_STATUSES:
        return policy.delay(attempt, retry_after(response))
    return -1


def transport_error(exc: Exception, attempts: int) -> PCAClientError:
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
    return PCAClientError(None, code, f"{type(exc).__name__}: {exc} (after {attempts} attempt(s))")
