"""A real uvicorn on 127.0.0.1 in a subprocess: overload, kill -9 + restart with a job in flight, and a
bounded schemathesis run (no 5xx)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import LiveServer, png_bytes


def test_live_protect_and_health(live_server: LiveServer) -> None:
    r = httpx.post(
        live_server.url + "/v1/protect", files={"file": ("a.png", png_bytes())}, data={"steps": "2"}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-pca-budget-ok"] == "true"
    assert httpx.get(live_server.url + "/healthz").status_code == 200


def test_20_concurrent_requests_with_a_small_queue(live_server: LiveServer) -> None:
    """queue_size=2: the overflow is answered 429 (with Retry-After), never 5xx, and the server stays up."""
    data = png_bytes(64, 64)

    def one(i: int) -> httpx.Response:
        return httpx.post(
            live_server.url + "/v1/protect",
            files={"file": (f"{i}.png", data)},
            data={"steps": "5", "seed": str(i)},
            timeout=120,
        )

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(one, range(20)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429, 503}, codes
    assert 200 in codes
    for r in responses:
        if r.status_code in (429, 503):
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] in ("queue_full", "timeout", "not_ready")
    assert httpx.get(live_server.url + "/readyz").status_code == 200
    assert (
        httpx.post(
            live_server.url + "/v1/protect", files={"file": ("z.png", data)}, data={"steps": "2"}, timeout=60
        ).status_code
        == 200
    )
    metrics = httpx.get(live_server.url + "/metrics").text
    assert "pca_engine_queue_depth 0.0" in metrics


def test_disconnected_client_frees_its_slot(live_server: LiveServer) -> None:
    data = png_bytes(128, 128)
    for i in range(4):  # clients that give up long before the attack ends
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(
                live_server.url + "/v1/protect", files={"file": (f"{i}.png", data)}, data={"steps": "10"}, timeout=0.3
            )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(live_server.url + "/readyz").json()["detail"]["queue_depth"] == 0:
            break
        time.sleep(0.2)
    r = httpx.post(
        live_server.url + "/v1/protect", files={"file": ("ok.png", png_bytes())}, data={"steps": "2"}, timeout=60
    )
    assert r.status_code == 200


def test_job_survives_kill_9_and_restart(tiny_vae: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = LiveServer(tiny_vae, data_dir, PCA_MAX_BATCH="1").start()
    try:
        files = [("files", (f"img{i}.png", png_bytes(64, 64, seed=i))) for i in range(8)]
        r = httpx.post(server.url + "/v1/jobs", files=files, data={"steps": "10"}, timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 30  # wait until the job is under way, then kill -9 mid-job
        while time.monotonic() < deadline:
            if httpx.get(f"{server.url}/v1/jobs/{job_id}").json()["status"] == "running":
                break
            time.sleep(0.05)
        server.kill9()
        # lose one upload that has not been processed yet, as a disk accident would
        inputs = sorted((data_dir / "jobs" / job_id).glob("*.in"))
        assert inputs, "the job finished before the kill; the test needs it in flight"
        lost = inputs[-1]
        lost.unlink()
    finally:
        server.stop()

    restarted = LiveServer(tiny_vae, data_dir).start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            job = httpx.get(f"{restarted.url}/v1/jobs/{job_id}").json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
        assert job["status"] == "done", job
        assert job["total"] == 8 and len(job["items"]) == 8
        for item in job["items"]:
            assert item["status"] in ("done", "failed"), item
            if item["status"] == "failed":
                assert item["error"] and "lost" in item["error"]
        assert job["progress"]["done"] + job["progress"]["failed"] == 8
        assert job["progress"]["failed"] == 1  # exactly the upload removed while the server was down
        done = next(i for i in job["items"] if i["status"] == "done")
        assert httpx.get(restarted.url + done["download_url"]).status_code == 200
    finally:
        restarted.stop()


@pytest.mark.skipif(
    shutil.which("schemathesis") is None and shutil.which(str(Path(sys.executable).parent / "schemathesis")) is None,
    reason="schemathesis CLI not installed",
)
def test_schemathesis_finds_no_server_errors(live_server: LiveServer, tmp_path: Path) -> None:
    exe = shutil.which(str(Path(sys.executable).parent / "schemathesis")) or "schemathesis"
    cmd = [
        exe,
        "run",
        live_server.url + "/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "5",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "1",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--max-time",
        "30",
        "--generation-database",
        "none",
        "--suppress-health-check",
        "all",
        "--no-color",
        "--rate-limit",
        "auto",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Tested: " in result.stdout and "passed" in result.stdout, result.stdout[-3000:]
