"""The timed loops and how they are timed: interleaved rounds, medians, per-round paired ratios."""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall clocks measure it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, fn's result)."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, out


def posterior_sum(outputs: Any) -> torch.Tensor:
    """A trivial scalar of an encoder's outputs (mean, logvar), in fp32; a missing logvar is skipped."""
    parts = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return sum(t.float().sum() for t in parts if isinstance(t, torch.Tensor))  # type: ignore[return-value]


def bare_loop(encoder: torch.nn.Module, x: torch.Tensor, steps: int) -> None:
    """Frozen-encoder forward + input-gradient backward of a trivial loss, ``steps`` times."""
    x_adv = x.clone()  # (B, 3, H, W)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(posterior_sum(encoder(x_adv)), x_adv)
        x_adv = x_adv.detach()
    del grad


def naive_reference_loop(
    vae: torch.nn.Module, x: torch.Tensor, steps: int, eps: float = 16 / 255, alpha: float = 2 / 255,
    v: float = 1e-8,
) -> list[float]:
    """The reference loop written plainly: whole VAE, weights requiring grad, ``.backward()``."""
    vae.requires_grad_(True)
    x_clean = x.clone()
    x_adv = x.clone()  # (B, 3, H, W)
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


def run_rounds(
    runners: dict[str, Callable[[], Any]], repeats: int, device: torch.device, keep: tuple[str, ...] = (),
) -> tuple[dict[str, dict[str, list[float]]], dict[str, Any]]:
    """Time every runner ``repeats`` times in interleaved rounds whose order rotates.

    Returns ({"wall"|"cpu": {name: [seconds per round]}}, {name: last output, for names in ``keep``}).
    """
    raw: dict[str, dict[str, list[float]]] = {clock: {n: [] for n in runners} for clock in ("wall", "cpu")}
    outputs: dict[str, Any] = {}
    names = list(runners)
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            wall, cpu, out = timed(runners[name], device)
            raw["wall"][name].append(wall)
            raw["cpu"][name].append(cpu)
            if name in keep:
                outputs[name] = out
            print(f"[repeat {r + 1}/{repeats}] {name}: {wall:.3f}s wall, {cpu:.3f}s cpu",
                  file=sys.stderr, flush=True)
    return raw, outputs


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is not positive."""
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
        paired_eob.append(ratio(step_r, raw["bare"][r] / steps))
        paired_noe.append(ratio(raw["naive"][r] / steps, step_r))
    return {
        "per_step_s": {"engine": engine_step, "engine_amortised": engine_amortised, "bare": bare_step,
                       "naive": naive_step},
        "engine_fixed_cost_s": med["engine_1"] - engine_step,
        "engine_over_bare": ratio(engine_step, bare_step),
        "naive_over_engine": ratio(naive_step, engine_step),
        "engine_amortised_over_bare": ratio(engine_amortised, bare_step),
        "naive_over_engine_amortised": ratio(naive_step, engine_amortised),
        "naive_over_bare": ratio(naive_step, bare_step),
        # the engine's conv layout (channels_last on CPU/CUDA) against NCHW, same encoder, same bare loop
        "bare_nchw_over_bare": ratio(med["bare_nchw"], med["bare"]),
        "paired_ratio_medians": {"engine_over_bare": statistics.median(paired_eob),
                                 "naive_over_engine": statistics.median(paired_noe)},
    }
