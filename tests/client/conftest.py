"""Fixtures of the client suite: a tiny random VAE, a live uvicorn on 127.0.0.1, image trees, a CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from pca_cli.batch import batch_command
from pca_client.manifest import MANIFEST_NAME

SIZE = (24, 32)  # height, width
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 4-block AutoencoderKL saved with save_pretrained (no download)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    folder = tmp_path_factory.mktemp("tiny_vae")
    vae.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """``python -m uvicorn --factory service.app:create_app`` in a subprocess, restartable on one port."""

    def __init__(self, model: Path, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {
            **os.environ,
            "PCA_MODEL": str(model),
            "PCA_DEVICE": "cpu",
            "PCA_DTYPE": "fp32",
            "PCA_DATA_DIR": str(data_dir),
            "PCA_OFFLINE": "true",
            "PCA_WITH_DECODER": "false",  # certificates without round-trip PSNR: faster, same bytes
            "PCA_MAX_BATCH": "1",  # same arithmetic as --local (one image per forward pass)
            "PCA_LOG_LEVEL": "warning",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "service.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def live_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("server")
    server = LiveServer(tiny_model, root / "data", root / "server.log")
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# -- images and trees --------------------------------------------------------------------------------
def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = SIZE) -> bytes:
    pixels = np.random.RandomState(seed).randint(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_images(root: Path, rels: list[str], seed0: int = 0) -> None:
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF"}
    for n, rel in enumerate(rels):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(seed0 + n, fmt[path.suffix.lower()]))


# -- manifest and CLI helpers ------------------------------------------------------------------------
def manifest_lines(dst: Path) -> list[dict]:
    path = dst / MANIFEST_NAME
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def latest(dst: Path) -> dict[str, dict]:
    return {e["source"]: e for e in manifest_lines(dst)}


def visible_files(root: Path) -> set[str]:
    """Files under root, relative, excluding hidden (manifest, temp) files."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".pca-tmp-*")]


def failed_lines(output: str) -> set[str]:
    return {line[len("FAILED ") :].split(": ", 1)[0] for line in output.splitlines() if line.startswith("FAILED ")}


@pytest.fixture(scope="session")
def batch_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(batch_command)
    return app


@pytest.fixture(scope="session")
def run_cli(batch_app: typer.Typer):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def run(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(batch_app, [str(a) for a in args], catch_exceptions=False)

    return run


CLI_SCRIPT = """
import typer
from pca_cli.batch import batch_command
app = typer.Typer()
app.command()(batch_command)
app()
"""
