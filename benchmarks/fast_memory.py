"""Peak resident memory of the fast mode's generator pass on a large image, in one piece vs in tiles (JSON).

Each measurement runs in a fresh child process (``--child``), so ``ru_maxrss`` is that pass's own peak: load the
generator, make a random (1, 3, H, W) image, run ``perturbation`` without gradients. ``whole`` forces the
single pass (``UNTILED_PIXELS`` raised above the image), ``tiles`` is the engine's default (512-px tiles,
64-px halo, for images over 1 MP). Run the parent under a memory cap: the whole pass of a 12 MP image takes
several GB.

    OMP_NUM_THREADS=1 nice -n 10 prlimit --as=9000000000 python benchmarks/fast_memory.py --size 4000x3000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(height: int, width: int, generator_path: str | None, whole: bool) -> dict[str, float]:
    import torch

    import pca_attack.fast.generator as generator
    from pca_attack.fast.weights import load_generator, shipped_generator

    torch.set_num_threads(1)
    loaded = load_generator(generator_path or str(shipped_generator("demo")))
    if whole:
        generator.UNTILED_PIXELS = height * width
    x = torch.rand(1, 3, height, width)  # (B, 3, H, W)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # GB (Linux: KiB)
    start = time.perf_counter()
    with torch.no_grad():
        generator.perturbation(loaded.net, x, torch.tensor([False]), 16.0)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {"peak_rss_gb": round(peak, 3), "before_gb": round(before, 3), "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT")
    parser.add_argument("--generator", help="a generator file (default: the shipped demo one)")
    parser.add_argument("--child", choices=["whole", "tiles"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    if args.child:
        print(json.dumps(child(height, width, args.generator, args.child == "whole")))
        return
    result: dict[str, object] = {"size": args.size, "generator": args.generator or "demo (shipped)"}
    for mode in ("tiles", "whole"):
        extra = ["--generator", args.generator] if args.generator else []
        run = subprocess.run([sys.executable, __file__, "--size", args.size, "--child", mode, *extra],
                             capture_output=True, text=True, check=False)
        result[mode] = json.loads(run.stdout) if run.returncode == 0 else {"failed": run.stderr[-300:]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
