"""Smoke test of benchmarks/engine_speed.py: the --quick run works and its JSON is complete and sane.

No timing assertions: the numbers depend on the machine and its load. Only that every key is there, that
direct measurements are finite and positive, and that the engine's losses match the naive reference loop.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)  # four fresh interpreters (run + 3 memory workers); slow when loaded

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "engine_speed.py"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: object) -> bool:
    return _finite(value) and float(value) > 0  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--steps", "2", "--repeats", "2",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=840, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), json.loads(out.read_text())


def test_quick_run_prints_and_writes_the_same_json(quick_result: tuple[dict, dict]) -> None:
    printed, written = quick_result
    assert printed == written


def test_quick_run_reports_every_key(quick_result: tuple[dict, dict]) -> None:
    result, _ = quick_result
    for key in ("device", "dtype", "torch", "threads", "size", "steps", "repeats", "model", "image",
                "per_step_s", "engine_over_bare", "naive_over_engine", "engine_amortised_over_bare",
                "engine_fixed_cost_s", "cpu_time", "images_per_s", "throughput", "memory",
                "encoder_over_full_memory", "encoder_over_full_param_bytes", "targets", "meets_targets",
                "losses_bit_identical", "losses_match", "loss_trace_max_rel_diff", "raw_seconds"):
        assert key in result, key
    assert result["device"] == "cpu" and result["dtype"] == "float32"
    assert result["threads"] == 1 and result["size"] == 64 and result["steps"] == 2
    assert set(result["per_step_s"]) == {"engine", "engine_amortised", "bare", "naive"}
    assert _finite(result["bare_nchw_over_bare"]) and result["bare_nchw_over_bare"] > 0
    assert set(result["images_per_s"]) == {"1", "2", "4"}
    assert set(result["memory"]["workers"]) == {"engine", "full_frozen", "naive"}
    assert set(result["meets_targets"]) == {"engine_over_bare", "naive_over_engine", "encoder_over_full_memory"}


def test_quick_run_numbers_are_finite_and_positive(quick_result: tuple[dict, dict]) -> None:
    result, _ = quick_result
    for clock in (result, result["cpu_time"]):
        per_step = clock["per_step_s"]
        for name in ("engine_amortised", "bare", "naive"):  # direct measurements
            assert _positive(per_step[name]), (name, per_step[name])
        # the engine's marginal step is a difference of two timings: only finite is guaranteed
        for key in ("engine_over_bare", "naive_over_engine", "engine_fixed_cost_s"):
            assert _finite(clock[key]), (key, clock[key])
        for key in ("engine_amortised_over_bare", "naive_over_engine_amortised", "naive_over_bare"):
            assert _positive(clock[key]), (key, clock[key])
    for batch, row in result["throughput"].items():
        assert _positive(row["seconds"]) and _positive(row["images_per_s"]), (batch, row)
        assert _positive(result["images_per_s"][batch])
    for name, values in result["raw_seconds"]["wall"].items():
        assert len(values) == 2 and all(_positive(v) for v in values), name

    memory = result["memory"]
    params = memory["param_buffer_bytes"]
    assert _positive(params["encoder"]) and _positive(params["full_vae"])
    assert 0 < result["encoder_over_full_param_bytes"] < 1  # the encoder is part of the VAE
    for kind, worker in memory["workers"].items():
        assert worker["param_buffer_bytes"] > 0, kind
        assert worker["checksum_finite"], kind
        for key in ("peak_load_bytes", "peak_step_bytes", "weights_resident_bytes"):
            assert _finite(worker[key]), (kind, key)
        assert worker["peak_step_bytes"] >= 0, kind
    # a toy model's few hundred KB may land in already-resident heap, so only finite and >= 0
    assert _finite(result["encoder_over_full_memory"]) and result["encoder_over_full_memory"] >= 0


def test_engine_losses_match_the_naive_reference(quick_result: tuple[dict, dict]) -> None:
    result, _ = quick_result
    # the engine runs channels_last, the naive loop NCHW: equal up to float rounding, not bit for bit
    assert result["losses_match"] is True
    assert 0.0 <= result["loss_trace_max_rel_diff"] <= 1e-5
