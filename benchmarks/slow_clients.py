"""Slow-client limits of a live ``pca-protect serve --model demo`` (issue 11 item 7), printed as JSON.

Opens ``--connections`` connections to the server (half send nothing, half trickle header bytes), asks for
/healthz five times while they are held, then records when the server closed each one and whether
/healthz answers afterwards.

    python benchmarks/slow_clients.py --connections 500                      # defaults: limit 200, 15 s
    python benchmarks/slow_clients.py --connections 24 --limit 8 --header-timeout 1
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

ROOT = Path(__file__).resolve().parents[1]


def start_server(port: int, data_dir: Path, limit: int, header_timeout: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PCA_LIMIT_CONCURRENCY": str(limit), "PCA_HEADER_TIMEOUT_S": str(header_timeout)}
    cmd = [sys.executable, "-m", "pca_cli", "serve", "--model", "demo", "--device", "cpu", "--port", str(port)]
    cmd += ["--data-dir", str(data_dir), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not become ready")


def _poll_closed(socks: list[socket.socket], t0: float, deadline: float) -> list[float | None]:
    """Seconds after ``t0`` at which the server closed each socket (None: still open at ``deadline``)."""
    closed: list[float | None] = [None] * len(socks)
    while time.monotonic() < deadline and any(c is None for c in closed):
        for i, sock in enumerate(socks):
            if closed[i] is not None:
                continue
            try:
                if i % 2:
                    sock.send(b"X")
                data = sock.recv(4096)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    closed[i] = time.monotonic() - t0
            except BlockingIOError:
                pass
            except OSError:
                closed[i] = time.monotonic() - t0
        time.sleep(0.05)
    return closed


def measure(port: int, connections: int, header_timeout: float) -> dict[str, object]:
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    socks = []
    for i in range(connections):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    answers = []
    for _ in range(5):
        start = time.monotonic()
        code = httpx.get(url + "/healthz", timeout=10).status_code
        answers.append({"status": code, "seconds": round(time.monotonic() - start, 3)})
    for sock in socks:
        sock.setblocking(False)
    closed = _poll_closed(socks, t0, time.monotonic() + 10 * header_timeout + 5)
    done = [c for c in closed if c is not None]
    for sock in socks:
        sock.close()
    return {
        "connections": connections,
        "answers_while_held": answers,
        "closed": len(done),
        "closed_after_s": [round(min(done), 2), round(max(done), 2)] if done else None,
        "healthz_after": httpx.get(url + "/healthz", timeout=10).status_code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--limit", type=int, default=200, help="PCA_LIMIT_CONCURRENCY")
    parser.add_argument("--header-timeout", type=float, default=15.0, help="PCA_HEADER_TIMEOUT_S")
    parser.add_argument("--port", type=int, default=8719)
    args = parser.parse_args()
    with TemporaryDirectory() as tmp:
        proc = start_server(args.port, Path(tmp) / "data", args.limit, args.header_timeout)
        try:
            result = measure(args.port, args.connections, args.header_timeout)
        finally:
            proc.terminate()
            proc.wait(30)
    print(json.dumps({"limit_concurrency": args.limit, "header_timeout_s": args.header_timeout, **result}))


if __name__ == "__main__":
    main()
