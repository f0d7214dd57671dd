"""``bash benchmarks/gpu_check.sh --dry-run OUTDIR`` parses, plans and stops cleanly on any machine (this
one has no GPU in CI): the plan JSON it prints and writes names every part with its cap and command, the
engine cases of issue 19 (two models x batch 1 and 8 x fp32 / fp16 / bf16 at 512x512, 40 steps), and a
budget of at most 8 minutes; nothing is measured. Not marked ``cuda``: it runs in the default suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    return proc, out


def test_dry_run_exits_0_and_prints_the_plan_it_writes(dry_run) -> None:
    proc, out = dry_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)
    written = json.loads((out / "gpu_check.json").read_text())
    assert written["plan"] == printed
    assert written["status"].startswith("dry-run")
    assert written["parts"] == {}  # nothing ran
    assert not (out / "engine.json").exists() and not (out / "tests.xml").exists()


def test_plan_names_every_part_with_a_cap_inside_the_8_minute_budget(dry_run) -> None:
    plan = json.loads(dry_run[0].stdout)
    assert plan["budget_s"] <= 480
    parts = {p["part"]: p for p in plan["parts"]}
    assert list(parts) == ["tests", "engine", "service"]
    for part in parts.values():
        assert 0 < part["cap_s"] <= plan["budget_s"] and part["command"]
    assert parts["tests"]["command"][2:6] == ["pytest", "-m", "cuda", "tests/gpu"]
    assert "--part" in parts["engine"]["command"] and "--part" in parts["service"]["command"]


def test_plan_holds_the_issue_19_engine_cases_and_service_settings(dry_run) -> None:
    plan = json.loads(dry_run[0].stdout)
    assert plan["engine_settings"]["size"] == 512 and plan["engine_settings"]["steps"] == 40
    cases = {(c["model"], c["batch"], c["dtype"]) for c in plan["engine_cases"]}
    assert cases == {(m, b, d) for m in ("sd1_random", "taef2") for b in (1, 8) for d in ("fp32", "fp16", "bf16")}
    assert plan["service_settings"]["max_batch"] == 8 and plan["service_settings"]["clients"] == 8


def test_without_cuda_the_gpu_parts_are_planned_as_skipped(dry_run) -> None:
    plan = json.loads(dry_run[0].stdout)
    parts = {p["part"]: p for p in plan["parts"]}
    if plan["environment"]["cuda_available"]:
        assert all(p["skip"] is None for p in parts.values())
    else:
        assert parts["tests"]["skip"] is None  # the strictness test runs on a CPU machine too
        assert "no CUDA" in parts["engine"]["skip"] and "no CUDA" in parts["service"]["skip"]


def test_an_unknown_option_is_refused_with_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--bogus", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "unknown option" in proc.stderr
