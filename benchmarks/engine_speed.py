#!/usr/bin/env python
"""Engine speed benchmark (issue 2, "Benchmark" item 9). Prints one JSON object.

Everything is measured in ONE run on the same image and the same attack settings, so the numbers to read
are the *ratios*, not the absolute seconds (which depend on the machine and on whatever else runs on it):

* per-step time of the engine (``Protector.protect`` with the reference settings: pca-, eps 16, step 2,
  no random start, last iterate) against
  (a) ``bare``: a frozen-encoder forward + input-gradient backward (``torch.autograd.grad`` of a trivial
      loss on the posterior), the floor any input-gradient attack pays per step, and
  (b) ``naive``: the reference loop written plainly: the whole ``diffusers.AutoencoderKL`` loaded, its
      parameters requiring grad, ``vae.encode(2x-1).latent_dist``, the PCA loss, ``.backward()``, sign
      step and projection; batch 1, fp32.
  The engine's per-step time is its *marginal* cost per PGD step, ``(T(N) - T(1)) / (N - 1)``, because
  ``protect`` also pays a fixed cost per call (the loss of the quantised output, needed for the
  certificate); ``T(N) / N`` (the amortised time) and that fixed cost are reported too.
  ``engine_over_bare`` (target <= 1.10) and ``naive_over_engine`` (target >= 1.8 on CPU at 256x256).
  The engine's per-step losses are checked against the naive loop's: equal up to float rounding (max
  relative difference <= 1e-5; the engine runs its convolutions channels_last, the naive loop NCHW, so
  sums are taken in a different order and the results are no longer bit-identical).
* ``bare_nchw_over_bare``: the same bare loop with the encoder's convolutions in NCHW instead of the
  engine's layout (channels_last on CPU/CUDA, ``pca_attack.models.devices.conv_memory_format``): what the layout buys.
* images/s of ``protect`` (same N steps) at batch 1, 2 and 4.
* memory of the encoder-only engine against the whole VAE, each measured in a fresh subprocess:
  parameter + buffer bytes, peak RSS growth while loading (``resource.getrusage``; on CUDA
  ``torch.cuda.max_memory_allocated``), and peak growth over load + one attack step, for the engine
  (encoder only), the whole VAE frozen (same input-gradient step) and the naive loop (weights requiring
  grad). ``encoder_over_full_memory`` (target <= 0.6) is the peak-while-loading ratio, i.e. the memory
  the model itself costs; the step peaks (dominated by activations at 256x256) are reported beside it.

The default model is an SD-1.x-sized AutoencoderKL (block_out_channels 128/256/512/512, 2 layers per
block, 32 norm groups, 4 latent channels) with random weights, saved once to a temporary folder so that
``load_encoder(folder)`` and ``AutoencoderKL.from_pretrained(folder)`` read the same file: compute cost
does not depend on the weights' values. ``--model sd15`` (or a folder / .safetensors file) uses real ones.

Noise control on a shared machine: a fixed thread count, warm-up runs, ``--repeats`` interleaved rounds
whose method order rotates, medians, and per-round paired ratios.

    python benchmarks/engine_speed.py                      # SD-1.x-sized, 256x256, 3 steps, 3 repeats
    python benchmarks/engine_speed.py --out docs/bench_engine_speed.json
    python benchmarks/engine_speed.py --quick              # tiny config at 64x64 (smoke test, seconds)

This file is the command line; the measured parts live in ``benchmarks/speed/`` (fixtures, loops, memory).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the ``speed`` package beside this file

from speed.fixtures import (  # noqa: E402
    QUICK_CONFIG,
    SD1_CONFIG,
    build_random_vae_folder,
    load_full_vae,
    module_bytes,
    nchw_copy,
    test_image,
)
from speed.loops import bare_loop, naive_reference_loop, ratio, run_rounds, summarise, timed  # noqa: E402
from speed.memory import WORKER_KINDS, memory_section, memory_worker  # noqa: E402

LOSS_MATCH_RTOL = 1e-5  # engine vs naive per-step losses: equal up to float rounding
TARGETS = {"engine_over_bare_max": 1.10, "naive_over_engine_min": 1.8, "encoder_over_full_memory_max": 0.6}
BATCHES = (1, 2, 4)


def prepare_model(args: argparse.Namespace, folder: Path) -> tuple[str, str, dict[str, Any] | None]:
    """(spec for load_encoder, description, config of the random VAE or None for --model)."""
    if args.model:
        return args.model, args.model, None
    config = QUICK_CONFIG if args.quick else SD1_CONFIG
    spec = str(build_random_vae_folder(config, folder / "vae"))
    desc = "tiny AutoencoderKL (random weights)" if args.quick else "SD-1.x-sized AutoencoderKL (random weights)"
    return spec, desc, config


def loss_agreement(ours: list[float], ref: list[float]) -> dict[str, Any]:
    """How close the engine's per-step losses are to the naive loop's."""
    max_abs = max(abs(a - b) for a, b in zip(ours, ref, strict=True))
    max_rel = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(ours, ref, strict=True))
    return {
        "losses_bit_identical": ours == ref,
        "losses_match": max_rel <= LOSS_MATCH_RTOL,
        "loss_trace_max_abs_diff": max_abs,
        "loss_trace_max_rel_diff": max_rel,
    }


def measure_throughput(engine: Callable[[torch.Tensor, Any], Any], cfg: Any, args: argparse.Namespace,
                       device: torch.device, batch1_seconds: float) -> dict[str, dict[str, float]]:
    """images/s of protect with the same N steps (batch 1 reuses the timed runs)."""
    throughput = {"1": {"seconds": batch1_seconds, "images_per_s": 1.0 / batch1_seconds}}
    for batch in BATCHES[1:]:
        xb = test_image(args.size, batch)[0].to(device)  # (batch, 3, size, size)
        times = [timed(lambda xb=xb: engine(xb, cfg), device)[0] for _ in range(args.throughput_repeats)]
        seconds = statistics.median(times)
        throughput[str(batch)] = {"seconds": seconds, "images_per_s": batch / seconds}
        print(f"[throughput] batch {batch}: {seconds:.3f}s", file=sys.stderr, flush=True)
    for row in throughput.values():
        row["image_steps_per_s"] = row["images_per_s"] * args.steps
    return throughput


def time_engine(spec: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The interleaved timing rounds of engine (1 and N steps), bare, bare NCHW and naive."""
    from pca_attack import REFERENCE_CONFIG, Protector, load_encoder

    encoder = load_encoder(spec, device=args.device, dtype="float32")
    encoder_nchw = nchw_copy(encoder)  # the same encoder with NCHW convolutions, for the layout ratio
    full = {"vae": load_full_vae(spec, device)}  # a holder, emptied before the memory subprocesses
    x1, image_desc = test_image(args.size, 1)
    x1 = x1.to(device)  # (1, 3, size, size)
    cfg, cfg_one = REFERENCE_CONFIG.with_(steps=args.steps), REFERENCE_CONFIG.with_(steps=1)

    def engine(x: torch.Tensor, config: Any) -> Any:
        return Protector(encoder, config).protect(x)

    runners: dict[str, Callable[[], Any]] = {
        "engine_1": lambda: engine(x1, cfg_one),
        "engine_n": lambda: engine(x1, cfg),
        "bare": lambda: bare_loop(encoder, x1, args.steps),
        "bare_nchw": lambda: bare_loop(encoder_nchw, x1, args.steps),
        "naive": lambda: naive_reference_loop(full["vae"], x1, args.steps, cfg.eps / 255, cfg.step / 255),
    }
    # warm-up (allocator, oneDNN primitive caches, lazy imports), one step each
    engine(x1, cfg_one)
    bare_loop(encoder, x1, 1)
    bare_loop(encoder_nchw, x1, 1)
    naive_reference_loop(full["vae"], x1, 1)
    raw, outputs = run_rounds(runners, args.repeats, device, keep=("engine_n", "naive"))
    med_engine_n = statistics.median(raw["wall"]["engine_n"])
    params = {"encoder": module_bytes(encoder), "full_vae": module_bytes(full["vae"])}
    full.clear()
    gc.collect()
    return {
        "cfg": cfg, "image": image_desc, "raw": raw, "params": params,
        "agreement": loss_agreement(outputs["engine_n"].loss_trace[0].tolist(), outputs["naive"]),
        "throughput": measure_throughput(engine, cfg, args, device, med_engine_n),
    }


