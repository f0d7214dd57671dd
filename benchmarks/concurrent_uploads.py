"""Concurrent large uploads to a real ``pca-protect serve`` on loopback: no 5xx, all finish, memory in budget.

Starts the server (one torch thread, ``PCA_MAX_MEMORY`` set explicitly, under ``prlimit --as``), waits until
it is ready, sends one small warm-up image (the memory model is measured on first use) and reads the idle
resident size; then posts ``--concurrent`` photos of ``--size`` (scikit-image's astronaut, upscaled) at once
to ``POST /v1/protect``. Reports every answer's status and seconds, the server's peak resident size
(``VmHWM`` of ``/proc/<pid>/status``, the kernel's high-water mark) against ``budget + idle`` and against the
budget, and the certificates' plans (tiles). ``--request-timeout`` raises the service's wait limit
(``PCA_REQUEST_TIMEOUT_S``): the engine runs one micro-batch at a time, so later uploads wait for earlier ones.

Run: ``nice -n 10 python benchmarks/concurrent_uploads.py --concurrent 2 --size 1155x866 --max-memory 1.5GB``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.large_images import photo_bytes  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_bytes(pid: int, field: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` line of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def start_server(args: argparse.Namespace, port: int, data_dir: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PCA_MAX_MEMORY": args.max_memory, "PCA_REQUEST_TIMEOUT_S": str(args.request_timeout),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PCA_OFFLINE": "1"}
    command = ["prlimit", f"--as={args.address_space}", sys.executable, "-m", "pca_cli", "serve", "--port", str(port),
               "--model", args.model, "--device", "cpu", "--data-dir", data_dir]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(base: str, server: subprocess.Popen[bytes], limit_s: float = 600.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {server.stderr.read().decode()[-2000:] if server.stderr else ''}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError("server not ready")


async def upload(client: httpx.AsyncClient, base: str, data: bytes, steps: int, index: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        answer = await client.post(f"{base}/v1/protect", params={"response": "json"},
                                   files={"file": (f"photo{index}.png", data, "image/png")}, data={"steps": str(steps)})
    except httpx.HTTPError as exc:
        return {"index": index, "status": None, "error": repr(exc), "seconds": time.perf_counter() - t0}
    out: dict[str, Any] = {"index": index, "status": answer.status_code, "seconds": round(time.perf_counter() - t0, 1)}
    if answer.status_code == 200:
        cert = answer.json()["certificate"]
        out |= {"tiles": cert.get("tiles"), "tile_size": cert.get("tile_size"), "budget_ok": cert.get("budget_ok")}
    else:
        out["body"] = answer.text[:400]
    return out


async def burst(base: str, data: bytes, steps: int, count: int) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(None)) as client:
        return list(await asyncio.gather(*(upload(client, base, data, steps, i) for i in range(count))))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pca_attack.attack.sizes import memory_free, parse_size

    width, height = (int(v) for v in args.size.split("x"))
    data = photo_bytes(width, height)
    port, budget = free_port(), parse_size(args.max_memory)
    free_ram = memory_free(__import__("torch").device("cpu"))
    with tempfile.TemporaryDirectory() as data_dir:
        server = start_server(args, port, data_dir)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, server)
            warm = asyncio.run(burst(base, photo_bytes(64, 64), 1, 1))[0]
            idle = status_bytes(server.pid, "VmRSS")
            t0 = time.perf_counter()
            answers = asyncio.run(burst(base, data, args.steps, args.concurrent))
            wall = time.perf_counter() - t0
            peak = status_bytes(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait(timeout=60)
    statuses = [a["status"] for a in answers]
    return {
        "size": args.size, "concurrent": args.concurrent, "steps": args.steps, "model": args.model,
        "max_memory": args.max_memory, "budget_bytes": budget, "free_ram_bytes_at_start": free_ram,
        "server_address_space_limit": args.address_space, "request_timeout_s": args.request_timeout,
        "warm_up_status": warm["status"], "idle_rss_bytes": idle, "peak_rss_bytes": peak,
        "peak_within_budget_plus_idle": peak <= budget + idle, "peak_within_budget": peak <= budget,
        "statuses": statuses, "no_5xx": all(s is not None and s < 500 for s in statuses),
        "all_finished": all(s == 200 for s in statuses), "wall_s": round(wall, 1), "answers": answers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-memory", default="3GB", help="PCA_MAX_MEMORY of the server")
    parser.add_argument("--address-space", default="10000000000", help="prlimit --as of the server, bytes")
    parser.add_argument("--request-timeout", type=float, default=7200.0, help="PCA_REQUEST_TIMEOUT_S")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = {"command": " ".join(sys.argv), **run(args)}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
