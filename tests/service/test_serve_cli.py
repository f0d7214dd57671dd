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


@pytest.fixture(autouse=True)
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """serve loads the model before uvicorn starts: here a stand-in records the settings it was asked for
    (uvicorn.run is faked too, so the app's lifespan never runs)."""
    import service.app

    asked: list[Any] = []
    monkeypatch.setattr(service.app, "load_engine", lambda settings: asked.append(settings) or object())
    return asked


def test_serve_builds_settings_and_runs_uvicorn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, loaded: list[Any]
) -> None:
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
    assert loaded == [s]  # the model was loaded once, from the same settings, before uvicorn ran
    assert (seen["host"], seen["port"], seen["workers"]) == ("0.0.0.0", 9001, 1)
    assert s.model == "/models/x" and s.device == "cpu" and s.queue_size == 3 and s.offline is True
    assert s.api_keys == ["key-aaaa-1111"] and s.data_dir == tmp_path.resolve()


def test_serve_passes_the_slow_client_limits_to_uvicorn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    monkeypatch.setenv("PCA_LIMIT_CONCURRENCY", "17")
    monkeypatch.setenv("PCA_HEADER_TIMEOUT_S", "2.5")
    monkeypatch.setenv("PCA_KEEP_ALIVE_TIMEOUT_S", "3")
    monkeypatch.setenv("PCA_MAX_HEADER_BYTES", "9000")
    result = CliRunner().invoke(_app(), ["--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (seen["limit_concurrency"], seen["timeout_keep_alive"], seen["h11_max_incomplete_event_size"]) == (
        17,
        3,
        9000,
    )
    assert issubclass(seen["http"], H11Protocol) and seen["http"].header_timeout_s == 2.5


def test_serve_refuses_bad_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCA_HEADER_TIMEOUT_S", "0")
    result = CliRunner().invoke(_app(), [])
    assert result.exit_code == 2 and "header_timeout_s" in result.output


def test_serve_refuses_bad_settings() -> None:
    result = CliRunner().invoke(_app(), ["--device", "tpu"])
    assert result.exit_code == 2
    assert "device" in result.output


def test_serve_log_level_follows_the_environment_unless_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    monkeypatch.setenv("PCA_LOG_LEVEL", "warning")
    assert CliRunner().invoke(_app(), ["--data-dir", str(tmp_path)]).exit_code == 0
    assert seen["log_level"] == "warning"
    assert CliRunner().invoke(_app(), ["--data-dir", str(tmp_path), "--log-level", "debug"]).exit_code == 0
    assert seen["log_level"] == "debug"
