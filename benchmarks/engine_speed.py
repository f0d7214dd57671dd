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
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SD1_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "latent_channels": 4,
    "sample_size": 512,
}
QUICK_CONFIG: dict[str, Any] = {
    **SD1_CONFIG,
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
LOSS_MATCH_RTOL = 1e-5  # engine vs naive per-step losses: equal up to float rounding
TARGETS = {"engine_over_bare_max": 1.10, "naive_over_engine_min": 1.8, "encoder_over_full_memory_max": 0.6}
BATCHES = (1, 2, 4)


# -- set-up ------------------------------------------------------------------------------------------
def build_random_vae_folder(config: dict[str, Any], folder: Path, seed: int = 0) -> Path:
    """Save an AutoencoderKL with random (seeded) weights as a diffusers folder; returns the folder."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**config)
    vae.save_pretrained(str(folder))
    del vae
    gc.collect()
    return folder


def load_full_vae(spec: str, device: torch.device) -> torch.nn.Module:
    """The whole diffusers AutoencoderKL (decoder included) for the same spec ``load_encoder`` takes."""
    from diffusers import AutoencoderKL

    from pca_attack.models.weights import resolve_source

    source = resolve_source(spec)
    if source.kind == "file":
        vae = AutoencoderKL.from_single_file(source.location)
    elif source.kind == "folder" or source.subfolder is not None:
        vae = AutoencoderKL.from_pretrained(source.location, subfolder=source.subfolder)
    else:  # a hub id with the VAE at the top level or in vae/
        try:
            vae = AutoencoderKL.from_pretrained(source.location)
        except Exception:
            vae = AutoencoderKL.from_pretrained(source.location, subfolder="vae")
    return vae.to(device=device, dtype=torch.float32).eval()


def test_image(size: int, batch: int = 1) -> tuple[torch.Tensor, str]:
    """(batch, 3, size, size) in [0, 1] on the uint8 grid: scikit-image's astronaut photo (public domain,
    NASA) resized, with flips for further batch members; a seeded synthetic image without scikit-image."""
    try:
        from skimage import data

        arr = torch.from_numpy(data.astronaut().copy()).permute(2, 0, 1)[None].float() / 255.0
        name = "skimage.data.astronaut"
    except Exception:
        gen = torch.Generator().manual_seed(0)
        yy, xx = torch.meshgrid(torch.linspace(0, 1, 512), torch.linspace(0, 1, 512), indexing="ij")
        base = torch.stack([xx, yy, (xx + yy) / 2])[None]
        arr = (0.7 * base + 0.3 * torch.rand(1, 3, 512, 512, generator=gen)).clamp(0, 1)
        name = "synthetic (seeded gradient + noise)"
    img = torch.nn.functional.interpolate(arr, size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)
    img = (img.clamp(0, 1) * 255).round() / 255
    variants = [img, img.flip(-1), img.flip(-2), img.flip(-1, -2)]
    return torch.cat([variants[i % 4] for i in range(batch)]), f"{name} resized to {size}x{size}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, fn's result)."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, out


def nchw_copy(encoder: Any) -> Any:
    """A copy of a loaded ``Encoder`` whose convolutions run NCHW (contiguous), whatever the device."""
    import copy

    twin = copy.deepcopy(encoder)
    twin.to(memory_format=torch.contiguous_format)
    twin.memory_format = torch.contiguous_format
    return twin


# -- the three loops ---------------------------------------------------------------------------------
def bare_loop(encoder: torch.nn.Module, x: torch.Tensor, steps: int) -> None:
    """Frozen-encoder forward + input-gradient backward of a trivial loss, ``steps`` times."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        mean, logvar = encoder(x_adv)
        (grad,) = torch.autograd.grad(mean.float().sum() + logvar.float().sum(), x_adv)
        x_adv = x_adv.detach()
    del grad


def naive_reference_loop(
    vae: torch.nn.Module, x: torch.Tensor, steps: int, eps: float = 16 / 255, alpha: float = 2 / 255,
    v: float = 1e-8,
) -> list[float]:
    """The reference loop written plainly: whole VAE, weights requiring grad, ``.backward()``."""
    vae.requires_grad_(True)
    x_clean = x.clone()
    x_adv = x.clone()
    losses: list[float] = []
    for _ in range(steps):
        x_adv.requires_grad_(True)
        dist = vae.encode(x_adv * 2 - 1).latent_dist
        loss = 0.5 * torch.sum(-dist.logvar - 1 + (dist.mean**2 + dist.var) / v)
        loss.backward()
        losses.append(loss.item())
        x_adv = x_adv - alpha * x_adv.grad.sign()
        eta = torch.clamp(x_adv - x_clean, min=-eps, max=eps)
        x_adv = torch.clamp(x_clean + eta, min=0, max=1).detach()
    return losses


