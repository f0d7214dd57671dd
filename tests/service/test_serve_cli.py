"""``serve_command`` (registered by the CLI as ``pca-protect serve``): options become validated Settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from pca_cli.serve import serve_command


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(serve_command)
    return app


def test_serve_builds_settings_and_runs_uvicorn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    seen: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        seen["settings"] = app.state.settings
        seen.update(kwargs)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    result = CliRunner().invoke(
        _app(),
        [
            "--host",
            "0.0.0.0",
            "--port",
            "9001",
            "--model",
            "/models/x",
            "--device",
            "cpu",
            "--dtype",
            "fp32",
            "--data-dir",
            str(tmp_path),
            "--api-key",
            "key-aaaa-1111",
            "--queue-size",
            "3",
            "--offline",
        ],
    )
    assert result.exit_code == 0, result.output
    s = seen["settings"]
    assert (seen["host"], seen["port"], seen["workers"]) == ("0.0.0.0", 9001, 1)
    assert s.model == "/models/x" and s.device == "cpu" and s.queue_size == 3 and s.offline is True
    assert s.api_keys == ["key-aaaa-1111"] and s.data_dir == tmp_path.resolve()


def test_serve_refuses_bad_settings() -> None:
    result = CliRunner().invoke(_app(), ["--device", "tpu"])
    assert result.exit_code == 2
    assert "device" in result.output
