"""An adversarial pass beyond issue 11's list, kept as regression tests: huge and many headers, many form
fields and files, deep or huge JSON, odd method and id spellings, unicode and control characters in form
values and filenames, Range/If-* headers on downloads, and concurrent DELETEs of a running job. Each is
answered 4xx with the common JSON error (or served normally), never 5xx, and the server stays ready."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import png_bytes
from tests.service.test_jobs import wait_done

IMAGE = {"file": ("a.png", png_bytes(), "image/png")}


def _error_code(r: object) -> str:
    return r.json()["error"]["code"]  # type: ignore[attr-defined, no-any-return]


def test_headers_over_the_limit_are_431(client: TestClient) -> None:
    r = client.get("/healthz", headers={"X-Big": "a" * 40_000})
    assert r.status_code == 431 and _error_code(r) == "headers_too_large"
    many = {f"X-H{i}": "v" * 20 for i in range(2000)}
    assert client.get("/healthz", headers=many).status_code == 431
    assert client.get("/healthz?q=" + "b" * 40_000).status_code == 431
    assert client.get("/healthz", headers={"X-Ok": "a" * 1000}).status_code == 200


def test_many_form_fields_or_files_are_400_not_5xx(client: TestClient) -> None:
    fields = {f"f{i}": "x" for i in range(1500)}
    r = client.post("/v1/protect", files=IMAGE, data=fields)
    assert r.status_code == 400 and "fields" in r.json()["error"]["message"]
    r = client.post("/v1/protect", files=[("file", (f"{i}.png", b"x")) for i in range(1100)])
    assert r.status_code == 400 and "files" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"X": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"X": [[' + b"9" * 100_000 + b"]]}",
        b'{"X": "\xff\xfe"}',
    ],
    ids=["deep-lists", "deep-objects", "huge-number", "not-utf8"],
)
def test_hostile_json_is_a_clean_4xx(client: TestClient, body: bytes) -> None:
    r = client.post("/v1/analysis/linear-vae", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and "error" in r.json()
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [("preset", "😀"), ("eot", "a\x00b"), ("eps", "nan"), ("eps", "inf"), ("eps", "1e400"), ("seed", str(2**70))],
)
def test_odd_form_values_are_422_with_a_message(client: TestClient, field: str, value: str) -> None:
    r = client.post("/v1/protect", files=IMAGE, data={"steps": "1", field: value})
    assert r.status_code == 422 and field in r.json()["error"]["message"]


def test_control_characters_in_a_filename_never_reach_a_header(client: TestClient) -> None:
    name = "\u202egnp.exe\r\nX-Evil: 1.png"
    r = client.post("/v1/protect", files={"file": (name, png_bytes(), "image/png")}, data={"steps": "1"})
    assert r.status_code == 200
    assert "x-evil" not in r.headers
    disposition = r.headers["content-disposition"]
    assert "\r" not in disposition and "\n" not in disposition and "\u202e" not in disposition


@pytest.mark.parametrize("job_id", ["%2e%2e", "a%00b", "%F0%9F%98%80", "%5c..%5c", "A" * 32])
def test_odd_job_ids_are_404(client: TestClient, job_id: str) -> None:
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 404 and _error_code(r) == "not_found"
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 404


def test_method_override_headers_are_ignored(client: TestClient) -> None:
    r = client.post("/v1/jobs/" + "a" * 32, headers={"X-HTTP-Method-Override": "DELETE"})
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"


def test_range_and_conditional_headers_get_the_whole_download(client: TestClient) -> None:
    job = client.post("/v1/jobs", files=[("files", ("a.png", png_bytes(), "image/png"))], data={"steps": "1"})
    job_id = job.json()["id"]
    assert wait_done(client, job_id)["status"] == "done"
    plain = client.get(f"/v1/jobs/{job_id}/items/0").content
    for headers in ({"Range": "bytes=0-10"}, {"Range": "bytes=999999-"}, {"If-None-Match": "*"},
                    {"If-Modified-Since": "garbage"}, {"If-Range": "x", "Range": "bytes=0-1"}):
        r = client.get(f"/v1/jobs/{job_id}/items/0", headers=headers)
        assert r.status_code == 200 and r.content == plain, headers
        assert client.get(f"/v1/jobs/{job_id}/results", headers=headers).status_code == 200


def test_concurrent_deletes_of_a_live_job_succeed_once(client: TestClient) -> None:
    files = [("files", (f"{i}.png", png_bytes(64, 64, seed=i), "image/png")) for i in range(4)]
    job_id = client.post("/v1/jobs", files=files, data={"steps": "5"}).json()["id"]
    with ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(lambda _: client.delete(f"/v1/jobs/{job_id}").status_code, range(6)))
    assert codes == [200] + [404] * 5
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    data_dir = client.app.state.settings.data_dir  # type: ignore[attr-defined]
    assert not [p for p in data_dir.rglob("*") if job_id in p.name]
    assert client.get("/readyz").status_code == 200
