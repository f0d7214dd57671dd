"""benchmarks/efficacy_add.py on a tiny random VAE: a step count added to an earlier efficacy JSON leaves its
rows untouched, adds engine and PhotoGuard-style rows at the new count, recomputes the targets from the merged
rows, and a figure is written from a recomputation that matches the stored row."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def earlier(tiny_vae_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sklearn", reason="the benchmark's photos come from scikit-learn and scikit-image")
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("add") / "e.json"
    _load("efficacy_real").main([
        "--model", str(tiny_vae_dir), "--photos", "chelsea,coffee", "--crop", "32x48", "--steps", "2",
        "--eot-images", "", "--figures", "", "--out-json", str(out),
    ])
    return out


@pytest.fixture(scope="module")
def added(earlier: Path, tiny_vae_dir: Path) -> dict[str, Any]:
    into = earlier.with_name("merged.json")
    into.write_text(earlier.read_text())
    _load("efficacy_add").main([
        "--model", str(tiny_vae_dir), "--into", str(into), "--steps", "1", "--photos", "chelsea,coffee",
        "--figures", "chelsea", "--fig-dir", str(earlier.parent / "fig"),
    ])
    return json.loads(into.read_text())


def test_new_step_rows_are_added_and_old_rows_kept(earlier: Path, added: dict[str, Any]) -> None:
    old = json.loads(earlier.read_text())
    for name in ("chelsea", "coffee"):
        rows = added["per_photo"][name]
        assert set(rows) == {"pca-@2", "photoguard@2", "pca-@1", "photoguard@1"}
        assert rows["pca-@2"] == old["per_photo"][name]["pca-@2"]
        assert rows["pca-@1"]["linf_255"] <= 16 and rows["photoguard@1"]["linf_255"] <= 16
    assert added["steps"] == [2, 1]
    assert added["redteam_per_photo"] == old["redteam_per_photo"]


def test_targets_are_recomputed_from_the_merged_rows(earlier: Path, added: dict[str, Any]) -> None:
    rows = added["per_photo"].values()
    wins = sum(r["pca-@1"]["psnr_damage_db"] >= r["photoguard@1"]["psnr_damage_db"] for r in rows)
    assert added["targets"]["beats_photoguard_on@1"] == f"{wins}/2"
    assert added["targets"]["mean_damage_db"] == json.loads(earlier.read_text())["targets"]["mean_damage_db"]
    mean = sum(r["pca-@1"]["psnr_damage_db"] for r in rows) / 2
    assert added["per_method"]["pca-@1"]["psnr_damage_db"] == pytest.approx(mean)


def test_figure_comes_from_a_recomputation_matching_the_stored_row(added: dict[str, Any]) -> None:
    entry = added["added"][-1]
    assert entry["photos"] == ["chelsea", "coffee"] and entry["steps"] == [1]
    fig = entry["figures"][0]
    assert Path(fig["path"]).is_file() and fig["path"] in added["figures"]
    assert fig["damage_db_recomputed"] == pytest.approx(fig["damage_db_stored"], abs=1e-4)


def test_a_photo_measured_at_another_size_is_refused(earlier: Path, tiny_vae_dir: Path, tmp_path: Path) -> None:
    data = json.loads(earlier.read_text())
    data["photos"]["chelsea"] = [40, 48]
    into = tmp_path / "x.json"
    into.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="chelsea: measured at"):
        _load("efficacy_add").main(["--model", str(tiny_vae_dir), "--into", str(into), "--steps", "1",
                                    "--photos", "chelsea"])
