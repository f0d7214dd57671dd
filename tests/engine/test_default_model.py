"""The default model is TAEF2 (``registry.DEFAULT_MODEL``): the CLI, the service and the library load it when no
model is named; where it is neither downloaded nor downloadable, each says so in one line, with the fix.

The tests that run TAEF2 use the real weights through the ``taef2_by_name`` fixture (skipped where
``../shared/models/taef2`` is absent); the refusals need no weights at all.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pca_cli import app

REPO = Path(__file__).resolve().parents[2]


def _photo(path: Path) -> Path:
    from skimage import data

    Image.fromarray(data.chelsea()[100:164, 150:246]).save(path)  # 64x96, a real photo's texture
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_protect_without_model_runs_taef2_and_no_demo_warning(taef2_by_name: str, tmp_path: Path) -> None:
    src = _photo(tmp_path / "a.png")
    result = CliRunner().invoke(app, ["protect", str(src), "-o", str(tmp_path / "out"), "--steps", "3",
                                      "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "does NOT protect" not in result.output
    report = json.loads((tmp_path / "out" / "a.png.json").read_text())
    assert report["model"] == "taef2" and report["budget_ok"]
    assert not any("does NOT protect" in note for note in report["notes"])
    protected = np.asarray(Image.open(tmp_path / "out" / "a.png"), dtype=np.int16)
    original = np.asarray(Image.open(src), dtype=np.int16)
    assert protected.shape == original.shape and 0 < np.abs(protected - original).max() <= 16


def test_library_and_service_defaults_load_taef2_with_its_fast_modes(taef2_by_name: str, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from pca_attack import Engine
    from pca_attack.fast.weights import load_generator, shipped_generator
    from service.app import create_app
    from service.settings import Settings

    assert Engine.from_spec(device="cpu", offline=True).encoder.name == "taef2"
    settings = Settings(data_dir=tmp_path / "data", device="cpu", dtype="fp32", offline=True)
    with TestClient(create_app(settings)) as client:
        models = client.get("/v1/models").json()
    shipped = shipped_generator("taef2")
    assert shipped is not None
    assert models["model"]["name"] == "taef2" and models["warning"] is None
    assert models["generator_id"] == load_generator(str(shipped)).generator_id  # fast modes out of the box


def test_protect_without_the_weights_offline_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCA_MODELS_DIR", str(tmp_path / "empty"))
    src = _photo(tmp_path / "a.png")
    result = CliRunner().invoke(app, ["protect", str(src), "-o", str(tmp_path / "out"), "--offline",
                                      "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "pca-protect models download taef2" in message and "--model demo" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_serve_without_the_weights_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    """The model is loaded before uvicorn starts: no traceback, no half-started server."""
    env = {**os.environ, "PCA_MODELS_DIR": str(tmp_path / "empty"), "PYTHONPATH": str(REPO)}
    env.pop("PCA_MODEL", None)
    done = subprocess.run(
        [sys.executable, "-m", "pca_cli", "serve", "--offline", "--device", "cpu", "--port", str(_free_port()),
         "--data-dir", str(tmp_path / "data")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "startup failed" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pca-protect models download taef2" in errors[0] and "--model demo" in errors[0]
