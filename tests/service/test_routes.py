"""Diagnostics, models, health, readiness, metrics and API keys through TestClient."""

from __future__ import annotations

import io
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import make_settings, png_bytes


def test_diagnostics_single(client: TestClient) -> None:
    r = client.post("/v1/diagnostics", files={"file": ("a.png", png_bytes(32, 24))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["protected"] is None and body["latent_drift"] is None
    stats = body["image"]
    assert stats["latent_shape"] == [4, 3, 4]
    assert set(stats["kl_to_target"]) == {"pca-", "pca+", "pca-var"}
    assert len(stats["channels"]) == 4 and "var_mean" in stats["channels"][0]
    assert body["decoder_loaded"] is True and stats["roundtrip_psnr_db"] is not None


def test_diagnostics_pair(client: TestClient) -> None:
    clean = png_bytes(32, 32, seed=1)
    protected = client.post("/v1/protect", files={"file": ("a.png", clean)}, data={"steps": "3"}).content
    r = client.post("/v1/diagnostics", files={"file": ("a.png", clean), "protected": ("p.png", protected)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert 0 < body["linf_255"] <= 16 and body["latent_drift"] > 0
    assert body["protected"]["kl_prior"] is not None
    r = client.post("/v1/diagnostics", files={"file": ("a.png", clean), "protected": ("p.png", png_bytes(40, 32))})
    assert r.status_code == 422 and r.json()["error"]["code"] == "size_mismatch"
    r = client.post("/v1/diagnostics", files={"file": ("a.png", clean), "protected": ("p.png", b"<html>")})
    assert r.status_code == 415 and r.json()["error"]["message"].startswith("protected")


def test_diagnostics_pair_with_redteam(client: TestClient) -> None:
    clean = png_bytes(32, 24)
    protected = client.post("/v1/protect", files={"file": ("a.png", clean)}, data={"steps": "2"}).content
    r = client.post(
        "/v1/diagnostics",
        files={"file": ("a.png", clean), "protected": ("p.png", protected)},
        data={"redteam": "true"},
    )
    assert r.status_code == 200, r.text
    rows = {row["transform"]: row for row in r.json()["redteam"]["rows"]}
    assert {"none", "jpeg-75", "resize-0.5", "cleaner"} <= set(rows)
    assert rows["none"]["retention"] == 1.0
    alone = client.post("/v1/diagnostics", files={"file": ("a.png", clean)}, data={"redteam": "true"})
    assert alone.status_code == 422 and "pair" in alone.json()["error"]["message"]


def test_models(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["model"]["latent_channels"] == 4 and body["model"]["device"] == "cpu"
    assert [p["name"] for p in body["presets"]] == ["pca-", "pca+", "adaptive", "pca-var"]
    assert all(p["summary"] for p in body["presets"])
    assert body["limits"]["max_steps"] == 10 and body["default_preset"] == "pca-"
    assert body["warning"] is None  # a real encoder's folder (here a tiny random one); demo: see the next test


def test_models_warns_when_the_demo_model_is_loaded(tmp_path: Path) -> None:
    from pca_attack.models.registry import DEMO_WARNING

    with TestClient(create_app(make_settings(tmp_path, tmp_path / "data", model="demo"))) as demo:
        assert demo.get("/v1/models").json()["warning"] == DEMO_WARNING


def test_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "detail": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["detail"]["worker_alive"]
    client.post("/v1/protect", files={"file": ("a.png", png_bytes())}, data={"steps": "2"})
    text = client.get("/metrics").text
    for name in (
        "pca_http_requests_total",
        "pca_http_request_duration_seconds",
        "pca_engine_queue_depth",
        "pca_images_protected_total",
        "pca_attack_steps_per_second",
        "pca_attack_steps_total",
    ):
        assert name in text
    assert 'route="/v1/protect"' in text
    assert 'pca_images_protected_total{format="png"} 1.0' in text


def test_readyz_is_503_before_the_model_loads(tiny_vae: Path, tmp_path: Path) -> None:
    app = create_app(make_settings(tiny_vae, tmp_path / "d"))
    client = TestClient(app)  # no `with`: the lifespan (model load) has not run
    r = client.get("/readyz")
    assert r.status_code == 503 and "Retry-After" in r.headers
    r = client.post("/v1/protect", files={"file": ("a.png", png_bytes())})
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


def test_api_keys(tiny_vae: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_vae, tmp_path / "d", api_keys=["secret-key-1"])
    with TestClient(create_app(settings)) as client:
        for headers in ({}, {"X-API-Key": "wrong-key-000"}, {"Authorization": "Bearer nope-nope-nope"}):
            r = client.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = client.post("/v1/protect", files={"file": ("a.png", png_bytes())})
        assert r.status_code == 401
        assert client.get("/v1/models", headers={"X-API-Key": "secret-key-1"}).status_code == 200
        assert client.get("/v1/models", headers={"Authorization": "Bearer secret-key-1"}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.put("/v1/protect")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_cancelled_request_frees_its_slot(client: TestClient) -> None:
    from pca_attack import AttackConfig, decode_image
    from service.worker import ProtectRequest

    worker = client.app.state.worker  # type: ignore[attr-defined]
    image = decode_image(io.BytesIO(png_bytes(64, 64)).getvalue())
    slow = ProtectRequest(image, AttackConfig(steps=10))
    futures = worker.submit_many([slow] * 4)
    waiting = [f for f in futures if f.cancel()]
    assert waiting, "some tasks should still be waiting"
    assert worker.depth <= 4 - len(waiting)
    for f in futures:
        if not f.cancelled():
            f.result(timeout=60)
    assert worker.depth == 0


def test_request_timeout_is_503_with_retry_after(tiny_vae: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_vae, tmp_path / "d", request_timeout_s=0.01, max_steps=10)
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/protect", files={"file": ("a.png", png_bytes(128, 128))}, data={"steps": "10"})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "timeout" and int(r.headers["retry-after"]) >= 1
        assert client.get("/readyz").status_code == 200
