"""The /v1/analysis routes answer with the library's numbers and turn bad input into 422."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pca_attack.analysis import linear_cvae, linear_hvae, linear_vae, neural_collapse_metrics, simplex_etf
from service.routes.analysis import router


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(router, prefix="/v1")
    return TestClient(app)


def _close(got: dict, want: dict) -> None:
    for key, value in want.items():
        if isinstance(value, list) and value and isinstance(value[0], float):
            np.testing.assert_allclose(got[key], value, rtol=1e-12, err_msg=key)
        elif isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert got[key] == value, key


def test_linear_vae_matches_library(client: TestClient) -> None:
    X = np.random.default_rng(0).normal(size=(60, 3)) * [2.0, 1.0, 0.3]
    r = client.post("/v1/analysis/linear-vae", json={"X": X.tolist(), "beta": 0.8, "eta_enc": 1.2})
    assert r.status_code == 200, r.text
    _close(r.json(), linear_vae(X, beta=0.8, eta_enc=1.2).to_dict())


def test_linear_vae_fixed_sigma(client: TestClient) -> None:
    body = {"Sxx": np.diag([3.0, 0.5]).tolist(), "sigma": [0.4, 0.9]}
    r = client.post("/v1/analysis/linear-vae", json=body)
    assert r.status_code == 200, r.text
    _close(r.json(), linear_vae(Sxx=np.diag([3.0, 0.5]), sigma=[0.4, 0.9]).to_dict())


def test_linear_cvae_matches_library(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(80, 2)), rng.normal(size=(80, 2)) * 1.5
    r = client.post("/v1/analysis/linear-cvae", json={"X": X.tolist(), "Y": Y.tolist(), "beta": 0.5, "center": True})
    assert r.status_code == 200, r.text
    want = linear_cvae(X, Y, beta=0.5, center=True).to_dict()
    _close(r.json(), {k: v for k, v in want.items() if k not in ("U2", "E")})
    np.testing.assert_allclose(r.json()["E"], want["E"], rtol=1e-12)


def test_linear_hvae_matches_library(client: TestClient) -> None:
    body = {"Sxx": np.diag([4.0, 1.0, 0.2]).tolist(), "beta1": 1.5, "beta2": 0.7, "sigma1": 0.8}
    r = client.post("/v1/analysis/linear-hvae", json=body)
    assert r.status_code == 200, r.text
    _close(r.json(), linear_hvae(Sxx=np.diag([4.0, 1.0, 0.2]), beta1=1.5, beta2=0.7, sigma1=0.8).to_dict())


def test_neural_collapse_matches_library(client: TestClient) -> None:
    M = simplex_etf(3, 4)
    labels = np.repeat(np.arange(3), 4)
    H = M[labels] + np.random.default_rng(0).normal(size=(12, 4)) * 0.1
    r = client.post("/v1/analysis/neural-collapse", json={"H": H.tolist(), "labels": labels.tolist(), "W": M.tolist()})
    assert r.status_code == 200, r.text
    _close(r.json(), neural_collapse_metrics(H, labels, M).to_dict())


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("linear-vae", {"Sxx": [[1.0, 0.0], [0.0, -1.0]]}, "not positive semi-definite"),
        ("linear-vae", {"Sxx": [[1.0]], "beta": 0}, "must be between 1e-12 and 1e+12"),
        ("linear-vae", {"Sxx": [[1.0, 2.0], [3.0]]}, "rectangular"),
        ("linear-cvae", {"X": [[1.0], [2.0]], "Y": [[1.0]]}, "same number of rows"),
        ("linear-cvae", {"Sxx": [[0.0]], "Syy": [[1.0]], "Sxy": [[0.0]]}, "singular"),
        ("linear-hvae", {"Sxx": [[1.0]], "sigma1": -1}, "must be between 1e-12 and 1e+12"),
        ("neural-collapse", {"H": [[1.0], [2.0]], "labels": [0, 0]}, "at least 2 classes"),
        ("linear-vae", {"X": [[0.0] * 10] * 10_001}, "at most 100000 are allowed"),
        ("linear-vae", {"Sxx": [[0.0] * 513]}, "at most 512"),
        ("linear-vae", {"Sxx": [[1.0]], "surprise": 1}, "Extra inputs"),
    ],
)
def test_bad_inputs_are_422(client: TestClient, path: str, body: dict, fragment: str) -> None:
    r = client.post(f"/v1/analysis/{path}", json=body)
    assert r.status_code == 422
    assert fragment in r.text


def test_openapi_operation_ids(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ops = {p: spec["paths"][p]["post"]["operationId"] for p in spec["paths"]}
    assert ops == {
        "/v1/analysis/linear-vae": "analysis-linear-vae",
        "/v1/analysis/linear-cvae": "analysis-linear-cvae",
        "/v1/analysis/linear-hvae": "analysis-linear-hvae",
        "/v1/analysis/neural-collapse": "analysis-neural-collapse",
    }
    props = spec["components"]["schemas"]["LinearVAEResponse"]["properties"]
    assert all("description" in v for v in props.values())
