"""``pca_client.http`` against the live service (every route) and against a scripted transport (retries,
Retry-After, bounded attempts, API key, error parsing, async client)."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from typing import Any

import httpx
import pytest
from PIL import Image

import pca_client.http as client_mod
from pca_client.http import AsyncPCAClient, PCAClient, PCAClientError, ProtectSettings, RetryPolicy
from tests.client.conftest import SIZE, LiveServer, image_bytes


def test_every_route_on_the_live_service(live_server: LiveServer) -> None:
    png = image_bytes(7)
    with PCAClient(live_server.url, retries=3) as c:
        assert c.health()["status"] == "ok"
        assert c.ready()["status"] == "ready"
        assert c.models()["model"]["name"]
        out = c.protect(png, steps=2, filename="pic.jpg")
        assert out.format == "png" and out.suffix == ".png" and out.filename == "pic.png"
        assert out.certificate["steps"] == 2 and out.budget_ok is True and out.linf_255 is not None
        assert Image.open(io.BytesIO(out.data)).size == (SIZE[1], SIZE[0])
        as_json = c.protect(png, ProtectSettings(steps=2), response="json")
        assert as_json.data == out.data and as_json.certificate["linf_255"] == out.certificate["linf_255"]
        jpeg = c.protect(png, steps=2, format="jpg", quality=90)
        assert jpeg.format == "jpeg" and jpeg.suffix == ".jpg" and jpeg.data[:2] == b"\xff\xd8"
        assert "linf_255" in c.diagnostics(png, out.data)

        job = c.create_job([("a.png", png), ("b.png", b"not an image")], steps=2)
        assert job["total"] == 2
        final = c.wait_job(job["id"], poll_s=0.2, timeout_s=120)
        assert final["status"] in ("done", "failed") and final["progress"]["done"] == 1
        assert [i["status"] for i in final["items"]] == ["done", "failed"]
        assert Image.open(io.BytesIO(c.job_item(job["id"], 0))).format == "PNG"
        names = zipfile.ZipFile(io.BytesIO(c.job_results(job["id"]))).namelist()
        assert "manifest.json" in names
        with pytest.raises(PCAClientError) as err:
            c.job_item(job["id"], 1)
        assert err.value.status == 409
        c.delete_job(job["id"])
        with pytest.raises(PCAClientError) as err:
            c.get_job(job["id"])
        assert err.value.status == 404 and err.value.code == "not_found"

        with pytest.raises(PCAClientError) as err:
            c.protect(b"plain text", steps=2)
        assert err.value.status == 415 and err.value.code == "unsupported_image" and not err.value.fatal


def test_async_client_on_the_live_service(live_server: LiveServer) -> None:
    async def go() -> list[Any]:
        async with AsyncPCAClient(live_server.url, retries=3) as c:
            assert (await c.health())["status"] == "ok"
            return await c.protect_many([image_bytes(1), b"nope", image_bytes(2)], steps=2, concurrency=2)

    results = asyncio.run(go())
    assert [type(r).__name__ for r in results] == ["ProtectResult", "PCAClientError", "ProtectResult"]


# -- scripted transport ------------------------------------------------------------------------------
class Script:
    """Answers requests from a list of (status, headers, body) or exceptions; records them."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        status, headers, body = answer
        content = json.dumps(body).encode() if isinstance(body, dict) else body
        return httpx.Response(status, headers=headers, content=content)


