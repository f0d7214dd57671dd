"""Issue 11 items 4-5: the API key is checked before the body is read (every /v1 upload route, and a real
uvicorn refusing a 100 MB unauthenticated upload without spooling it), and jobs belong to the key that
created them (other keys get 404 on every job route; the admin key sees all)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import Caller, identify, key_from_headers, owner_of
from tests.service.conftest import LiveServer, make_settings, png_bytes
from tests.service.test_jobs import FORM

KEY_A, KEY_B, ADMIN = "key-a-1234567", "key-b-7654321", "admin-key-0000"
UPLOAD_ROUTES = ["/v1/protect", "/v1/jobs", "/v1/diagnostics"]
GARBAGE = b"--xyz\r\nthis is not multipart at all \x00\xff" * 50


@pytest.fixture()
def keyed(tiny_vae: Path, tmp_path: Path) -> TestClient:
    settings = make_settings(tiny_vae, tmp_path / "data", api_keys=[KEY_A, KEY_B], admin_key=ADMIN)
    with TestClient(create_app(settings)) as client:
        yield client  # type: ignore[misc]


def test_garbage_multipart_without_key_is_401_on_every_upload_route(keyed: TestClient) -> None:
    for route in UPLOAD_ROUTES:
        for headers in ({}, {"X-API-Key": "wrong-key-000"}):
            r = keyed.post(
                route, content=GARBAGE, headers={"Content-Type": "multipart/form-data; boundary=xyz", **headers}
            )
            assert r.status_code == 401, (route, r.status_code, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
    # with a key, the same garbage is the body's fault (4xx, not 401)
    r = keyed.post(
        "/v1/protect",
        content=GARBAGE,
        headers={"Content-Type": "multipart/form-data; boundary=xyz", "X-API-Key": KEY_A},
    )
    assert 400 <= r.status_code < 500 and r.status_code != 401


def test_every_v1_route_needs_the_key_before_anything_else(keyed: TestClient) -> None:
    for method, route in [("get", "/v1/models"), ("post", "/v1/analysis/linear-vae"), ("get", "/v1/jobs/" + "0" * 32)]:
        assert getattr(keyed, method)(route).status_code == 401
    assert keyed.get("/healthz").status_code == 200


def test_key_parsing_and_identity() -> None:
    assert key_from_headers([(b"authorization", b"Bearer  abc-def-ghi ")]) == "abc-def-ghi"
    assert key_from_headers([(b"x-api-key", b"k1"), (b"authorization", b"Bearer k2")]) == "k1"
    assert key_from_headers([(b"authorization", b"Basic Zm9vOmJhcg==")]) is None
    assert owner_of(KEY_A) != owner_of(KEY_B) and KEY_A not in owner_of(KEY_A)
    assert Caller(owner_of(KEY_A)).may_see(owner_of(KEY_A)) and not Caller(owner_of(KEY_A)).may_see(owner_of(KEY_B))


def _finished_job(client: TestClient, key: str) -> str:
    files = [("files", ("a.png", png_bytes(32, 32, seed=1), "image/png"))]
    r = client.post("/v1/jobs", files=files, data=FORM, headers={"X-API-Key": key})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": key}).json()["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.1)
    return str(job_id)


def test_jobs_belong_to_the_key_that_created_them(keyed: TestClient) -> None:
    job_id = _finished_job(keyed, KEY_A)
    routes = [
        ("get", f"/v1/jobs/{job_id}"),
        ("get", f"/v1/jobs/{job_id}/results"),
        ("get", f"/v1/jobs/{job_id}/items/0"),
    ]
    for method, route in [*routes, ("delete", f"/v1/jobs/{job_id}")]:
        r = getattr(keyed, method)(route, headers={"X-API-Key": KEY_B})
        assert r.status_code == 404, (route, r.status_code)
        assert r.json()["error"]["code"] == "not_found" and "does not exist" in r.json()["error"]["message"]
    for method, route in routes:  # B's DELETE did nothing: the owner and the admin still see everything
        assert getattr(keyed, method)(route, headers={"X-API-Key": KEY_A}).status_code == 200, route
        assert getattr(keyed, method)(route, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200, route
    assert keyed.delete(f"/v1/jobs/{job_id}", headers={"X-API-Key": ADMIN}).status_code == 200
    assert keyed.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": KEY_A}).status_code == 404


def test_owner_may_delete_and_the_store_keeps_only_a_hash(keyed: TestClient) -> None:
    job_id = _finished_job(keyed, KEY_B)
    store = keyed.app.state.store  # type: ignore[attr-defined]
    assert store.get(job_id).owner == owner_of(KEY_B)
    assert keyed.delete(f"/v1/jobs/{job_id}", headers={"X-API-Key": KEY_B}).status_code == 200


def test_open_server_has_no_owners(tiny_vae: Path, tmp_path: Path) -> None:
    assert identify(make_settings(tiny_vae, tmp_path / "d"), None) == Caller(owner=None, admin=True)


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_live_unauthenticated_100mb_upload_is_refused_before_the_body(tiny_vae: Path, tmp_path: Path) -> None:
    """A real uvicorn: headers announcing 100 MB of multipart, no key -> 401 at once, no byte spooled."""
    spool = tmp_path / "spool"
    spool.mkdir()
    data_dir = tmp_path / "data"
    server = LiveServer(tiny_vae, data_dir, PCA_API_KEYS=KEY_A, TMPDIR=str(spool)).start()
    try:
        before = set(_files_under(data_dir))
        size = 100 * 1024 * 1024
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head + b"--xyz\r\n" + os.urandom(1 << 20))  # 1 MB of the 100 announced
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert _files_under(spool) == []
        assert set(_files_under(data_dir)) == before  # nothing new under the data folder either
    finally:
        server.stop()
