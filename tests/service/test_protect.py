"""POST /v1/protect through TestClient: image and JSON variants, headers, certificate, formats."""

from __future__ import annotations

import base64
import io
import json

from fastapi.testclient import TestClient
from PIL import Image

from tests.service.conftest import png_bytes

FORM = {"steps": "2", "eps": "8"}


def test_protect_returns_same_size_png_with_certificate_headers(client: TestClient) -> None:
    data = png_bytes(40, 24)
    r = client.post("/v1/protect", files={"file": ("../../etc/my photo.jpg", data, "image/png")}, data=FORM)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"] == 'attachment; filename="my photo.png"; filename*=UTF-8\'\'my%20photo.png'
    out = Image.open(io.BytesIO(r.content))
    assert out.size == (40, 24)
    cert = json.loads(base64.urlsafe_b64decode(r.headers["x-pca-certificate"]))
    assert cert["steps"] == 2 and cert["eps"] == 8 and cert["width"] == 40
    assert r.headers["x-pca-budget-ok"] == "true"
    assert float(r.headers["x-pca-linf-255"]) <= 8
    assert float(r.headers["x-pca-kl-clean"]) == cert["kl_clean"]
    assert float(r.headers["x-pca-kl-protected"]) == cert["kl_protected"]


def test_protect_json_variant(client: TestClient) -> None:
    r = client.post(
        "/v1/protect?response=json",
        files={"file": ("a.png", png_bytes(32, 32), "image/png")},
        data={**FORM, "format": "jpeg", "quality": "90", "preset": "pca+"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"certificate", "format", "filename", "image_base64"}
    assert body["format"] == "jpeg" and body["filename"] == "a.jpg"
    assert body["certificate"]["preset"] == "pca+" and body["certificate"]["quality"] == 90
    image = Image.open(io.BytesIO(base64.b64decode(body["image_base64"])))
    assert image.format == "JPEG" and image.size == (32, 32)


def test_protect_is_deterministic_for_a_seed(client: TestClient) -> None:
    data = png_bytes(32, 32, seed=5)
    form = {**FORM, "random_start": "true", "seed": "11"}
    a = client.post("/v1/protect", files={"file": ("a.png", data)}, data=form)
    b = client.post("/v1/protect", files={"file": ("a.png", data)}, data=form)
    assert a.status_code == b.status_code == 200
    assert a.content == b.content


def test_protect_webp_and_rgba(client: TestClient) -> None:
    r = client.post(
        "/v1/protect", files={"file": ("x.png", png_bytes(32, 32, mode="RGBA"))}, data={**FORM, "format": "webp"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(r.content)).mode == "RGBA"


def test_rgba_as_jpeg_is_refused_with_a_reason(client: TestClient) -> None:
    r = client.post(
        "/v1/protect", files={"file": ("x.png", png_bytes(32, 32, mode="RGBA"))}, data={**FORM, "format": "jpeg"}
    )
    assert r.status_code == 422
    assert "alpha" in r.json()["error"]["message"]


def test_steps_over_server_cap(client: TestClient) -> None:
    r = client.post("/v1/protect", files={"file": ("x.png", png_bytes())}, data={"steps": "11"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_parameter"
    assert "max_steps" in r.json()["error"]["message"]

