#!/usr/bin/env python
"""Cost of an ensemble attack step (issue 15): memory and time of a 2-model ensemble against its members.

Each case runs in a fresh subprocess: load the model(s), note the RSS, one warm-up step, then ``--steps``
attack steps (``Protector.loss_and_grad`` + update, engine defaults) at batch 1 on a ``--size`` square image.
Reported per case: peak RSS over the post-load baseline (the attack's working memory; weights excluded)
and the whole peak, CPU seconds per step (``time.process_time``: robust to other processes on the machine)
and wall seconds per step. Ratios (targets from the issue):

* ``peak_ratio`` = ensemble working peak / the larger single model's working peak   (target <= 1.15)
* ``cpu_step_ratio`` = ensemble CPU s/step / sum of the members' CPU s/step          (target <= 1.1)

    python benchmarks/ensemble_speed.py                    # taef2 + taesana, 256x256, 4 steps
    python benchmarks/ensemble_speed.py --size 64 --steps 1 --out ''   # smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = ROOT / ".." / "shared" / "models"
PAIR = {
    "taef2": str(SHARED / "taef2" / "taef2_encoder.pth"),
    "taesana": str(SHARED / "taesana" / "taesana_encoder.pth"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "docs" / "bench_ensemble_speed.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # comma list of model names
    return p.parse_args(argv)


def worker(names: list[str], size: int, steps: int, threads: int) -> dict[str, Any]:
    """One case in this process: working-memory peak and time per attack step."""
    import torch
    from speed.memory import _reset_peak, _rss_now, _rss_peak

    from pca_attack.attack.config import AttackConfig
    from pca_attack.attack.pgd import Protector
    from pca_attack.models.encoder import load_encoder

    torch.set_num_threads(threads)
    encoders = [load_encoder(PAIR[n], device="cpu", dtype="fp32") for n in names]
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    protector = Protector(encoders, AttackConfig(steps=steps))
    target = protector.target_variance(x)
    protector.tiled.prepare(x, target)
    generator = torch.Generator().manual_seed(0)
    baseline = _rss_now()  # weights loaded, no attack step yet
    exact_peak = _reset_peak()
    protector.loss_and_grad(x, target, generator, 1.0)  # warm-up (in the peak: kernels, allocator), not timed
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        _, grad = protector.loss_and_grad(x, target, generator, 1.0)
        x = (x - 1e-3 * grad.sign()).clamp(0, 1)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    peak = _rss_peak()
    return {
        "models": names, "working_peak_mib": round((peak - baseline) / 2**20, 1),
        "peak_rss_mib": round(peak / 2**20, 1), "peak_exact": exact_peak,
        "cpu_s_per_step": round(cpu / steps, 3), "wall_s_per_step": round(wall / steps, 3),
    }


def run_case(names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", ",".join(names), "--size", str(args.size),
               "--steps", str(args.steps), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker.split(","), args.size, args.steps, args.threads)))
        return {}
    names = list(PAIR)
    cases = {n: run_case([n], args) for n in names}
    cases["+".join(names)] = ensemble = run_case(names, args)
    singles = [cases[n] for n in names]
    result = {
        "command": " ".join(["python benchmarks/ensemble_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "size": args.size, "steps": args.steps, "threads": args.threads, "cases": cases,
        "peak_ratio": round(ensemble["working_peak_mib"] / max(c["working_peak_mib"] for c in singles), 3),
        "peak_ratio_target": 1.15,
        "cpu_step_ratio": round(ensemble["cpu_s_per_step"] / sum(c["cpu_s_per_step"] for c in singles), 3),
        "wall_step_ratio": round(ensemble["wall_s_per_step"] / sum(c["wall_s_per_step"] for c in singles), 3),
        "step_ratio_target": 1.1,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
