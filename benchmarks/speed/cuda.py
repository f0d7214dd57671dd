"""The engine on CUDA: seconds per image, engine step / bare fwd+bwd, peak GPU memory, and the final loss
of fp16 / bf16 against fp32, for each model x dtype x batch (``gpu_check.py --part engine``).

Per case (one model, one dtype, one batch of the 512x512 test image and its flips), after a one-step
warm-up of each method, ``repeats`` interleaved rounds time: the engine with N steps (``Protector.protect``
with the default ``AttackConfig``, N = 40), the engine with 1 step, and the bare loop (frozen-encoder
forward + input-gradient backward of a trivial loss, N times). The engine's per-step cost is its marginal
cost ``(T(N) - T(1)) / (N - 1)``; seconds per image is ``T(N) / batch``. Peak GPU memory is
``torch.cuda.max_memory_allocated`` over one N-step run (weights included). The returned images of every
dtype are scored by the fp32 encoder too, so the dtypes' final losses compare on one scale.

The results are written to ``out`` after every case, so a run stopped by its time cap keeps what it got.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from speed.fixtures import QUICK_CONFIG, SD1_CONFIG, build_random_vae_folder, module_bytes, test_image
from speed.loops import bare_loop, ratio, run_rounds

DTYPES = ("fp32", "fp16", "bf16")
TARGETS = {"seconds_per_image_batch8_half_max": 0.5, "engine_over_bare_max": 1.10,
           "half_final_loss_rel_diff_max": 0.01}
ROOT = Path(__file__).resolve().parents[2]
# ../shared does not travel to a device machine: a copy carried as .taef2/ (git-ignored) is looked at first
TAEF2_DIRS = (ROOT / ".taef2", ROOT / ".." / "shared" / "models" / "taef2")


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Write atomically (a stopped run never leaves half a file)."""
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def _peak_tracked(fn: Callable[[], Any], peaks: list[int], device: torch.device) -> Callable[[], Any]:
    """fn, with torch.cuda's peak allocation over each call appended to ``peaks`` (-1 off CUDA)."""

    def run() -> Any:
        if device.type != "cuda":
            peaks.append(-1)
            return fn()
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        peaks.append(int(torch.cuda.max_memory_allocated(device)))
        return out

    return run


def time_case(encoder: Any, x: torch.Tensor, steps: int, repeats: int) -> tuple[dict[str, Any], Any]:
    """Time one (encoder, batch) case; returns (numbers, the N-step ProtectResult)."""
    from pca_attack import AttackConfig, Protector

    cfg, cfg_one = AttackConfig(steps=steps), AttackConfig(steps=1)
    device, batch = x.device, x.shape[0]
    peaks: dict[str, list[int]] = {"engine_n": [], "bare": []}
    runners: dict[str, Callable[[], Any]] = {
        "engine_1": lambda: Protector(encoder, cfg_one).protect(x),
        "engine_n": _peak_tracked(lambda: Protector(encoder, cfg).protect(x), peaks["engine_n"], device),
        "bare": _peak_tracked(lambda: bare_loop(encoder, x, steps), peaks["bare"], device),
    }
    Protector(encoder, cfg_one).protect(x)  # warm-up: cuDNN plans, allocator pools, lazy imports
    bare_loop(encoder, x, 1)
    raw, outputs = run_rounds(runners, repeats, device, keep=("engine_n",))
    med = {name: statistics.median(values) for name, values in raw["wall"].items()}
    engine_step = (med["engine_n"] - med["engine_1"]) / (steps - 1)
    bare_step = med["bare"] / steps
    result = outputs["engine_n"]
    numbers = {
        "batch": batch,
        "seconds_per_image": med["engine_n"] / batch,
        "images_per_s": batch / med["engine_n"],
        "per_step_s": {"engine": engine_step, "engine_amortised": med["engine_n"] / steps, "bare": bare_step},
        "engine_over_bare": ratio(engine_step, bare_step),
        "engine_amortised_over_bare": ratio(med["engine_n"] / steps, bare_step),
        "peak_gpu_bytes": {"engine": max(peaks["engine_n"]), "bare": max(peaks["bare"])},
        "clean_loss_mean": float(result.clean_loss.mean()),
        "final_loss_mean": float(result.final_loss.mean()),
        "final_over_clean": float((result.final_loss / result.clean_loss).mean()),
        "steps_run": result.steps_run,
        "raw_seconds": raw["wall"],
    }
    return numbers, result


def score_fp32(reference: Any, images: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, float]:
    """Mean collapse loss of each dtype's returned images under the fp32 encoder (one scale for all)."""
    from pca_attack import AttackConfig, Protector

    judge = Protector(reference, AttackConfig())
    with torch.no_grad():
        target = judge.target_variance(x)
        return {name: float(judge.loss(imgs.to(x.device), target).float().mean()) for name, imgs in images.items()}


