"""Throughput of ``batch --local`` vs ``batch --ray`` with 1 and 2 Ray workers (JSON on stdout).

Each mode protects the same folder of random ``--size``² PNGs with the demo model (or ``--model``) into a
fresh DST; the time counts from the runner's start to its last manifest line, model loading included for
``--local`` and actor start-up included for Ray (both are paid once per run). Target: Ray with 1 worker
>= 0.85 x local throughput.

    nice -n 10 prlimit --as=16000000000 python benchmarks/scale.py --images 16 --size 256 --steps 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_images(root: Path, count: int, size: int) -> None:
    for n in range(count):
        path = root / f"part{n % 2}" / f"img{n:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.RandomState(n).randint(0, 256, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        path.write_bytes(buf.getvalue())


def run_local(src: Path, dst: Path, options: Any, model: str) -> float:
    from pca_cli.local import local_processor
    from pca_client.runner import BatchRunner

    t0 = time.perf_counter()
    proc = local_processor(options, model, "cpu", "fp32")
    report = BatchRunner(src, dst, proc, settings=options.settings(), fmt=options.format).run()
    assert report.ok and report.done > 0, report
    return time.perf_counter() - t0


def run_ray(src: Path, dst: Path, options: Any, model: str, workers: int) -> float:
    from pca_cli.ray_batch import RayBatchRunner

    t0 = time.perf_counter()
    report = RayBatchRunner(src, dst, options, model=model, device="cpu", dtype="fp32", workers=workers).run()
    assert report.ok and report.done > 0, report
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray cluster")
    args = parser.parse_args()

    import ray

    from pca_attack.options import ProtectOptions

    options = ProtectOptions(steps=args.steps)
    with tempfile.TemporaryDirectory(prefix="pca-scale-") as tmp:
        src = Path(tmp) / "src"
        write_images(src, args.images, args.size)
        seconds = {"local": run_local(src, Path(tmp) / "local", options, args.model)}
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            for workers in (1, 2):
                seconds[f"ray_{workers}"] = run_ray(src, Path(tmp) / f"ray{workers}", options, args.model, workers)
        finally:
            ray.shutdown()
    rate = {k: args.images / v for k, v in seconds.items()}
    print(json.dumps({
        "images": args.images, "size": args.size, "steps": args.steps, "model": args.model, "ray_cpus": args.cpus,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "images_per_s": {k: round(v, 3) for k, v in rate.items()},
        "ray_1_over_local": round(rate["ray_1"] / rate["local"], 3),
        "ray_2_over_local": round(rate["ray_2"] / rate["local"], 3),
        "target_ray_1_over_local": 0.85,
        "target_met": rate["ray_1"] / rate["local"] >= 0.85,
    }, indent=2))


if __name__ == "__main__":
    main()
