"""POST /v1/roundtrip: the PNG of D(E(x)) with its PSNR, refused like /v1/protect (key, size, type, memory),
409 without a decoder. Also the Unicode names of uploads (issue 11 item 8b) through /v1/protect and jobs."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.service.conftest import make_settings, png_bytes

KEY = "roundtrip-key-0123456789"


def smooth_png(width: int = 48, height: int = 40, alpha: bool = False) -> bytes:
    """A smooth picture (a VAE reconstructs it far better than noise)."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], -1)
    mode, arr = ("RGBA", np.dstack([rgb, np.full((height, width), 200)])) if alpha else ("RGB", rgb)
    buffer = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_roundtrip_returns_the_decoded_png_at_the_input_size(client: TestClient) -> None:
    r = client.post("/v1/roundtrip", files={"file": ("café 猫.png", smooth_png(alpha=True), "image/png")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    out = Image.open(io.BytesIO(r.content))
    assert out.size == (48, 40) and out.mode == "RGB"
    psnr = float(r.headers["x-pca-roundtrip-psnr-db"])
    assert 0 < psnr < 100  # a random tiny VAE: a real, finite reconstruction error
    assert f"filename*=UTF-8''{quote('café 猫.roundtrip.png')}" in r.headers["content-disposition"]
    again = client.post("/v1/roundtrip", files={"file": ("x.png", smooth_png(alpha=True), "image/png")})
    assert again.content == r.content  # deterministic: the posterior mean, no sampling


def test_roundtrip_of_a_protected_image_differs_from_the_clean_one(client: TestClient) -> None:
    clean = smooth_png()
    protected = client.post("/v1/protect", files={"file": ("a.png", clean, "image/png")}, data={"steps": "3"})
    assert protected.status_code == 200, protected.text
    rt_clean = client.post("/v1/roundtrip", files={"file": ("a.png", clean, "image/png")})
    rt_protected = client.post("/v1/roundtrip", files={"file": ("a.png", protected.content, "image/png")})
    a = np.asarray(Image.open(io.BytesIO(rt_clean.content)), dtype=np.float64)
    b = np.asarray(Image.open(io.BytesIO(rt_protected.content)), dtype=np.float64)
    assert a.shape == b.shape and np.abs(a - b).mean() > 0.5


def test_roundtrip_refuses_bad_uploads_like_protect(client: TestClient) -> None:
    r = client.post("/v1/roundtrip", files={"file": ("notes.txt", b"not an image", "text/plain")})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_image"
    big = b"\x00" * (2 * 1024 * 1024 + 10)
    r = client.post("/v1/roundtrip", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413
    r = client.post("/v1/roundtrip")
    assert r.status_code == 422


def test_roundtrip_over_the_memory_budget_is_refused_before_decoding(client: TestClient) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    saved = engine.max_memory
    engine.max_memory = engine.baseline_memory + 1024  # 1 KiB to spare: no decode fits
    try:
        r = client.post("/v1/roundtrip", files={"file": ("a.png", smooth_png(), "image/png")})
    finally:
        engine.max_memory = saved
    assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
    assert "memory budget" in r.json()["error"]["message"] and "smaller image" in r.json()["error"]["message"]


@pytest.fixture()
def keyed(tiny_vae: Path, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tiny_vae, tmp_path / "data", api_keys=[KEY]))) as c:
        yield c


def test_roundtrip_needs_the_api_key(keyed: TestClient) -> None:
    files = {"file": ("a.png", png_bytes(), "image/png")}
    assert keyed.post("/v1/roundtrip", files=files).status_code == 401
    assert keyed.post("/v1/roundtrip", files=files, headers={"X-API-Key": KEY}).status_code == 200


def test_roundtrip_without_a_decoder_is_409_with_what_to_do(tiny_vae: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_vae, tmp_path / "data", with_decoder=False)
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/models").json()["model"]["decoder_loaded"] is False
        r = c.post("/v1/roundtrip", files={"file": ("a.png", png_bytes(), "image/png")})
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "no_decoder" and "decoder" in error["message"] and "start the server" in error["message"]


def test_unicode_names_survive_protect_and_jobs(client: TestClient) -> None:
    r = client.post("/v1/protect", files={"file": ("café 猫.jpg", png_bytes(32, 32), "image/png")},
                    data={"steps": "1"})
    assert r.status_code == 200, r.text
    header = r.headers["content-disposition"]
    assert header.startswith('attachment; filename="cafe.png"') and quote("café 猫.png") in header
    files = [("files", (name, png_bytes(32, 32, seed=n), "image/png"))
             for n, name in enumerate(["café 猫.jpg", "café 猫.png", "../x/фото.png"])]
    job = client.post("/v1/jobs", files=files, data={"steps": "1"}).json()
    for _ in range(600):
        view = client.get(f"/v1/jobs/{job['id']}").json()
        if view["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert [i["filename"] for i in view["items"]] == ["café 猫.jpg", "café 猫.png", "фото.png"]
    assert [i["output"] for i in view["items"]] == ["café 猫.jpg.png", "café 猫.png", "фото.png"]
    item = client.get(view["items"][0]["download_url"])
    assert quote("café 猫.jpg.png") in item.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/results").content)) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
    assert {"café 猫.jpg.png", "café 猫.jpg.png.json", "café 猫.png", "café 猫.png.json", "фото.png"} <= names
    assert [i["output"] for i in manifest["items"]] == ["café 猫.jpg.png", "café 猫.png", "фото.png"]
