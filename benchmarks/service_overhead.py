#!/usr/bin/env python
"""Service overhead benchmark (issue 3). Prints one JSON object.

Measured in ONE run on the same image (256 x 256) and the same attack settings, so the numbers to read
are ratios, not absolute seconds:

* ``http_over_inprocess``: median latency of ``POST /v1/protect`` on a real uvicorn subprocess against
  ``Engine.protect_bytes`` in this process, same model, same settings, same thread count (target <= 1.15).
  Rounds interleave the two methods (order rotating) and the per-round paired ratios are reported too.
* throughput: ``--requests`` protect requests sent one after another vs by ``--clients`` concurrent
  clients (the worker micro-batches same-size images up to ``max_batch``): images/s of both and
  ``concurrent_over_sequential``.

The default model is an SD-1.x-sized AutoencoderKL (128/256/512/512, 2 layers per block) with random
weights saved to a temporary folder: compute cost does not depend on the weights' values. Both sides
run without the decoder (certificates then skip round-trip PSNR), which is the attack path being
measured. ``--model`` takes a registry name, a folder or a weights file instead.

    python benchmarks/service_overhead.py                     # SD-sized, 256x256, 3 steps
    python benchmarks/service_overhead.py --quick             # tiny model at 64x64 (smoke test)
    python benchmarks/service_overhead.py --out docs/bench_service_overhead.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_random_vae(folder: Path, quick: bool) -> Path:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    channels, layers, groups = ((8, 16, 16, 16), 1, 4) if quick else ((128, 256, 512, 512), 2, 32)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=channels,
        layers_per_block=layers,
        norm_num_groups=groups,
        latent_channels=4,
    )
    vae.save_pretrained(folder)
    return folder


def test_image(size: int) -> bytes:
    import numpy as np
    from PIL import Image

    try:
        from skimage import data

        arr = data.astronaut()[:size, :size]
        if arr.shape[0] < size or arr.shape[1] < size:
            raise ValueError
    except Exception:
        arr = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: str, threads: int, data_dir: Path, max_batch: int, queue: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {
        **os.environ,
        "PCA_MODEL": model,
        "PCA_DEVICE": "cpu",
        "PCA_DTYPE": "fp32",
        "PCA_OFFLINE": "true",
        "PCA_WITH_DECODER": "false",
        "PCA_DATA_DIR": str(data_dir),
        "PCA_MAX_BATCH": str(max_batch),
        "PCA_QUEUE_SIZE": str(queue),
        "PCA_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",  # idle OpenMP threads of one process must not spin against the other
        "MKL_NUM_THREADS": str(threads),
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "service.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not become ready")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="registry name, folder or weights file (default: random SD-sized VAE)")
    parser.add_argument("--size", type=int, default=256, help="image side (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="PGD steps (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved latency rounds (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=8, help="requests for throughput (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=4, help="server micro-batch (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch threads")
    parser.add_argument("--quick", action="store_true", help="tiny model at 64x64, 2 repeats (smoke test)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeats, args.requests = 64, 2, 4
    return args


def measure_latency(engine: Any, client: Any, url: str, image: bytes, args: argparse.Namespace) -> dict[str, list]:
    """Interleaved rounds (order alternating) of in-process protect_bytes vs POST /v1/protect."""
    from pca_attack import AttackConfig

    config, form = AttackConfig(steps=args.steps), {"steps": str(args.steps)}

    def inproc() -> float:
        t0 = time.perf_counter()
        engine.protect_bytes(image, config)
        return time.perf_counter() - t0

    def http() -> float:
        t0 = time.perf_counter()
        r = client.post(url + "/v1/protect", files={"file": ("bench.png", image, "image/png")}, data=form)
        r.raise_for_status()
        return time.perf_counter() - t0

    inproc(), http()  # warm-up both
    t_in, t_http, ratios = [], [], []
    for r in range(args.repeats):
        order = [inproc, http] if r % 2 == 0 else [http, inproc]
        got = {fn.__name__: fn() for fn in order}
        t_in.append(got["inproc"])
        t_http.append(got["http"])
        ratios.append(got["http"] / got["inproc"])
    return {"inproc": t_in, "http": t_http, "ratios": ratios}


def measure_throughput(url: str, image: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """``requests`` protect requests one after another, then by ``clients`` concurrent clients."""
    import httpx

    form = {"steps": str(args.steps)}

    def one(_: int) -> int:
        with httpx.Client(timeout=600) as c:
            resp = c.post(url + "/v1/protect", files={"file": ("b.png", image, "image/png")}, data=form)
            return resp.status_code

    t0 = time.perf_counter()
    seq_codes = [one(i) for i in range(args.requests)]
    t_seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        conc_codes = list(pool.map(one, range(args.requests)))
    t_conc = time.perf_counter() - t0
    return {"t_seq": t_seq, "t_conc": t_conc, "codes": sorted(set(seq_codes + conc_codes))}


def mean_micro_batch(metrics: str) -> float | None:
    """Mean of the ``pca_engine_batch_size`` histogram in a /metrics text."""
    batch_line = next((ln for ln in metrics.splitlines() if ln.startswith("pca_engine_batch_size_sum")), "")
    count_line = next((ln for ln in metrics.splitlines() if ln.startswith("pca_engine_batch_size_count")), "")
    return (float(batch_line.split()[-1]) / float(count_line.split()[-1])) if count_line else None


def build_result(args: argparse.Namespace, latency: dict[str, list], throughput: dict[str, Any],
                 mean_batch: float | None, torch_version: str) -> dict[str, Any]:
    t_in, t_http, ratios = latency["inproc"], latency["http"], latency["ratios"]
    med_in, med_http = statistics.median(t_in), statistics.median(t_http)
    t_seq, t_conc = throughput["t_seq"], throughput["t_conc"]
    return {
        "benchmark": "service_overhead",
        "model": args.model or ("random tiny VAE" if args.quick else "random SD-1.x-sized AutoencoderKL"),
        "image": f"{args.size}x{args.size} PNG",
        "steps": args.steps,
        "threads": args.threads,
        "decoder": False,
        "latency_s": {
            "inprocess_median": round(med_in, 4),
            "http_median": round(med_http, 4),
            "inprocess_all": [round(t, 4) for t in t_in],
            "http_all": [round(t, 4) for t in t_http],
        },
        "http_over_inprocess": round(med_http / med_in, 4),
        "http_over_inprocess_paired_median": round(statistics.median(ratios), 4),
        "target_http_over_inprocess": 1.15,
        "throughput": {
            "requests": args.requests,
            "clients": args.clients,
            "max_batch": args.max_batch,
            "sequential_images_per_s": round(args.requests / t_seq, 4),
            "concurrent_images_per_s": round(args.requests / t_conc, 4),
            "concurrent_over_sequential": round(t_seq / t_conc, 4),
            "status_codes": throughput["codes"],
            "mean_micro_batch": round(mean_batch, 3) if mean_batch else None,
        },
        "torch": torch_version,
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool (see server env)
    import httpx
    import torch

    from pca_attack import Engine

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="pca-bench-"))
    model = args.model or str(build_random_vae(tmp / "vae", args.quick))
    image = test_image(args.size)
    engine = Engine.from_spec(
        model, device="cpu", dtype="fp32", with_decoder=False, offline=True, max_batch=args.max_batch
    )
    proc, url = start_server(model, args.threads, tmp / "data", args.max_batch, max(16, args.requests * 2))
    try:
        client = httpx.Client(timeout=600)
        latency = measure_latency(engine, client, url, image, args)
        throughput = measure_throughput(url, image, args)
        metrics = client.get(url + "/metrics").text
    finally:
        proc.terminate()
        proc.wait(30)
    result = build_result(args, latency, throughput, mean_micro_batch(metrics), torch.__version__)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
