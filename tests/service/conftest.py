"""Fixtures of the service tests: a tiny random KL-VAE on disk, settings around it, a TestClient,
small images, and a real uvicorn server in a subprocess."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    """Tiny models on a shared 2-core box: one intra-op thread is ~30x faster than oversubscribing."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random diffusers AutoencoderKL (f = 8, 4 latent channels), saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    folder = tmp_path_factory.mktemp("tiny_vae")
    vae.save_pretrained(folder)
    return folder


def make_settings(tiny_vae: Path, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model": str(tiny_vae),
        "device": "cpu",
        "dtype": "fp32",
        "offline": True,
        "data_dir": data_dir,
        "max_steps": 10,
        "max_upload_bytes": 2 * 1024 * 1024,
        "max_pixels": 1_000_000,
        "queue_size": 8,
        "max_batch": 4,
        "request_timeout_s": 60,
        "cleanup_interval_s": 0.5,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture()
def settings(tiny_vae: Path, tmp_path: Path) -> Settings:
    return make_settings(tiny_vae, tmp_path / "data")


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def png_bytes(width: int = 32, height: int = 24, mode: str = "RGB", seed: int = 0, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    image = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving ``create_app`` in a subprocess, settings passed through PCA_* variables."""

    def __init__(self, tiny_vae: Path, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PCA_MODEL": str(tiny_vae),
            "PCA_DEVICE": "cpu",
            "PCA_DTYPE": "fp32",
            "PCA_OFFLINE": "true",
            "PCA_DATA_DIR": str(data_dir),
            "PCA_MAX_STEPS": "10",
            "PCA_MAX_PIXELS": "1000000",
            "PCA_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
            "PCA_CLEANUP_INTERVAL_S": "0.5",
            "PCA_LOG_LEVEL": "warning",
            "OMP_NUM_THREADS": "1",
            **env,
        }
        self.log = data_dir.parent / f"uvicorn-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> LiveServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "service.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"uvicorn did not become ready:\n{self.log.read_text()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no shutdown handler runs
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def live_server(tiny_vae: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real server for a test module: small queue (2), so overload is easy to provoke."""
    data = tmp_path_factory.mktemp("live") / "data"
    server = LiveServer(tiny_vae, data, PCA_QUEUE_SIZE="2", PCA_MAX_BATCH="2").start()
    try:
        yield server
    finally:
        server.stop()