def module_bytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return int(sum(t.numel() * t.element_size() for t in tensors))


# -- memory workers (fresh subprocesses) -------------------------------------------------------------
def _rss_now() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _rss_peak()


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: VmHWM via /proc/self/clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _status_bytes("VmHWM") is not None
    except OSError:
        return False


def _rss_peak() -> int:
    """Peak RSS since the last reset (VmHWM) or, without it, over the process' life (ru_maxrss)."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def memory_worker(kind: str, spec: str, size: int, device_name: str, threads: int) -> dict[str, Any]:
    """Load one model and run one attack step at batch 1; report how much memory each stage added."""
    # import everything the loaders touch first, so the baseline below excludes import-time memory
    import diffusers.models.autoencoders.vae  # noqa: F401
    import safetensors.torch  # noqa: F401
    from diffusers import AutoencoderKL  # noqa: F401

    from pca_attack import REFERENCE_CONFIG, Protector, load_encoder

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    x, _ = test_image(size)
    x = x.to(device)
    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    peak_reset = _reset_peak()  # so that an earlier transient (imports, image decoding) does not count
    base_rss, base_peak = _rss_now(), _rss_peak()
    base_cuda = torch.cuda.memory_allocated(device) if cuda else 0

    if kind == "engine":
        model: torch.nn.Module = load_encoder(spec, device=device_name, dtype="float32")
    else:
        model = load_full_vae(spec, device)
        model.requires_grad_(kind == "naive")
    gc.collect()
    out: dict[str, Any] = {
        "kind": kind,
        "peak_reset": peak_reset,
        "param_buffer_bytes": module_bytes(model),
        "resident_after_load_bytes": _rss_now() - base_rss,
        "peak_load_bytes": max(_rss_peak(), base_peak) - base_rss,
    }
    if cuda:
        out["cuda_peak_load_bytes"] = torch.cuda.max_memory_allocated(device) - base_cuda
    # diffusers memory-maps safetensors lazily on CPU: weights never read (the decoder's, in an encode
    # loop) are not resident until touched. Touch every weight to measure what the model itself holds.
    with torch.no_grad():
        checksum = sum(float(t.float().sum()) for t in [*model.parameters(), *model.buffers()])
    gc.collect()
    out["weights_resident_bytes"] = _rss_now() - base_rss
    out["checksum_finite"] = math.isfinite(checksum)
    if cuda:
        out["cuda_weights_bytes"] = torch.cuda.memory_allocated(device) - base_cuda

    if kind == "engine":
        Protector(model, REFERENCE_CONFIG.with_(steps=1)).protect(x)  # type: ignore[arg-type]
    elif kind == "full_frozen":
        x_adv = x.clone().requires_grad_(True)
        dist = model.encode(x_adv * 2 - 1).latent_dist  # type: ignore[operator]
        torch.autograd.grad(dist.mean.sum() + dist.logvar.sum(), x_adv)
    else:
        naive_reference_loop(model, x, steps=1)
    sync(device)
    out["peak_step_bytes"] = max(_rss_peak(), base_peak) - base_rss
    if cuda:
        out["cuda_peak_step_bytes"] = torch.cuda.max_memory_allocated(device) - base_cuda
    return out


def run_memory_workers(spec: str, size: int, device: str, threads: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for kind in ("engine", "full_frozen", "naive"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", kind, "--model", spec,
               "--size", str(size), "--device", device, "--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory worker {kind!r} failed:\n{proc.stderr[-3000:]}")
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


# -- main benchmark ----------------------------------------------------------------------------------
def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def summarise(raw: dict[str, list[float]], steps: int) -> dict[str, Any]:
    """Per-step times and ratios from the timed runs of one clock (medians, and per-round pairs)."""
    med = {name: statistics.median(values) for name, values in raw.items()}
    engine_step = (med["engine_n"] - med["engine_1"]) / (steps - 1)  # marginal cost of one PGD step
    engine_amortised = med["engine_n"] / steps
    bare_step, naive_step = med["bare"] / steps, med["naive"] / steps
    paired_eob, paired_noe = [], []
    for r in range(len(raw["bare"])):
        step_r = (raw["engine_n"][r] - raw["engine_1"][r]) / (steps - 1)
        paired_eob.append(_ratio(step_r, raw["bare"][r] / steps))
        paired_noe.append(_ratio(raw["naive"][r] / steps, step_r))
    return {
        "per_step_s": {"engine": engine_step, "engine_amortised": engine_amortised, "bare": bare_step,
                       "naive": naive_step},
        "engine_fixed_cost_s": med["engine_1"] - engine_step,
        "engine_over_bare": _ratio(engine_step, bare_step),
        "naive_over_engine": _ratio(naive_step, engine_step),
        "engine_amortised_over_bare": _ratio(engine_amortised, bare_step),
        "naive_over_engine_amortised": _ratio(naive_step, engine_amortised),
        "naive_over_bare": _ratio(naive_step, bare_step),
        # the engine's conv layout (channels_last on CPU/CUDA) against NCHW, same encoder, same bare loop
        "bare_nchw_over_bare": _ratio(med["bare_nchw"], med["bare"]),
        "paired_ratio_medians": {"engine_over_bare": statistics.median(paired_eob),
                                 "naive_over_engine": statistics.median(paired_noe)},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import diffusers

    import pca_attack
    from pca_attack import REFERENCE_CONFIG, Protector, load_encoder

    wall_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = args.steps
    if steps < 2:
        raise SystemExit("--steps must be >= 2 (the engine's per-step cost is (T(N) - T(1)) / (N - 1))")
    load_start = os.getloadavg()

    tmp = tempfile.TemporaryDirectory(prefix="pca_bench_")
    if args.model:
        spec, model_desc = args.model, args.model
        model_config: dict[str, Any] | None = None
    else:
        model_config = QUICK_CONFIG if args.quick else SD1_CONFIG
        spec = str(build_random_vae_folder(model_config, Path(tmp.name) / "vae"))
        model_desc = ("tiny AutoencoderKL (random weights)" if args.quick
                      else "SD-1.x-sized AutoencoderKL (random weights)")

    encoder = load_encoder(spec, device=args.device, dtype="float32")
    encoder_nchw = nchw_copy(encoder)  # the same encoder with NCHW convolutions, for the layout ratio
    full = {"vae": load_full_vae(spec, device)}  # a holder, emptied before the memory subprocesses
    x1, image_desc = test_image(args.size, 1)
    x1 = x1.to(device)
    cfg = REFERENCE_CONFIG.with_(steps=steps)
    cfg_one = REFERENCE_CONFIG.with_(steps=1)

    def engine(x: torch.Tensor, config: Any) -> Any:
        return Protector(encoder, config).protect(x)

    runners: dict[str, Callable[[], Any]] = {
        "engine_1": lambda: engine(x1, cfg_one),
        "engine_n": lambda: engine(x1, cfg),
        "bare": lambda: bare_loop(encoder, x1, steps),
        "bare_nchw": lambda: bare_loop(encoder_nchw, x1, steps),
        "naive": lambda: naive_reference_loop(full["vae"], x1, steps, cfg.eps / 255, cfg.step / 255),
    }

    # warm-up (allocator, oneDNN primitive caches, lazy imports), one step each
    engine(x1, cfg_one)
    bare_loop(encoder, x1, 1)
    bare_loop(encoder_nchw, x1, 1)
    naive_reference_loop(full["vae"], x1, 1)

    raw: dict[str, dict[str, list[float]]] = {clock: {n: [] for n in runners} for clock in ("wall", "cpu")}
    outputs: dict[str, Any] = {}
    names = list(runners)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            wall, cpu, out = timed(runners[name], device)
            raw["wall"][name].append(wall)
            raw["cpu"][name].append(cpu)
            if name in ("engine_n", "naive"):
                outputs[name] = out
            print(f"[repeat {r + 1}/{args.repeats}] {name}: {wall:.3f}s wall, {cpu:.3f}s cpu",
                  file=sys.stderr, flush=True)
    timing = {clock: summarise(values, steps) for clock, values in raw.items()}
    med = {name: statistics.median(values) for name, values in raw["wall"].items()}

    ours = outputs["engine_n"].loss_trace[0].tolist()
    ref = outputs["naive"]
    max_abs = max(abs(a - b) for a, b in zip(ours, ref, strict=True))
    max_rel = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(ours, ref, strict=True))

    # throughput: images/s of protect with the same N steps (batch 1 reuses the runs above)
    throughput: dict[str, dict[str, float]] = {
        "1": {"seconds": med["engine_n"], "images_per_s": 1.0 / med["engine_n"]},
    }
    for batch in BATCHES[1:]:
        xb, _ = test_image(args.size, batch)
        xb = xb.to(device)
        times = [timed(lambda xb=xb: engine(xb, cfg), device)[0] for _ in range(args.throughput_repeats)]
        seconds = statistics.median(times)
        throughput[str(batch)] = {"seconds": seconds, "images_per_s": batch / seconds}
        print(f"[throughput] batch {batch}: {seconds:.3f}s", file=sys.stderr, flush=True)
    for row in throughput.values():
        row["image_steps_per_s"] = row["images_per_s"] * steps

    params = {"encoder": module_bytes(encoder), "full_vae": module_bytes(full["vae"])}
    full.clear()
    gc.collect()
    memory: dict[str, Any] = {"param_buffer_bytes": params}
    encoder_over_full_memory = math.nan
    if not args.skip_memory:
        workers = run_memory_workers(spec, args.size, args.device, args.threads)
        memory["workers"] = workers
        key = "cuda_weights_bytes" if device.type == "cuda" else "weights_resident_bytes"
        step_key = "cuda_peak_step_bytes" if device.type == "cuda" else "peak_step_bytes"
        load_key = "cuda_peak_load_bytes" if device.type == "cuda" else "peak_load_bytes"
        encoder_over_full_memory = _ratio(workers["engine"][key], workers["full_frozen"][key])
        memory["encoder_over_full_peak_load"] = _ratio(
            workers["engine"][load_key], workers["full_frozen"][load_key])
        memory["encoder_over_full_step_peak"] = _ratio(
            workers["engine"][step_key], workers["full_frozen"][step_key])
        memory["engine_over_naive_step_peak"] = _ratio(
            workers["engine"][step_key], workers["naive"][step_key])
        memory["method"] = (
            "one fresh subprocess per model (engine = load_encoder; full_frozen = whole AutoencoderKL, "
            "frozen; naive = whole AutoencoderKL, weights requiring grad); bytes over the post-import "
            "baseline. encoder_over_full_memory = weights resident once every weight has been touched "
            + ("(torch.cuda.memory_allocated)" if device.type == "cuda" else "(RSS, /proc/self/statm)")
            + "; peak_load = peak while loading, peak_step = peak over load + one attack step at batch 1 "
            + ("(torch.cuda.max_memory_allocated)" if device.type == "cuda"
               else "(VmHWM reset before loading; else getrusage ru_maxrss), the step running after every "
                    "weight was touched. On CPU diffusers memory-maps safetensors, so the whole VAE's "
                    "peak_load is small (weights are paged in when read); load_encoder copies them")
        )

    result: dict[str, Any] = {
        "benchmark": "engine_speed",
        "version": pca_attack.__version__,
        "model": model_desc,
        "model_config": ({k: model_config[k] for k in ("block_out_channels", "layers_per_block",
                                                        "norm_num_groups", "latent_channels")}
                         if model_config else None),
        "image": image_desc,
        "size": args.size,
        "steps": steps,
        "repeats": args.repeats,
        "attack": {"preset": cfg.preset, "eps": cfg.eps, "step": cfg.step, "random_start": cfg.random_start,
                   "keep_best": cfg.keep_best},
        "device": str(device),
        "dtype": "float32",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "clock": "wall",
        **timing["wall"],
        "cpu_time": timing["cpu"],
        "losses_bit_identical": ours == ref,
        "losses_match": max_rel <= LOSS_MATCH_RTOL,
        "loss_trace_max_abs_diff": max_abs,
        "loss_trace_max_rel_diff": max_rel,
        "images_per_s": {k: v["images_per_s"] for k, v in throughput.items()},
        "throughput": throughput,
        "memory": memory,
        "encoder_over_full_param_bytes": _ratio(params["encoder"], params["full_vae"]),
        "encoder_over_full_memory": encoder_over_full_memory,
        "targets": TARGETS,
        "raw_seconds": raw,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "wall_s": time.perf_counter() - wall_start,
    }
    result["meets_targets"] = {
        "engine_over_bare": result["engine_over_bare"] <= TARGETS["engine_over_bare_max"],
        "naive_over_engine": result["naive_over_engine"] >= TARGETS["naive_over_engine_min"],
        "encoder_over_full_memory": encoder_over_full_memory <= TARGETS["encoder_over_full_memory_max"],
    }
    tmp.cleanup()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    parser.add_argument("--memory-worker", choices=("engine", "full_frozen", "naive"), default=None,
                        help=argparse.SUPPRESS)
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
