"""The service on the GPU: ``POST /v1/protect`` throughput with micro-batching (``gpu_check.py --part service``).

The app is built in this process (``service.app.create_app`` with ``max_batch`` 8, the model on CUDA, dtype
``auto`` = fp16 there, no decoder) and served by uvicorn on 127.0.0.1 from a thread. After a warm-up (one
request, then one concurrent round), it times ``requests`` same-size 512x512 PNGs (the test photo and its
flips) sent one after another, then the same sent by ``clients`` concurrent clients, ``rounds`` times. The
mean micro-batch of the concurrent rounds comes from the difference of two ``/metrics`` readings.
"""

from __future__ import annotations

import io
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from speed.cuda import write_json
from speed.fixtures import QUICK_CONFIG, SD1_CONFIG, build_random_vae_folder, test_image


def png_images(size: int, count: int) -> list[bytes]:
    """``count`` distinct same-size PNGs: the test photo and its flips."""
    from PIL import Image

    batch = test_image(size, count)[0]  # (count, 3, size, size) on the uint8 grid
    arrays = (batch.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # (count, size, size, 3)
    out = []
    for arr in arrays:
        buffer = io.BytesIO()
        Image.fromarray(arr).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(app: Any, timeout_s: float = 300.0) -> tuple[Any, threading.Thread, str]:
    """Start uvicorn on 127.0.0.1 in a daemon thread; (server, thread, base url) once /readyz answers 200."""
    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the uvicorn thread ended before the app was ready (see the log above)")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return server, thread, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.should_exit = True
    raise RuntimeError(f"the app was not ready within {timeout_s:.0f} s")


def batch_counts(url: str) -> tuple[float, float]:
    """(sum, count) of the ``pca_engine_batch_size`` histogram in /metrics."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        for key in ("pca_engine_batch_size_sum", "pca_engine_batch_size_count"):
            if line.startswith(key + " ") or line.startswith(key + "{"):
                values[key] = values.get(key, 0.0) + float(line.split()[-1])
    return values.get("pca_engine_batch_size_sum", 0.0), values.get("pca_engine_batch_size_count", 0.0)


def send_all(url: str, images: list[bytes], form: dict[str, str], clients: int) -> tuple[float, list[int]]:
    """Seconds to protect every image with ``clients`` concurrent clients (1 = one after another)."""
    import httpx

    def one(data: bytes) -> int:
        with httpx.Client(timeout=600) as client:
            files = {"file": ("photo.png", data, "image/png")}
            return client.post(url + "/v1/protect", files=files, data=form).status_code

    start = time.perf_counter()
    if clients == 1:
        codes = [one(data) for data in images]
    else:
        with ThreadPoolExecutor(clients) as pool:
            codes = list(pool.map(one, images))
    return time.perf_counter() - start, codes


def measure(url: str, args: Any) -> dict[str, Any]:
    """Warm up, then sequential vs concurrent throughput and the mean micro-batch of the concurrent rounds."""
    images = png_images(args.size, args.requests)
    form = {"steps": str(args.steps)}
    send_all(url, images[:1], form, 1)  # warm-up: batch 1
    send_all(url, images, form, args.clients)  # warm-up: the micro-batch shape
    seq_s, seq_codes = send_all(url, images, form, 1)
    before = batch_counts(url)
    conc: list[float] = []
    codes = list(seq_codes)
    for _ in range(args.rounds):
        seconds, got = send_all(url, images, form, args.clients)
        conc.append(seconds)
        codes += got
    after = batch_counts(url)
    batches = after[1] - before[1]
    conc_s = statistics.median(conc)
    return {
        "sequential_s": seq_s,
        "concurrent_s": conc,
        "sequential_images_per_s": args.requests / seq_s,
        "concurrent_images_per_s": args.requests / conc_s,
        "concurrent_seconds_per_image": conc_s / args.requests,
        "concurrent_over_sequential": seq_s / conc_s,
        "mean_micro_batch": (after[0] - before[0]) / batches if batches else None,
        "status_codes": sorted(set(codes)),
    }


def run_service_part(args: Any, out: Path | None) -> dict[str, Any]:
    """Build the app on CUDA with a random SD-1.x-sized VAE, serve it, measure; the report (also in ``out``)."""
    from service.app import create_app
    from service.settings import Settings

    report: dict[str, Any] = {
        "part": "service", "size": args.size, "steps": args.steps, "requests": args.requests,
        "clients": args.clients, "rounds": args.rounds, "max_batch": args.max_batch, "device": args.device,
        "model": f"{'tiny' if args.quick else 'SD-1.x-sized'} AutoencoderKL (random weights)", "decoder": False,
    }
    write_json(out, report)
    with tempfile.TemporaryDirectory(prefix="pca_gpu_service_") as tmp:
        spec = str(build_random_vae_folder(QUICK_CONFIG if args.quick else SD1_CONFIG, Path(tmp) / "vae"))
        settings = Settings(model=spec, device=args.device, dtype="auto", offline=True, with_decoder=False,
                            data_dir=Path(tmp) / "data", max_batch=args.max_batch,
                            queue_size=max(16, 4 * args.requests), log_level="warning")
        app = create_app(settings)
        server, thread, url = serve(app)
        try:
            report["dtype"] = str(app.state.engine.encoder.dtype).removeprefix("torch.")
            report.update(measure(url, args))
        finally:
            server.should_exit = True
            thread.join(60)
    report["complete"] = True
    write_json(out, report)
    return report