@pytest.fixture()
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []

    async def record(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(client_mod, "_sleep", record)
    return waited


def scripted(answers: list[Any], **kwargs: Any) -> tuple[PCAClient, Script]:
    script = Script(answers)
    policy = RetryPolicy(retries=kwargs.pop("retries", 4), backoff=0.1, max_backoff=1.0)
    return PCAClient("http://test", transport=httpx.MockTransport(script), retry=policy, **kwargs), script


def _err(code: str) -> dict:
    return {"error": {"code": code, "message": f"{code} message", "detail": {"x": 1}}}


def test_retry_after_is_honoured_on_429_and_503(sleeps: list[float]) -> None:
    ok = (200, {}, {"status": "ok"})
    c, script = scripted(
        [(429, {"Retry-After": "7"}, _err("queue_full")), (503, {"Retry-After": "3"}, _err("timeout")), ok]
    )
    assert c.health() == {"status": "ok"}
    assert len(script.requests) == 3
    assert sleeps[0] >= 7 and sleeps[1] >= 3


def test_backoff_grows_and_attempts_are_bounded(sleeps: list[float]) -> None:
    c, script = scripted([httpx.ConnectError("refused")], retries=4)
    with pytest.raises(PCAClientError) as err:
        c.models()
    assert err.value.status is None and err.value.code == "connection_error" and err.value.transient
    assert len(script.requests) == 5 and len(sleeps) == 4
    assert sleeps[0] < sleeps[2] and all(s <= 1.3 for s in sleeps)


def test_timeouts_are_retried_then_succeed(sleeps: list[float]) -> None:
    c, script = scripted([httpx.ReadTimeout("slow"), (200, {}, {"ok": True})])
    assert c.models() == {"ok": True}
    assert len(script.requests) == 2


def test_errors_are_parsed_and_not_retried(sleeps: list[float]) -> None:
    c, script = scripted([(422, {}, _err("invalid_parameter"))])
    with pytest.raises(PCAClientError) as err:
        c.protect(b"x", steps=5)
    assert (err.value.status, err.value.code, err.value.message) == (
        422,
        "invalid_parameter",
        "invalid_parameter message",
    )
    assert err.value.detail == {"x": 1} and len(script.requests) == 1 and not sleeps


def test_api_key_header_and_401_is_fatal(sleeps: list[float]) -> None:
    c, script = scripted([(401, {}, _err("unauthorized"))], api_key="secret-key-123")
    with pytest.raises(PCAClientError) as err:
        c.models()
    assert script.requests[0].headers["X-API-Key"] == "secret-key-123"
    assert err.value.status == 401 and err.value.fatal


def test_job_creation_is_not_replayed_after_a_read_timeout(sleeps: list[float]) -> None:
    c, script = scripted([httpx.ReadTimeout("maybe created")])
    with pytest.raises(PCAClientError):
        c.create_job([("a.png", b"123")])
    assert len(script.requests) == 1
    c, script = scripted([httpx.ConnectError("refused"), (202, {}, {"id": "j1", "status": "queued"})])
    assert c.create_job([("a.png", b"123")])["id"] == "j1"


def test_form_fields_and_certificate_header(sleeps: list[float]) -> None:
    import base64

    cert = {"linf_255": 3.0, "budget_ok": True, "format": "webp"}
    header = base64.urlsafe_b64encode(json.dumps(cert).encode()).decode().rstrip("=")
    c, script = scripted(
        [
            (
                200,
                {
                    "X-PCA-Certificate": header,
                    "Content-Type": "image/webp",
                    "Content-Disposition": 'attachment; filename="x.webp"',
                },
                b"RIFF",
            )
        ]
    )
    out = c.protect(("x.png", b"data"), ProtectSettings(eps=8, random_start=True), format="WEBP", quality=80)
    body = script.requests[0].content
    for field in (
        b'name="eps"\r\n\r\n8',
        b'name="random_start"\r\n\r\ntrue',
        b'name="format"\r\n\r\nwebp',
        b'name="quality"\r\n\r\n80',
        b'filename="x.png"',
    ):
        assert field in body
    assert b'name="steps"' not in body  # unset fields are left to the server's defaults
    assert out.certificate == cert and out.suffix == ".webp" and out.filename == "x.webp"


def test_remote_processor_marks_exhausted_transient_errors_fatal(sleeps: list[float]) -> None:
    from pathlib import Path

    c, _ = scripted([httpx.ConnectError("down")], retries=1)
    with pytest.raises(PCAClientError) as err:
        c.processor(steps=2)(Path("a.png"), b"123")
    assert err.value.fatal
    c, _ = scripted([(415, {}, _err("unsupported_image"))])
    with pytest.raises(PCAClientError) as err:
        c.processor(steps=2)(Path("a.png"), b"123")
    assert not err.value.fatal


def test_unicode_download_name_is_read_from_rfc5987(sleeps: list[float]) -> None:
    from pca_attack.io.names import content_disposition

    headers = {"Content-Type": "image/png", "Content-Disposition": content_disposition("café 猫.png")}
    c, _ = scripted([(200, headers, b"\x89PNG")])
    assert c.protect(("café 猫.jpg", b"data"), ProtectSettings()).filename == "café 猫.png"
    c, _ = scripted([(200, {"Content-Type": "image/png", "Content-Disposition": 'attachment; filename="a.png"'},
                      b"\x89PNG")])
    assert c.protect(("a.png", b"data"), ProtectSettings()).filename == "a.png"  # plain filename= still read
