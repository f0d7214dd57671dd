"""benchmarks/efficacy_candidates.py on the demo VAE (tiny crops, 2 steps): every candidate and the PhotoGuard-style
baseline get a row per photo; the summary counts wins by round-trip damage and by excess damage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_candidates_are_compared_with_the_baseline_by_damage_and_excess(tmp_path: Path) -> None:
    out = tmp_path / "candidates.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "efficacy_candidates.py"), "--model", "demo",
                          "--photos", "chelsea,coffee", "--crop", "32x48", "--steps", "2",
                          "--candidates", "default,sign", "--out-json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["per_photo"]) == {"chelsea", "coffee"} and result["photos"]["chelsea"] == [32, 48]
    assert set(result["summary"]) == {"photoguard", "default", "sign"}
    for name, row in result["summary"].items():
        assert row["excess_damage_db"] <= row["damage_db"] + 1e-6, name
        assert 0 < row["pixel_ssim"] < 1
        assert row["beats_photoguard_on"].endswith("/2") and row["beats_photoguard_on_excess"].endswith("/2")
    assert result["summary"]["photoguard"]["beats_photoguard_on_excess"] == "2/2"  # ties count as wins
    for rows in result["per_photo"].values():
        assert all(r["excess_damage_db"] <= r["psnr_damage_db"] + 1e-6 for r in rows.values())
