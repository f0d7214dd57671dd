"""benchmarks/eot_channels.py on the demo VAE (tiny crop, few steps): every preset and smoothing is red-teamed on
every channel, per photo and in the summary (with its ratio to the plain attack), and numbers are finite."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_each_preset_is_measured_on_each_channel(tmp_path: Path) -> None:
    out = tmp_path / "eot.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eot_channels.py"), "--model", "demo",
                          "--photos", "chelsea", "--crop", "48x64", "--steps", "2", "--eot", "none,cleaner",
                          "--smoothing", "0,4", "--channels", "jpeg-75,cleaner", "--threads", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert json.loads(run.stdout) == result
    variants = {"none", "cleaner", "none+smooth4", "cleaner+smooth4"}
    assert set(result["summary"]) == variants and set(result["photos"]) == {"chelsea"}
    photo = result["photos"]["chelsea"]
    assert photo["size"] == [48, 64]
    for row in photo["presets"].values():
        assert set(row["damage_db"]) == set(row["damage_vs_original_db"]) == set(row["excess_db"]) == {
            "none", "jpeg-75", "cleaner"}
        assert all(row["excess_db"][c] <= row["damage_db"][c] + 1e-3 for c in row["damage_db"])
        assert all(math.isfinite(v) for v in row["damage_db"].values())
        assert row["pixel_psnr_db"] > 20  # within the 16/255 budget
        assert 0 < row["pixel_ssim"] < 1 and row["collapse"] <= 1
    assert result["photos"]["chelsea"]["presets"]["none+smooth4"] != photo["presets"]["none"]  # smoothing acts
    assert set(result["summary"]["cleaner"]["vs_plain"]) == {"none", "jpeg-75", "cleaner"}
    assert set(result["summary"]["cleaner"]["vs_plain_vs_original"]) == {"none", "jpeg-75", "cleaner"}
    assert set(result["summary"]["cleaner"]["mean_excess_db"]) == {"none", "jpeg-75", "cleaner"}
    assert "vs_plain" not in result["summary"]["none"]
