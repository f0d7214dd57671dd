"""Every run that uses the bundled demo model says so and names how to use a real model (issue 11 item 11):
the CLI on stderr, the certificate's notes, and the service's start-up log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pca_attack.models.registry import DEMO_WARNING, uses_demo
from pca_cli import app


def _photo(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_warning_names_real_models() -> None:
    assert "does NOT protect" in DEMO_WARNING and "--model sd15" in DEMO_WARNING
    assert uses_demo(["taef2", "demo"]) and not uses_demo(["sd15"])


def test_protect_with_demo_warns_on_stderr_and_in_the_certificate(tmp_path: Path) -> None:
    src = _photo(tmp_path / "a.png")
    result = CliRunner().invoke(app, ["protect", str(src), "-o", str(tmp_path / "out"), "--steps", "1",
                                      "--model", "demo", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "does NOT protect" in result.output  # CliRunner mixes stderr into output
    report = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert any("does NOT protect" in note for note in report["notes"])


def test_service_start_up_logs_the_demo_warning(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(model="demo", device="cpu", data_dir=tmp_path / "data")
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)):
        pass
    assert any("does NOT protect" in r.getMessage() for r in caplog.records)
