"""benchmarks/visibility.py runs end to end in its quick mode and reports what the README quotes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_visibility_benchmark_quick(tmp_path: Path, demo_available: bool) -> None:
    if not demo_available:
        pytest.skip("bundled demo VAE not present")
    spec = importlib.util.spec_from_file_location("visibility", ROOT / "benchmarks" / "visibility.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--quick", "--out", str(tmp_path / "v.json"), "--figures", str(tmp_path)])
    assert (tmp_path / "v.json").is_file() and (tmp_path / "visibility_quick_crops.png").is_file()
    summary = report["summary"]
    assert {"default", "jnd16+neutral+shrink", "intensity:subtle"} <= set(summary)
    for row in summary.values():
        for key in ("reduction", "psnr_db", "ssim", "vif", "damage_db", "noise_damage_db", "max_abs_colour_shift_255",
                    "excess_damage_db"):
            assert key in row
        assert row["excess_damage_db"] <= row["damage_db"] + 1e-9
    assert summary["psnr30"]["psnr_db"] >= 30.0 - 1e-9  # the psnr budget's target holds on the quantised output
    assert summary["intensity:subtle"]["linf_255"] <= 12.0  # subtle's eps holds on the quantised output
    assert summary["intensity:subtle"]["edge_share"] < summary["default"]["edge_share"]  # JND: few pixels at eps
    for label in ("jnd16+neutral+shrink", "default"):  # colour-neutral, unlike the old Rprop default
        assert summary[label]["max_abs_colour_shift_255"] < summary["rprop-default"]["max_abs_colour_shift_255"]
