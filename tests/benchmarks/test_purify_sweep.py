"""benchmarks/purify_sweep.py on the demo VAE (tiny crop, few steps): every (steps, weight) setting is
reported per photo and in the summary, with finite numbers, and model paths never reach the JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_reports_each_setting_per_photo_and_in_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "purify_sweep.py"), "--model", "demo",
                          "--photos", "chelsea", "--crop", "64x96", "--steps", "2,4", "--weights", "10,1",
                          "--attack-steps", "3", "--threads", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert json.loads(run.stdout) == result
    names = {"steps=2,weight=10", "steps=2,weight=1", "steps=4,weight=10", "steps=4,weight=1"}
    assert set(result["summary"]) == names and set(result["photos"]) == {"chelsea"}
    photo = result["photos"]["chelsea"]
    assert photo["size"] == [64, 96] and set(photo["purified"]) == names
    for row in photo["purified"].values():
        assert all(math.isfinite(row[k]) for k in ("damage_db", "damage_retention", "drift_retention"))
        assert row["psnr_vs_protected_db"] > 20  # the purifier stays within 16/255 of the protected image