def environment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Versions and machine facts recorded beside the numbers."""
    import diffusers

    return {
        "device": str(device),
        "dtype": "float32",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def assemble(args: argparse.Namespace, device: torch.device, header: dict[str, Any], timing: dict[str, Any],
             memory: dict[str, Any], encoder_over_full_memory: float) -> dict[str, Any]:
    """The benchmark's JSON object (keys as ``docs/bench_engine_speed.json`` has them)."""
    import pca_attack

    cfg, raw, throughput, params = timing["cfg"], timing["raw"], timing["throughput"], timing["params"]
    summary = {clock: summarise(values, args.steps) for clock, values in raw.items()}
    model_config = header["model_config"]
    result: dict[str, Any] = {
        "benchmark": "engine_speed",
        "version": pca_attack.__version__,
        "model": header["model"],
        "model_config": ({k: model_config[k] for k in ("block_out_channels", "layers_per_block",
                                                        "norm_num_groups", "latent_channels")}
                         if model_config else None),
        "image": timing["image"],
        "size": args.size,
        "steps": args.steps,
        "repeats": args.repeats,
        "attack": {"preset": cfg.preset, "eps": cfg.eps, "step": cfg.step, "random_start": cfg.random_start,
                   "keep_best": cfg.keep_best},
        **environment(args, device),
        "clock": "wall",
        **summary["wall"],
        "cpu_time": summary["cpu"],
        **timing["agreement"],
        "images_per_s": {k: v["images_per_s"] for k, v in throughput.items()},
        "throughput": throughput,
        "memory": memory,
        "encoder_over_full_param_bytes": ratio(params["encoder"], params["full_vae"]),
        "encoder_over_full_memory": encoder_over_full_memory,
        "targets": TARGETS,
        "raw_seconds": raw,
        "load_average": {"start": header["load_start"], "end": list(os.getloadavg())},
        "wall_s": time.perf_counter() - header["wall_start"],
    }
    result["meets_targets"] = {
        "engine_over_bare": result["engine_over_bare"] <= TARGETS["engine_over_bare_max"],
        "naive_over_engine": result["naive_over_engine"] >= TARGETS["naive_over_engine_min"],
        "encoder_over_full_memory": encoder_over_full_memory <= TARGETS["encoder_over_full_memory_max"],
    }
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time the loops, then (unless skipped) measure memory in fresh subprocesses; the JSON object."""
    header: dict[str, Any] = {"wall_start": time.perf_counter(), "load_start": list(os.getloadavg())}
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (the engine's per-step cost is (T(N) - T(1)) / (N - 1))")
    with tempfile.TemporaryDirectory(prefix="pca_bench_") as tmp:
        spec, header["model"], header["model_config"] = prepare_model(args, Path(tmp))
        timing = time_engine(spec, args, device)
        gc.collect()
        memory: dict[str, Any] = {"param_buffer_bytes": timing["params"]}
        encoder_over_full_memory = float("nan")
        if not args.skip_memory:
            memory, encoder_over_full_memory = memory_section(spec, args.size, device, args.threads,
                                                              timing["params"])
        return assemble(args, device, header, timing, memory, encoder_over_full_memory)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; --quick changes the defaults of size, steps and repeats."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="registry name (sd15, ...), diffusers folder or weights file; default: an "
                             "SD-1.x-sized AutoencoderKL with random weights")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 256)")
    parser.add_argument("--steps", type=int, default=None, help="PGD steps per timed run (default 3)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved timing rounds (default 3)")
    parser.add_argument("--throughput-repeats", type=int, default=1, help="timed runs per batch size > 1")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (fp32 everywhere)")
    parser.add_argument("--quick", action="store_true", help="tiny config at 64x64: a smoke test")
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--memory-worker", choices=WORKER_KINDS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = 64 if args.quick else 256
    if args.steps is None:
        args.steps = 4 if args.quick else 3
    if args.repeats is None:
        args.repeats = 5 if args.quick else 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.model, args.size, args.device, args.threads)))
        return 0
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