def compare_dtypes(cases: dict[str, dict[str, Any]], scored: dict[str, float]) -> dict[str, Any]:
    """fp16 / bf16 final loss against fp32's (relative difference), by their own encoder and by fp32's."""
    out: dict[str, Any] = {"final_loss_fp32_judge": scored}
    fp32 = cases.get("fp32")
    for name in ("fp16", "bf16"):
        if fp32 is None or name not in cases:
            continue
        own = ratio(abs(cases[name]["final_loss_mean"] - fp32["final_loss_mean"]), abs(fp32["final_loss_mean"]))
        judged = (ratio(abs(scored[name] - scored["fp32"]), abs(scored["fp32"]))
                  if name in scored and "fp32" in scored else float("nan"))
        out[f"{name}_final_loss_rel_diff"] = {"own_encoder": own, "fp32_encoder": judged}
    return out


def run_model(spec: str, label: str, args: Any, report: dict[str, Any], out: Path | None) -> None:
    """Every dtype x batch of one model; ``report['models'][label]`` grows case by case."""
    from pca_attack import clear_cache, load_encoder

    entry: dict[str, Any] = report["models"].setdefault(label, {"spec": spec, "batches": {}})
    for batch in args.batches:
        x = test_image(args.size, batch)[0].to(args.device)  # (batch, 3, size, size)
        cases: dict[str, dict[str, Any]] = {}
        images: dict[str, torch.Tensor] = {}
        entry["batches"][str(batch)] = {"dtypes": cases}
        for dtype in args.dtypes:
            start = time.perf_counter()
            free_device_memory(clear_cache)  # one encoder on the GPU at a time: peaks count only this one
            try:
                encoder = load_encoder(spec, device=args.device, dtype=dtype, offline=True)
                cases[dtype], result = time_case(encoder, x, args.steps, args.repeats)
                cases[dtype]["param_bytes"] = module_bytes(encoder)
                images[dtype] = result.images.cpu()
            except Exception as exc:  # one failing dtype (e.g. NaNs, an unsupported op) must not end the run
                cases[dtype] = {"error": f"{type(exc).__name__}: {exc}"}
            cases[dtype]["case_wall_s"] = time.perf_counter() - start
            write_json(out, report)
        if "fp32" in images:
            free_device_memory(clear_cache)
            scored = score_fp32(load_encoder(spec, device=args.device, dtype="fp32", offline=True), images, x)
            entry["batches"][str(batch)]["comparison"] = compare_dtypes(cases, scored)
        write_json(out, report)


def free_device_memory(clear_cache: Callable[[], None]) -> None:
    """Forget cached encoders and hand their memory back, so the next case's peak starts from zero."""
    import gc

    clear_cache()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def taef2_spec() -> tuple[str | None, str]:
    """(spec the engine loads, note): the TAEF2 folder if present and loadable, else None and why."""
    folder = next((d.resolve() for d in TAEF2_DIRS if d.is_dir()), None)
    if folder is None:
        return None, f"skipped: none of {[str(d) for d in TAEF2_DIRS]} exists (the models folder did not travel)"
    try:
        from pca_attack import load_encoder

        load_encoder(str(folder), device="cpu", dtype="fp32", offline=True)
    except Exception as exc:
        return None, f"skipped: the engine cannot load TAEF2 yet ({type(exc).__name__}: {exc})"
    return str(folder), f"loaded from {folder}"


def environment() -> dict[str, Any]:
    """What ran: torch, CUDA, the GPU, cuDNN settings."""
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def run_engine_part(args: Any, out: Path | None) -> dict[str, Any]:
    """The SD-1.x-sized random VAE, then TAEF2 when the engine can load it; the report (also in ``out``)."""
    report: dict[str, Any] = {
        "part": "engine", "size": args.size, "steps": args.steps, "repeats": args.repeats,
        "batches": list(args.batches), "dtypes": list(args.dtypes), "attack": "AttackConfig() defaults",
        "targets": TARGETS, "environment": environment(), "models": {},
    }
    write_json(out, report)
    with tempfile.TemporaryDirectory(prefix="pca_gpu_") as tmp:
        config = QUICK_CONFIG if args.quick else SD1_CONFIG  # --quick: a tiny VAE, to try the code on a CPU
        sd = str(build_random_vae_folder(config, Path(tmp) / "vae"))
        desc = "tiny AutoencoderKL (random weights)" if args.quick else "SD-1.x-sized AutoencoderKL (random weights)"
        report["models"]["sd1_random"] = {"spec": desc, "batches": {}}
        run_model(sd, "sd1_random", args, report, out)
    spec, note = taef2_spec()
    report["taef2"] = note
    if spec is not None:
        run_model(spec, "taef2", args, report, out)
    report["complete"] = True
    write_json(out, report)
    return report
