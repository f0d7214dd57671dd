"""Memory of the encoder-only engine against the whole VAE, each model in a fresh subprocess.

A worker loads one model, touches every weight and runs one attack step at batch 1, reporting bytes over
its post-import baseline: RSS on CPU (``/proc/self/statm``, peak via VmHWM), ``torch.cuda`` counters on CUDA.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from speed.fixtures import load_full_vae, module_bytes, test_image
from speed.loops import naive_reference_loop, ratio, sync

WORKER_KINDS = ("engine", "full_frozen", "naive")
SCRIPT = Path(__file__).resolve().parents[1] / "engine_speed.py"  # runs a worker with --memory-worker KIND


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


def _load_model(kind: str, spec: str, device_name: str) -> torch.nn.Module:
    from pca_attack import load_encoder

    if kind == "engine":
        return load_encoder(spec, device=device_name, dtype="float32")
    model = load_full_vae(spec, torch.device(device_name))
    model.requires_grad_(kind == "naive")
    return model


def _one_step(kind: str, model: torch.nn.Module, x: torch.Tensor) -> None:
    from pca_attack import REFERENCE_CONFIG, Protector

    if kind == "engine":
        Protector(model, REFERENCE_CONFIG.with_(steps=1)).protect(x)  # type: ignore[arg-type]
    elif kind == "full_frozen":
        x_adv = x.clone().requires_grad_(True)
        dist = model.encode(x_adv * 2 - 1).latent_dist  # type: ignore[operator]
        torch.autograd.grad(dist.mean.sum() + dist.logvar.sum(), x_adv)
    else:
        naive_reference_loop(model, x, steps=1)


def memory_worker(kind: str, spec: str, size: int, device_name: str, threads: int) -> dict[str, Any]:
    """Load one model and run one attack step at batch 1; report how much memory each stage added."""
    # import everything the loaders touch first, so the baseline below excludes import-time memory
    import diffusers.models.autoencoders.vae  # noqa: F401
    import safetensors.torch  # noqa: F401
    from diffusers import AutoencoderKL  # noqa: F401

    from pca_attack import REFERENCE_CONFIG, Protector, load_encoder  # noqa: F401

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    x = test_image(size)[0].to(device)  # (1, 3, size, size)
    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    peak_reset = _reset_peak()  # so that an earlier transient (imports, image decoding) does not count
    base_rss, base_peak = _rss_now(), _rss_peak()
    base_cuda = torch.cuda.memory_allocated(device) if cuda else 0

    model = _load_model(kind, spec, device_name)
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
    _one_step(kind, model, x)
    sync(device)
    out["peak_step_bytes"] = max(_rss_peak(), base_peak) - base_rss
    if cuda:
        out["cuda_peak_step_bytes"] = torch.cuda.max_memory_allocated(device) - base_cuda
    return out


def run_memory_workers(spec: str, size: int, device: str, threads: int) -> dict[str, dict[str, Any]]:
    """One fresh interpreter per kind (engine, full_frozen, naive); their JSON reports by kind."""
    results: dict[str, dict[str, Any]] = {}
    for kind in WORKER_KINDS:
        cmd = [sys.executable, str(SCRIPT), "--memory-worker", kind, "--model", spec,
               "--size", str(size), "--device", device, "--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory worker {kind!r} failed:\n{proc.stderr[-3000:]}")
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def _method(cuda: bool) -> str:
    return (
        "one fresh subprocess per model (engine = load_encoder; full_frozen = whole AutoencoderKL, "
        "frozen; naive = whole AutoencoderKL, weights requiring grad); bytes over the post-import "
        "baseline. encoder_over_full_memory = weights resident once every weight has been touched "
        + ("(torch.cuda.memory_allocated)" if cuda else "(RSS, /proc/self/statm)")
        + "; peak_load = peak while loading, peak_step = peak over load + one attack step at batch 1 "
        + ("(torch.cuda.max_memory_allocated)" if cuda
           else "(VmHWM reset before loading; else getrusage ru_maxrss), the step running after every "
                "weight was touched. On CPU diffusers memory-maps safetensors, so the whole VAE's "
                "peak_load is small (weights are paged in when read); load_encoder copies them")
    )


def memory_section(spec: str, size: int, device: torch.device, threads: int,
                   params: dict[str, int]) -> tuple[dict[str, Any], float]:
    """The benchmark's ``memory`` object and ``encoder_over_full_memory`` (the weights-resident ratio)."""
    workers = run_memory_workers(spec, size, str(device), threads)
    cuda = device.type == "cuda"
    key = "cuda_weights_bytes" if cuda else "weights_resident_bytes"
    step_key = "cuda_peak_step_bytes" if cuda else "peak_step_bytes"
    load_key = "cuda_peak_load_bytes" if cuda else "peak_load_bytes"
    memory: dict[str, Any] = {
        "param_buffer_bytes": params,
        "workers": workers,
        "encoder_over_full_peak_load": ratio(workers["engine"][load_key], workers["full_frozen"][load_key]),
        "encoder_over_full_step_peak": ratio(workers["engine"][step_key], workers["full_frozen"][step_key]),
        "engine_over_naive_step_peak": ratio(workers["engine"][step_key], workers["naive"][step_key]),
        "method": _method(cuda),
    }
    return memory, ratio(workers["engine"][key], workers["full_frozen"][key])
