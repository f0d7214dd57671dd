#!/usr/bin/env python
"""What the memory-probe cache saves a ``pca-protect protect`` call. Prints one JSON object.

For each model, in ONE run: the same command (a 256x256 photo, 2 steps, CPU, fp32) twice in fresh processes
against a new, empty ``PCA_PROBE_CACHE`` folder: the first measures the model's memory and writes it, the
second reads it. Reported per model: both wall times, ``warm_over_cold`` (the ratio to read), and the probe
itself against the read measured in this process (``probe_s``, ``read_s``). The outputs of both calls must be
byte-identical (the plan is the same: same memory model), which is checked and reported.

    python benchmarks/probe_cache.py                                   # demo (and TAEF2 where its folder is)
    python benchmarks/probe_cache.py --model demo --out docs/bench_probe_cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TAEF2 = ROOT.parent / "shared" / "models" / "taef2"


def photo(path: Path, side: int = 256) -> Path:
    yy, xx = np.mgrid[0:side, 0:side] / side
    rgb = np.stack([np.sin(5 * xx + c) * np.cos(3 * yy - c) for c in (0.0, 1.0, 2.0)], axis=2)
    Image.fromarray((127.5 + 100 * rgb).astype(np.uint8)).save(path)
    return path


def timed_protect(model: str, image: Path, out: Path, cache: Path) -> float:
    env = {**os.environ, "PCA_PROBE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pca_cli", "protect", str(image), "-o", str(out), "--model", model,
               "--device", "cpu", "--dtype", "fp32", "--steps", "2", "--offline"]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - start


def in_process(model: str, cache: Path) -> dict[str, float]:
    """The probe's time and the cached read's, in this process (the cache holds the model by now)."""
    os.environ["PCA_PROBE_CACHE"] = str(cache)
    from pca_attack.attack.probe import probe
    from pca_attack.attack.probe_cache import cached_probe
    from pca_attack.models.encoder import load_encoder

    encoder = load_encoder(model, device="cpu", dtype="fp32", offline=True)
    start = time.perf_counter()
    probe(encoder)
    probed = time.perf_counter() - start
    start = time.perf_counter()
    cached_probe(encoder)
    return {"probe_s": round(probed, 2), "read_s": round(time.perf_counter() - start, 4)}


def measure(model: str, work: Path) -> dict[str, Any]:
    cache, image = work / "cache", photo(work / "photo.png")
    cold = timed_protect(model, image, work / "cold", cache)
    warm = timed_protect(model, image, work / "warm", cache)
    same = (work / "cold" / "photo.png").read_bytes() == (work / "warm" / "photo.png").read_bytes()
    return {"cold_s": round(cold, 2), "warm_s": round(warm, 2), "warm_over_cold": round(warm / cold, 3),
            "outputs_identical": same, "cache_files": len(list(cache.glob("*.json"))), **in_process(model, cache)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help="registry name, folder or file (repeatable)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    models = args.model or ["demo", *([str(TAEF2)] if (TAEF2 / "README.md").exists() else [])]
    import torch

    result: dict[str, Any] = {"command": "pca-protect protect photo.png (256x256) --steps 2 --device cpu, twice",
                              "threads": torch.get_num_threads(), "models": {}}
    for model in models:
        with tempfile.TemporaryDirectory() as work:
            result["models"][Path(model).name] = measure(model, Path(work))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
