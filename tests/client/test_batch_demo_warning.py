"""``pca-protect batch --server`` against a live service that runs the bundled demo VAE warns that the outputs
protect nothing real (the service's GET /v1/models ``warning``), and still does the work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.client.conftest import LiveServer, visible_files, write_images


def test_batch_against_a_demo_server_warns(tmp_path: Path, run_cli: Any) -> None:
    server = LiveServer(Path("demo"), tmp_path / "data", tmp_path / "server.log")
    server.start()
    try:
        server.wait_ready()
        write_images(tmp_path / "src", ["a.png"])
        result = run_cli(tmp_path / "src", tmp_path / "dst", "--server", server.url, "--steps", "1")
        assert result.exit_code == 0, result.output
        assert f"warning: the service at {server.url} says" in result.output and "does NOT protect" in result.output
        assert "a.png" in visible_files(tmp_path / "dst")
    finally:
        server.stop()
