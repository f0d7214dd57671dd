"""``service.ray_app`` on a local Ray cluster: 2 Serve replicas of the FastAPI app (demo model) answer
/v1/protect and /v1/jobs through one shared jobs store, keep answering after one replica's process is
killed, and Serve brings the replica back."""

from __future__ import annotations

import io
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # two replicas loading the engine, a kill and a restart: about a minute


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def png(seed: int, size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'pca-protect[ray]'")
    serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install 'pca-protect[ray]'")
    from service.ray_app import APP_NAME, build

    env = {
        "PCA_MODEL": "demo", "PCA_DEVICE": "cpu", "PCA_DTYPE": "fp32", "PCA_OFFLINE": "true",
        "PCA_WITH_DECODER": "false", "PCA_MAX_BATCH": "1", "PCA_LOG_LEVEL": "warning",
        "PCA_DATA_DIR": str(tmp_path_factory.mktemp("serve") / "data"), "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(2, num_gpus=0, env=env), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def replica_pids() -> list[int]:
    """Live replica processes (Ray titles them ``ray::ServeReplica:<app>:<deployment>``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and title.startswith(b"ray::ServeReplica:pca-protect:PCAService"):
            pids.append(int(proc.name))
    return pids


def protect(url: str, seed: int, attempts: int = 3) -> httpx.Response:
    """POST /v1/protect; a request caught on the dying replica is retried (as a client would)."""
    for attempt in range(attempts):
        try:
            response = httpx.post(
                f"{url}/v1/protect", files={"file": ("x.png", png(seed), "image/png")}, data={"steps": "2"},
                timeout=120,
            )
            if response.status_code < 500 or attempt == attempts - 1:
                return response
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
        time.sleep(1)
    raise AssertionError("unreachable")


def wait_job(url: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


def test_two_replicas_answer_protect_and_jobs(served: str) -> None:
    assert len(replica_pids()) == 2
    first, second = protect(served, 0), protect(served, 0)
    assert first.status_code == 200 and first.content == second.content  # same seed, any replica
    with Image.open(io.BytesIO(first.content)) as im:
        assert im.size == (64, 64)
    files = [("files", (f"{n}.png", png(n), "image/png")) for n in range(3)]
    created = httpx.post(f"{served}/v1/jobs", files=files, data={"steps": "2"}, timeout=60)
    assert created.status_code in (200, 201, 202), created.text
    job_id = created.json()["id"]
    job = wait_job(served, job_id)
    assert job["status"] == "done", job
    for _ in range(4):  # the shared store: every replica knows the job
        assert httpx.get(f"{served}/v1/jobs/{job_id}", timeout=30).json()["status"] == "done"


def test_replica_killed_others_answer_and_it_comes_back(served: str) -> None:
    import ray.serve

    pids = replica_pids()
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    answers = [protect(served, seed) for seed in range(4)]
    assert [a.status_code for a in answers] == [200] * 4
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        alive = replica_pids()
        status = ray.serve.status().applications["pca-protect"].status
        if len(alive) == 2 and pids[0] not in alive and str(status).endswith("RUNNING"):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"replica not restarted: {replica_pids()} (killed {pids[0]})")
    assert protect(served, 0).status_code == 200
