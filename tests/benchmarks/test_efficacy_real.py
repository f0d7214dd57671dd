"""benchmarks/efficacy_real.py (the real-model efficacy benchmark) end to end on a tiny random VAE: the scope
(natural size vs crops), the rows per photo, the red team per channel, EoT vs the plain main row, the default
intensity's separate rows, the figure, and the targets computed from the per-photo numbers."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _module() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("efficacy_real_bench", BENCH / "efficacy_real.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    pytest.importorskip("sklearn", reason="the benchmark's photos come from scikit-learn and scikit-image")
    return _module()


@pytest.fixture(scope="module")
def result(bench: ModuleType, tiny_vae_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("eff")
    return bench.main([
        "--model", str(tiny_vae_dir), "--photos", "chelsea,coffee", "--crop", "32x48", "--steps", "2,1",
        "--eot-images", "chelsea", "--figures", "chelsea", "--threads", "1", "--out-json", str(out / "r.json"),
        "--fig-dir", str(out / "fig"),
    ]) | {"_out": out}


def test_scope_keeps_named_photos_at_natural_size(bench: ModuleType) -> None:
    photos = bench.scope(["chelsea", "coffee"], (32, 48), ["coffee"])
    assert list(photos["chelsea"].shape) == [3, 32, 48]
    assert list(photos["coffee"].shape) == [3, 400, 600]


def test_rows_per_photo_hold_the_budget_and_report_every_metric(result: dict[str, Any]) -> None:
    assert set(result["per_photo"]) == {"chelsea", "coffee"}
    for rows in result["per_photo"].values():
        assert set(rows) == {"pca-@2", "pca-@1", "photoguard@2", "photoguard@1"}
        for row in rows.values():
            assert row["linf_255"] <= 16
            for key in ("psnr_damage_db", "damage_after_jpeg75_db", "pixel_ssim", "mean_energy_reduction",
                        "latent_drift", "roundtrip_ssim_protected", "excess_damage_db"):
                assert math.isfinite(row[key]), key
            assert row["excess_damage_db"] <= row["psnr_damage_db"] + 1e-9
    assert result["attack_config"]["shrink"] == 0.0 and result["attack_config"]["steps"] == 2


def test_targets_follow_from_the_per_photo_rows(result: dict[str, Any]) -> None:
    rows = result["per_photo"].values()
    mean = sum(r["pca-@2"]["psnr_damage_db"] for r in rows) / 2
    assert result["targets"]["mean_damage_db"] == pytest.approx(mean)
    wins = sum(r["pca-@2"]["psnr_damage_db"] >= r["photoguard@2"]["psnr_damage_db"] for r in rows)
    assert result["targets"]["beats_photoguard_on@2"] == f"{wins}/2"
    assert result["targets"]["beats_photoguard_met"] == (wins == 2)


def test_red_team_per_photo_covers_every_channel(result: dict[str, Any]) -> None:
    from pca_attack.redteam.channels import transform_names

    expected = set(transform_names()) - {"purify"}
    for channels in result["redteam_per_photo"].values():
        assert set(channels) == expected
        assert channels["none"]["retention"] == pytest.approx(1.0)
    pooled = {r["transform"] for r in result["redteam_plain"]["rows"]}
    assert pooled == expected


def test_eot_is_compared_with_the_main_row_at_equal_steps(result: dict[str, Any]) -> None:
    eot = result["eot_vs_plain"]
    assert eot["steps"] == 2 and list(eot["per_photo"]) == ["chelsea"]
    plain = eot["per_photo"]["chelsea"]["plain"]
    assert plain["damage_after_jpeg75_db"] == result["per_photo"]["chelsea"]["pca-@2"]["damage_after_jpeg75_db"]
    for preset in ("jpeg-75", "jpeg-75-cubic"):
        gain = result["targets"]["eot_presets"][preset]["gain"]
        expected = eot["per_photo"]["chelsea"][preset]["damage_after_jpeg75_db"] / plain["damage_after_jpeg75_db"]
        assert gain is None or gain == pytest.approx(expected)
        rows = {r["transform"] for r in result["redteam_eot"][preset]["rows"]}
        assert rows == {"none", "jpeg-95", "jpeg-75", "jpeg-50", "webp-80"}
    assert result["targets"]["eot_gain"] == result["targets"]["eot_presets"]["jpeg-75"]["gain"]


def test_figure_and_json_are_written(result: dict[str, Any]) -> None:
    out = result["_out"]
    assert len(result["figures"]) == 1 and Path(result["figures"][0]).is_file()
    written = json.loads((out / "r.json").read_text())
    assert written["targets"]["mean_damage_db"] == pytest.approx(result["targets"]["mean_damage_db"])
    assert written["targets"]["eot_presets"].keys() == result["targets"]["eot_presets"].keys()


def test_only_default_rows_use_the_engine_default(bench: ModuleType, tiny_vae_dir: Path, tmp_path: Path) -> None:
    from pca_attack import AttackConfig

    res = bench.main(["--model", str(tiny_vae_dir), "--photos", "chelsea", "--crop", "32x48", "--steps", "2",
                      "--only-default", "--out-json", str(tmp_path / "d.json")])
    assert set(res["per_photo"]["chelsea"]) == {"default@2"}
    assert res["attack_config"]["shrink"] == AttackConfig().shrink
    assert (tmp_path / "d.json").is_file()


def test_reuse_copies_photos_and_runs_only_extras_on_them(
    bench: ModuleType, result: dict[str, Any], tiny_vae_dir: Path, tmp_path: Path
) -> None:
    earlier = result["_out"] / "r.json"
    res = bench.main([
        "--model", str(tiny_vae_dir), "--photos", "chelsea,coffee", "--crop", "32x48", "--steps", "2,1",
        "--eot-images", "chelsea", "--figures", "", "--reuse", str(earlier), "--reuse-photos", "chelsea",
        "--extra", "no-neutral", "--out-json", str(tmp_path / "m.json"), "--partial", str(tmp_path / "p.json"),
    ])
    old = json.loads(earlier.read_text())
    chelsea = res["per_photo"]["chelsea"]
    assert {k: v for k, v in chelsea.items() if k != "no-neutral@2"} == old["per_photo"]["chelsea"]
    assert "no-neutral@2" in chelsea and "no-neutral@2" in res["per_photo"]["coffee"]
    assert res["redteam_per_photo"]["chelsea"] == old["redteam_per_photo"]["chelsea"]
    assert res["eot_vs_plain"]["per_photo"]["chelsea"] == old["eot_vs_plain"]["per_photo"]["chelsea"]
    assert res["reused"]["photos"] == ["chelsea"]
    pooled = {r["transform"]: r for r in res["redteam_plain"]["rows"]}
    drift = [res["redteam_per_photo"][n]["jpeg-75"]["latent_drift"] for n in ("chelsea", "coffee")]
    assert pooled["jpeg-75"]["latent_drift"] == pytest.approx(sum(drift) / 2)
    assert pooled["none"]["retention"] == pytest.approx(1.0)
    assert res["targets"]["no-neutral@2_beats_photoguard_on"].endswith("/2")
    again = bench.main([  # a run cut short is finished from its partial file, nothing rerun
        "--model", str(tiny_vae_dir), "--photos", "chelsea,coffee", "--crop", "32x48", "--steps", "2,1",
        "--eot-images", "chelsea", "--figures", "", "--reuse", str(tmp_path / "p.json"),
        "--reuse-photos", "chelsea,coffee", "--out-json", str(tmp_path / "a.json"),
    ])
    assert again["per_photo"] == res["per_photo"] and again["redteam_plain"] == res["redteam_plain"]
    assert again["targets"] == res["targets"]


def test_reuse_refuses_a_photo_measured_at_another_size(
    bench: ModuleType, result: dict[str, Any], tiny_vae_dir: Path, tmp_path: Path
) -> None:
    from efficacy_reuse import ReuseError

    with pytest.raises(ReuseError, match="chelsea was measured at"):
        bench.main(["--model", str(tiny_vae_dir), "--photos", "chelsea", "--crop", "40x48", "--steps", "2,1",
                    "--reuse", str(result["_out"] / "r.json"), "--reuse-photos", "chelsea",
                    "--out-json", str(tmp_path / "x.json")])
