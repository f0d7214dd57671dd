"""Batch jobs through TestClient: create, poll, per-item download, zip, delete, failures, expiry, recovery."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.job_store import JobStore
from service.settings import Settings
from tests.service.conftest import make_settings, png_bytes

FORM = {"steps": "2", "eps": "8"}


def wait_done(client: TestClient, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in ("done", "failed", "cancelled"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {body}")


def test_job_lifecycle(client: TestClient) -> None:
    files = [
        ("files", ("a.png", png_bytes(32, 32, seed=1), "image/png")),
        ("files", ("../b/../../secret.png", png_bytes(32, 32, seed=2), "image/png")),
        ("files", ("c.png", png_bytes(40, 24, seed=3), "image/png")),
        ("files", ("notes.txt", b"not an image", "text/plain")),
    ]
    r = client.post("/v1/jobs", files=files, data=FORM)
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] == "queued" and created["total"] == 4
    assert r.headers["location"] == f"/v1/jobs/{created['id']}"
    job = wait_done(client, created["id"])
    assert job["status"] == "done"
    assert job["progress"] == {"total": 4, "done": 3, "failed": 1, "running": 0, "fraction": 1.0}
    assert job["settings"]["steps"] == 2 and job["expires_at"] is not None
    names = [item["filename"] for item in job["items"]]
    assert names[1] == "secret.png"  # never a path
    bad = job["items"][3]
    assert bad["status"] == "failed" and "not a readable image" in bad["error"] and bad["download_url"] is None
    first = job["items"][0]
    assert first["certificate"]["steps"] == 2
    image = client.get(first["download_url"])
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (32, 32)
    assert client.get(f"/v1/jobs/{created['id']}/items/3").status_code == 409
    assert client.get(f"/v1/jobs/{created['id']}/items/9").status_code == 404

    z = client.get(f"/v1/jobs/{created['id']}/results")
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        entries = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
    # the one naming scheme (pca_attack.io.names): original names, each certificate <output>.json beside it
    assert entries == {"a.png", "a.png.json", "secret.png", "secret.png.json", "c.png", "c.png.json", "manifest.json"}
    assert manifest["items"][0]["output"] == "a.png" and manifest["items"][0]["report"] == "a.png.json"
    assert [i["status"] for i in manifest["items"]] == ["done", "done", "done", "failed"]

    d = client.delete(f"/v1/jobs/{created['id']}")
    assert d.status_code == 200 and d.json()["status"] == "done"
    assert client.get(f"/v1/jobs/{created['id']}").status_code == 404
    assert client.delete(f"/v1/jobs/{created['id']}").status_code == 404


def test_unknown_job_is_404_in_the_error_shape(client: TestClient) -> None:
    for path in ("/v1/jobs/nope", "/v1/jobs/" + "0" * 32, "/v1/jobs/../../etc/passwd/results"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"


def test_job_refuses_bad_settings_and_too_many_files(tiny_vae: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_vae, tmp_path / "d", max_files_per_job=2)
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/jobs", files=[("files", ("a.png", png_bytes()))], data={"steps": "99"})
        assert r.status_code == 422
        files = [("files", (f"{i}.png", png_bytes())) for i in range(3)]
        r = client.post("/v1/jobs", files=files, data=FORM)
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_files"
        r = client.post("/v1/jobs", data=FORM)
        assert r.status_code == 422


def test_delete_cancels_a_queued_job(tiny_vae: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_vae, tmp_path / "d", max_steps=10)
    with TestClient(create_app(settings)) as client:
        files = [("files", (f"{i}.png", png_bytes(64, 64, seed=i))) for i in range(8)]
        job = client.post("/v1/jobs", files=files, data={"steps": "10"}).json()
        r = client.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 200
        final = r.json()
        assert final["status"] in ("cancelled", "done")
        if final["status"] == "cancelled":
            assert any(i["status"] == "cancelled" for i in final["items"])
        assert not (settings.data_dir / "jobs" / job["id"]).exists()
        # the runner and worker keep going
        r = client.post("/v1/protect", files={"file": ("a.png", png_bytes())}, data=FORM)
        assert r.status_code == 200


def test_recovery_requeues_running_items_and_fails_missing_inputs(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, retention_s=60)
    job = store.create([("a.png", b"a"), ("b.png", b"b"), ("c.png", b"c")], {"steps": 2})
    claimed = store.claim(2)  # as if the server died while these two were running
    assert [c.index for c in claimed] == [0, 1]
    store.input_path(job.id, 1).unlink()  # and an upload vanished from the disk
    store.close()

    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, retention_s=60)
    counts = store.recover()
    assert counts == {"requeued": 2, "failed": 1}
    view = store.get(job.id)
    assert view is not None and view.status == "queued"
    assert [i.status for i in view.items] == ["queued", "failed", "queued"]
    assert "lost" in (view.items[1].error or "")


def test_expired_jobs_are_deleted(tiny_vae: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_vae, tmp_path / "d", job_retention_s=0.5, cleanup_interval_s=0.2)
    with TestClient(create_app(settings)) as client:
        job = client.post("/v1/jobs", files=[("files", ("a.png", png_bytes()))], data=FORM).json()
        assert wait_done(client, job["id"])["status"] == "done"
        deadline = time.monotonic() + 20
        while client.get(f"/v1/jobs/{job['id']}").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert not (settings.data_dir / "jobs" / job["id"]).exists()


def test_settings_validate() -> None:
    import pytest
    from pydantic import ValidationError

    for bad in (
        {"queue_size": 0},
        {"device": "tpu"},
        {"max_batch": 0},
        {"api_keys": "short"},
        {"database_url": "jobs.db"},
        {"dtype": "fp8"},
    ):
        with pytest.raises(ValidationError):
            Settings(**bad)  # type: ignore[arg-type]
    s = Settings(api_keys="key-one-123, key-two-456", data_dir="/tmp/pca-x")  # type: ignore[arg-type]
    assert s.api_keys == ["key-one-123", "key-two-456"]
    assert s.db_url == "sqlite:////tmp/pca-x/jobs.db"
