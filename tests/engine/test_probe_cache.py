"""The memory probes' disk cache (``pca_attack.attack.probe_cache``), on a tiny convolutional autoencoder
(its probe takes 0.6 s): a second process reads what the first measured; other weights, a damaged or foreign
file, ``PCA_PROBE_CACHE=off`` and an unwritable folder all fall back to measuring; nothing is half written."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pca_attack.attack import probe as probe_module
from pca_attack.attack import probe_cache
from pca_attack.attack.memory import MemoryModel, memory_model
from pca_attack.models.encoder import Encoder, clear_cache, load_encoder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "probes"
    monkeypatch.setenv(probe_cache.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the encoders actually probed (the real probe runs)."""
    probed: list[str] = []
    real = probe_module.probe

    def counting(encoder: Encoder) -> MemoryModel:
        probed.append(encoder.name)
        return real(encoder)

    monkeypatch.setattr(probe_module, "probe", counting)
    yield probed


def fresh(folder: Path) -> Encoder:
    """A newly built encoder object (the in-process memory of measured models is per object)."""
    clear_cache()
    return load_encoder(str(folder), device="cpu", dtype="fp32")


def test_a_new_encoder_with_the_same_weights_reads_the_stored_model(
    cache: Path, probes: list[str], tiny_ae_dir: Path
) -> None:
    first = memory_model(fresh(tiny_ae_dir))
    files = list(cache.glob("*.json"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    second = memory_model(fresh(tiny_ae_dir))
    assert second == first and len(probes) == 1
    record = json.loads(files[0].read_text())
    assert record["model"] == str(tiny_ae_dir) and record["device"]["type"] == "cpu"


def test_other_weights_are_measured_again(cache: Path, probes: list[str], tiny_ae_dir: Path) -> None:
    encoder = fresh(tiny_ae_dir)
    key = probe_cache.cache_key(encoder)
    memory_model(encoder)
    changed = fresh(tiny_ae_dir)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert probe_cache.cache_key(changed) != key
    memory_model(changed)
    assert len(probes) == 2 and len(list(cache.glob("*.json"))) == 2


@pytest.mark.parametrize("damage", ["truncated", "other key", "negative", "not a dict"])
def test_a_damaged_or_foreign_file_is_ignored_and_rewritten(
    cache: Path, probes: list[str], tiny_ae_dir: Path, damage: str
) -> None:
    measured = memory_model(fresh(tiny_ae_dir))
    (path,) = cache.glob("*.json")
    record = json.loads(path.read_text())
    if damage == "truncated":
        path.write_text(path.read_text()[:100])
    elif damage == "other key":
        path.write_text(json.dumps({**record, "key": "0" * 64}))
    elif damage == "negative":
        record["memory_model"]["step"]["per_pixel"] = -1.0
        path.write_text(json.dumps(record))
    else:
        path.write_text("[1, 2]")
    again = memory_model(fresh(tiny_ae_dir))
    assert len(probes) == 2 and again.factor == measured.factor and again.step.per_pixel > 0
    assert probe_cache.read(path, record["key"], measured.factor) == again  # the file holds the new model


def test_off_measures_every_time_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probes: list[str], tiny_ae_dir: Path
) -> None:
    monkeypatch.setenv(probe_cache.CACHE_ENV, "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert probe_cache.cache_folder() is None
    memory_model(fresh(tiny_ae_dir))
    memory_model(fresh(tiny_ae_dir))
    assert len(probes) == 2 and not (tmp_path / "xdg").exists()


def test_default_folder_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(probe_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert probe_cache.cache_folder() == tmp_path / "pca-attack" / "probes"


def test_an_unwritable_folder_costs_only_the_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probes: list[str], tiny_ae_dir: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(probe_cache.CACHE_ENV, str(blocker / "probes"))
    model = memory_model(fresh(tiny_ae_dir))
    assert model.step.per_pixel > 0 and len(probes) == 1 and blocker.read_text() == "not a folder"


READ_BACK = """
import sys
from pca_attack.attack import probe
from pca_attack.attack.memory import memory_model
from pca_attack.models.encoder import load_encoder

def refuse(encoder):
    raise SystemExit("probed again: the stored model was not read")

probe.probe = refuse if sys.argv[2] == "read" else probe.probe
print(memory_model(load_encoder(sys.argv[1], device="cpu", dtype="fp32")).step.per_pixel)
"""


def test_a_second_process_reads_what_the_first_measured(cache: Path, tiny_ae_dir: Path) -> None:
    env = {"PYTHONPATH": str(ROOT), probe_cache.CACHE_ENV: str(cache), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin"}
    runs = [subprocess.run([sys.executable, "-c", READ_BACK, str(tiny_ae_dir), mode], env=env, capture_output=True,
                           text=True, timeout=240) for mode in ("measure", "read")]
    assert [r.returncode for r in runs] == [0, 0], runs[1].stderr[-2000:]
    assert runs[0].stdout == runs[1].stdout and float(runs[1].stdout) > 0


def test_benchmark_reports_a_cold_and_a_warm_call_with_identical_outputs(tiny_ae_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "probe_cache.py"), "--model", str(tiny_ae_dir),
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    (row,) = json.loads(out.read_text())["models"].values()
    assert row["outputs_identical"] and row["cache_files"] == 1
    assert row["cold_s"] > 0 and row["warm_s"] > 0 and row["probe_s"] > 0 and row["read_s"] > 0
