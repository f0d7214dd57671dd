"""Fixtures of the browser suite: a live ``pca-protect serve --model demo`` on 127.0.0.1, Debian's
Chromium driven by Playwright for Python (never ``playwright install``), and test pictures.

Everything here skips with a message when Chromium or the playwright package is absent."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("PCA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
EXIF_ORIENTATION = 0x0112


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    """A running ``pca-protect serve`` subprocess."""

    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_server(root: Path, *extra: str, model: str = "demo") -> Served:
    """``python -m pca_cli serve --model MODEL`` (the bundled demo unless told) on a free port; waits for /readyz."""
    port = _free_port()
    log = root / "server.log"
    env = {**os.environ, "PCA_DTYPE": "fp32", "PCA_LOG_LEVEL": "warning", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pca_cli", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", "--offline", "--data-dir", str(root / "data"), "--log-level", "warning", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    served = Served(f"http://127.0.0.1:{port}", log, proc)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            if httpx.get(served.url + "/readyz", timeout=2).status_code == 200:
                return served
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    served.stop()
    raise RuntimeError(f"server not ready: {log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def sync_playwright_api() -> Any:
    if not Path(CHROMIUM).is_file() and shutil.which(CHROMIUM) is None:
        pytest.skip(f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
                    "(or set PCA_CHROMIUM) to run the browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed: `pip install -e '.[dev]'` to run the browser tests")
    return sync_playwright


@pytest.fixture(scope="session")
def browser(sync_playwright_api: Any) -> Iterator[Any]:
    with sync_playwright_api() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def server(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Started after the browser so a missing Chromium skips before any model is loaded."""
    served = start_server(tmp_path_factory.mktemp("web_server"))
    try:
        yield served
    finally:
        served.stop()


@dataclass
class PageWatch:
    """What a page did: every request URL and every console error or page error."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def open_page(
    browser: Any, url: str, width: int = 1200, height: int = 900, wait_ready: bool = True
) -> tuple[Any, Any, PageWatch]:
    """A fresh context (empty sessionStorage) with the page loaded and, unless told not to wait, its form
    built."""
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    page = context.new_page()
    watch = PageWatch()
    page.on("request", lambda r: watch.requests.append(r.url))
    page.on("console", lambda m: watch.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: watch.errors.append(str(e)))
    page.goto(url + "/")
    if wait_ready:
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    return context, page, watch


# -- pictures -----------------------------------------------------------------------------------------
def _smooth(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """A photo-like picture: random colours on a coarse grid, bicubic-upsampled."""
    coarse = (np.random.RandomState(seed).rand(height // 8 + 2, width // 8 + 2, channels) * 255).astype(np.uint8)
    return np.array(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def png_with_alpha(width: int = 97, height: int = 75) -> bytes:
    """Odd-sized RGBA PNG whose alpha ramps from 40 to 255 left to right."""
    rgba = _smooth(height, width, 4, seed=1)
    rgba[..., 3] = np.linspace(40, 255, width).astype(np.uint8)[None, :]
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def exif_rotated_jpeg(stored_width: int = 96, stored_height: int = 64) -> bytes:
    """JPEG stored landscape with EXIF orientation 6: it displays (and must come back) portrait."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    buf = io.BytesIO()
    Image.fromarray(_smooth(stored_height, stored_width, 3, seed=2)).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def upload(name: str, mime: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "mimeType": mime, "buffer": data}
