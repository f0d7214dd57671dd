"""benchmarks/efficacy.py runs end to end in its reduced mode (demo model if bundled, else a tiny VAE)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from pca_attack.models.registry import DEMO_MODEL_DIR

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "efficacy.py"


def test_efficacy_benchmark_quick_mode(tiny_vae_dir: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("efficacy_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = "demo" if (DEMO_MODEL_DIR / "config.json").is_file() else str(tiny_vae_dir)
    before = torch.get_num_threads()
    try:
        result = module.main([
            "--quick", "--model", model, "--out-json", str(tmp_path / "e.json"), "--img-dir", str(tmp_path / "img"),
        ])
    finally:
        torch.set_num_threads(before)
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["quick"] is True and len(saved["photos"]) == 2
    assert set(saved["per_method"]) == {"pca-", "pca+", "adaptive", "pca-var", "photoguard"}
    assert saved["per_method"]["pca-"]["latent_drift"] > 0
    for curve in ("pca- (engine defaults)", "pca- (reference loop)"):
        assert len(saved["loss_curves"][curve]) == result["steps"] + 1
    summary = saved["steps_to_reference_summary"]
    assert set(summary["mean_default_over_reference_by_steps"]) == {str(result["steps"])}
    assert summary["sign_cosine_20_over_reference"]["worst"] > 0  # the ablation of the update rule ran
    assert {"plain", "eot", "retention_gain", "time_ratio"} <= set(saved["eot_vs_plain"])
    assert saved["redteam_plain"]["rows"][0]["transform"] == "none"
    for name in ("loss_curves", "methods", "redteam"):
        assert (tmp_path / "img" / f"efficacy_{name}.png").is_file()
