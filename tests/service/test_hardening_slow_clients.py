"""Issue 11 items 7 and 18: a live ``pca-protect serve`` (loopback) with tiny slow-client limits. Idle and
header-trickling connections beyond ``limit_concurrency`` do not stop new requests from being answered,
and are closed after ``header_timeout_s``; a trickled body is answered 408; oversized headers 400; the
start-up log names the model, the device and the data folder it created in the working directory."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import REPO, free_port

HEADER_TIMEOUT_S = 1.0
LIMIT = 8


class ServeProcess:
    """``python -m pca_cli serve`` in a subprocess, started in ``cwd`` (no --data-dir: ./data is created)."""

    def __init__(self, tiny_vae: Path, cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / "serve.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "PCA_MAX_STEPS": "4",
            "PCA_LIMIT_CONCURRENCY": str(LIMIT),
            "PCA_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "PCA_KEEP_ALIVE_TIMEOUT_S": "1",
            "PCA_BODY_TIMEOUT_S": "1",
            "PCA_MIN_BODY_RATE": "1000",
            "PCA_MAX_HEADER_BYTES": "8192",
        }
        env.pop("PCA_DATA_DIR", None)
        cmd = [sys.executable, "-m", "pca_cli", "serve", "--port", str(self.port), "--model", str(tiny_vae)]
        cmd += ["--device", "cpu", "--dtype", "fp32", "--offline", "--log-level", "info"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"serve did not become ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def served(tiny_vae: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = ServeProcess(tiny_vae, tmp_path_factory.mktemp("serve_cwd"))
    try:
        yield server
    finally:
        server.stop()


def _connect(port: int, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if first:
        sock.sendall(first)
    return sock


def _closed_by_server(sock: socket.socket, wait_s: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``wait_s`` (reading what it sent first)."""
    sock.settimeout(wait_s)
    got = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True, got
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        return True, got
    except TimeoutError:
        return False, got


def test_trickling_connections_over_the_limit_neither_block_nor_stay(served: ServeProcess) -> None:
    idle = [_connect(served.port, b"") for _ in range(LIMIT)]  # connect, send nothing
    trickling = [_connect(served.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") for _ in range(2 * LIMIT)]
    time.sleep(0.2)
    answer = httpx.get(served.url + "/healthz", timeout=5)  # 3 x the limit is held: still answered
    assert answer.status_code in (200, 503), answer.text
    for _ in range(3):  # keep trickling a header byte now and then (a deadline, not an idle timer)
        time.sleep(0.5)
        for sock in trickling:
            with contextlib.suppress(OSError):
                sock.sendall(b"X")
    for sock in idle + trickling:
        closed, sent = _closed_by_server(sock, 3 * HEADER_TIMEOUT_S)
        sock.close()
        assert closed, "a connection that never completed its headers was held open"
        assert sent == b"" or sent.startswith(b"HTTP/1.1 408"), sent[:80]
    assert httpx.get(served.url + "/healthz", timeout=5).status_code == 200


def test_keep_alive_connection_that_starts_trickling_is_closed(served: ServeProcess) -> None:
    sock = _connect(served.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request, never finished
    for _ in range(4):
        time.sleep(0.4)
        try:
            sock.sendall(b"X-A: b\r\n")
        except OSError:
            break
    closed, _ = _closed_by_server(sock, 3 * HEADER_TIMEOUT_S)
    sock.close()
    assert closed


def test_slow_body_is_answered_408_and_closed(served: ServeProcess) -> None:
    head = (
        b"POST /v1/protect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    sock = _connect(served.port, head + b"--zz\r\n")
    for _ in range(12):  # 10 bytes every 0.25 s = 40 B/s, far under min_body_rate
        time.sleep(0.25)
        try:
            sock.sendall(b"0123456789")
        except OSError:
            break
    closed, sent = _closed_by_server(sock, 5)
    sock.close()
    assert closed
    assert sent.startswith(b"HTTP/1.1 408"), sent[:200]
    body = json.loads(sent.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_timeout" and "bytes/s" in body["error"]["message"]


def test_a_body_at_a_decent_rate_is_not_refused(served: ServeProcess) -> None:
    from tests.service.conftest import png_bytes

    r = httpx.post(served.url + "/v1/protect", files={"file": ("a.png", png_bytes())}, data={"steps": "1"}, timeout=60)
    assert r.status_code == 200, r.text


def test_oversized_headers_are_refused(served: ServeProcess) -> None:
    r = httpx.get(served.url + "/healthz", headers={"X-Big": "a" * 20_000}, timeout=5)  # in one piece
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
    sock = _connect(served.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    for _ in range(6):  # in pieces: h11's incomplete-event limit answers 400 once 8 KiB are buffered
        try:
            sock.sendall(b"X-Pad: " + b"p" * 3000 + b"\r\n")
        except OSError:
            break
        time.sleep(0.05)
    closed, sent = _closed_by_server(sock, 3)
    sock.close()
    assert closed and sent.startswith(b"HTTP/1.1 400"), sent[:80]
    assert httpx.get(served.url + "/healthz", headers={"X-Ok": "a" * 2000}, timeout=5).status_code == 200


def test_start_up_log_names_model_device_and_created_data_folder(served: ServeProcess, tiny_vae: Path) -> None:
    text = served.log.read_text()
    folder = (served.log.parent / "data").resolve()
    assert folder.is_dir()
    assert f"created the data folder {folder} in the working directory" in text, text[-3000:]
    assert "serving model" in text and "on device cpu" in text and f"data folder {folder}" in text
