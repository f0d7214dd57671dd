"""Issue 11 item 6: a truncated image in a job fails its item with the text /v1/protect answers (415) for
the same file; unexpected errors are really logged; under ``pca-protect serve`` the app's start-up and
job-recovery INFO lines appear (the CLI's logging set-up no longer hides them)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import REPO, free_port, png_bytes
from tests.service.test_jobs import FORM, wait_done

PNG_HEADER_20 = png_bytes()[:20]


def test_truncated_png_fails_its_job_item_like_protect_answers_it(client: TestClient) -> None:
    direct = client.post("/v1/protect", files={"file": ("h.png", PNG_HEADER_20, "image/png")}, data=FORM)
    assert direct.status_code == 415, direct.text
    r = client.post("/v1/jobs", files=[("files", ("h.png", PNG_HEADER_20, "image/png"))], data=FORM)
    assert r.status_code == 202, r.text
    item = wait_done(client, r.json()["id"])["items"][0]
    assert item["status"] == "failed"
    assert item["error"] == direct.json()["error"]["message"]
    assert "could not be decoded as an image" in item["error"] and "unexpected" not in item["error"]


def test_unexpected_errors_are_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("simulated engine bug 4242")

    client.app.state.engine.protect = boom  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="service"):
        r = client.post("/v1/protect", files={"file": ("a.png", png_bytes())}, data=FORM)
        assert r.status_code == 500 and "logged" in r.json()["error"]["message"]
        job = client.post("/v1/jobs", files=[("files", ("a.png", png_bytes(), "image/png"))], data=FORM)
        item = wait_done(client, job.json()["id"])["items"][0]
    assert item["status"] == "failed" and "simulated engine bug 4242" in item["error"]
    logged = [rec for rec in caplog.records if rec.exc_info and "4242" in str(rec.exc_info[1])]
    assert len(logged) >= 2, [rec.getMessage() for rec in caplog.records]


def test_serve_logs_start_up_and_job_recovery(tiny_vae: Path, tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "pca_cli", "serve", "--model", str(tiny_vae), "--device", "cpu", "--offline"]
    cmd += ["--port", str(port), "--data-dir", str(tmp_path / "data")]
    log_file = tmp_path / "serve.log"
    with open(log_file, "wb") as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(20)
    text = log_file.read_text()
    assert "environment:" in text and "job recovery after start" in text, text[-3000:]
