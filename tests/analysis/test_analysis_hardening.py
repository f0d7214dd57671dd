"""Issue 11 items 1-2 on the /v1/analysis routes: unbounded labels, NaN/Infinity/overflow, double-precision range.

Requests are sent as raw bytes with ``content-type: application/json`` (what an attacker sends), through the
app's own error handlers.  Every numeric field of every request model is enumerated from the models, so a new
field is covered without editing this file.
"""

from __future__ import annotations

import itertools
import json
import tracemalloc
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from pca_attack.analysis import (
    AnalysisInputError,
    NumericRangeError,
    linear_cvae,
    linear_hvae,
    linear_vae,
    neural_collapse_metrics,
    perturbed_collapse,
)
from service.errors import MAX_LISTED_ERRORS, install_error_handlers
from service.routes.analysis import router
from service.schemas_analysis import (
    MAX_CLASSES,
    MAX_ENTRY,
    MAX_SCALE,
    MIN_SCALE,
    LinearCVAERequest,
    LinearHVAERequest,
    LinearVAERequest,
    NeuralCollapseRequest,
)

ROUTES: dict[str, type[BaseModel]] = {
    "linear-vae": LinearVAERequest,
    "linear-cvae": LinearCVAERequest,
    "linear-hvae": LinearHVAERequest,
    "neural-collapse": NeuralCollapseRequest,
}
BAD_TOKENS = ["NaN", "Infinity", "-Infinity", "1e309", "-1e309"]
_HOLE = "__BAD_NUMBER__"


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router, prefix="/v1")
    return TestClient(app, raise_server_exceptions=False)


def _strict_json(text: str) -> Any:
    """Parse as RFC 8259 JSON: NaN/Infinity in a response body are a failure."""

    def refuse(token: str) -> None:
        raise AssertionError(f"non-finite {token} in the response body")

    return json.loads(text, parse_constant=refuse)


def _post_raw(client: TestClient, path: str, raw: bytes) -> Any:
    return client.post(f"/v1/analysis/{path}", content=raw, headers={"content-type": "application/json"})


def _body_with_hole(route: str, field: str) -> str:
    """A JSON body with ``field`` present and one of its numbers replaced by the placeholder."""
    base: dict[str, Any] = {"H": [[1.0, 0.0], [0.0, 1.0]], "labels": [0, 1]} if route == "neural-collapse" else {}
    if field in ("X", "Y", "Sxx", "Syy", "Sxy", "H", "W"):
        value: Any = [[1.0, _HOLE], [0.0, 1.0]]
    elif field in ("labels", "b"):
        value = [0, _HOLE]
    elif field == "sigma":
        value = [1.0, _HOLE]
    else:
        value = _HOLE
    return json.dumps(base | {field: value})


NUMERIC_FIELDS = [
    (route, name)
    for route, model in ROUTES.items()
    for name, info in model.model_fields.items()
    if any(t in str(info.annotation) for t in ("float", "int", "Finite", "Positive", "Label"))
]


def test_every_numeric_field_is_enumerated() -> None:
    """The enumeration is not empty and includes matrices, vectors and scalars of every route."""
    fields = set(NUMERIC_FIELDS)
    expected = {("linear-vae", "Sxx"), ("linear-vae", "sigma"), ("linear-hvae", "sigma2"), ("linear-cvae", "beta")}
    assert expected <= fields
    assert {("neural-collapse", f) for f in ("H", "labels", "W", "b")} <= fields
    assert {route for route, _ in NUMERIC_FIELDS} == set(ROUTES)


@pytest.mark.parametrize("token", BAD_TOKENS)
@pytest.mark.parametrize(("route", "field"), NUMERIC_FIELDS)
def test_non_finite_number_in_any_field_is_422(client: TestClient, route: str, field: str, token: str) -> None:
    raw = _body_with_hole(route, field).replace(f'"{_HOLE}"', token).encode()
    r = _post_raw(client, route, raw)
    assert r.status_code == 422, r.text
    body = _strict_json(r.text)
    assert field in body["error"]["message"] and body["error"]["code"] == "invalid_parameter"
    assert len(r.content) < 2000


def test_many_bad_numbers_give_a_bounded_error_list(client: TestClient) -> None:
    raw = json.dumps({"X": [[_HOLE] * 100] * 100}).replace(f'"{_HOLE}"', "NaN").encode()
    r = _post_raw(client, "linear-vae", raw)
    assert r.status_code == 422
    detail = _strict_json(r.text)["error"]["detail"]
    assert len(detail) == MAX_LISTED_ERRORS + 1 and "9980 more errors" in detail[-1]["msg"]


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [  # the requests of issue 11 item 2: 500s before the fix
        ("linear-hvae", {"Sxx": [[1.0]], "sigma1": 1e300, "sigma2": 1e300}, "sigma1"),
        ("linear-vae", {"Sxx": [[1.0]], "eta_dec": 1e300}, "eta_dec"),
        ("linear-hvae", {"Sxx": [[1.0]], "sigma1": 1e-300}, "sigma1"),
        ("linear-vae", {"Sxx": [[1e300]]}, "Sxx"),
    ],
)
def test_out_of_range_scalars_are_422_with_a_sentence(client: TestClient, route: str, body: dict, field: str) -> None:
    r = client.post(f"/v1/analysis/{route}", json=body)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert field in message and "must be between" in message


@pytest.mark.parametrize(
    ("fn", "kwargs"),
    [  # the library itself (no schema bounds in front of it) names the problem and what to do
        (linear_hvae, {"Sxx": [[1.0]], "sigma1": 1e300, "sigma2": 1e300}),
        (linear_vae, {"Sxx": [[1.0]], "eta_dec": 1e300}),
        (linear_hvae, {"Sxx": [[1.0]], "sigma1": 1e-300}),
        (linear_vae, {"Sxx": [[1e308]]}),
        (linear_cvae, {"X": [[1e200], [1.0]], "Y": [[1.0], [2.0]]}),
        (neural_collapse_metrics, {"H": [[1e200, 0.0], [0.0, 1e200]], "labels": [0, 1]}),
    ],
)
def test_library_turns_overflow_into_numeric_range_error(fn: Any, kwargs: dict) -> None:
    with pytest.raises(NumericRangeError, match="rescale the input"):
        fn(**kwargs)


_CORNERS = [MIN_SCALE, MAX_SCALE]
_ENTRIES = [MAX_ENTRY, -MAX_ENTRY, 1e-100, 5e-324]


def _corner_requests() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for e, beta, ee, ed in itertools.product(_ENTRIES, _CORNERS, _CORNERS, _CORNERS):
        scales = {"beta": beta, "eta_enc": ee, "eta_dec": ed}
        out.append(("linear-vae", {"X": [[e, 1.0], [1.0, e], [2.0, 0.5]]} | scales))
        out.append(("linear-vae", {"Sxx": [[abs(e), 0.0], [0.0, 1.0]], "sigma": beta} | scales))
        out.append(("linear-cvae", {"X": [[e], [1.0], [2.0]], "Y": [[1.0], [e], [3.0]]} | scales))
        out.append(("neural-collapse", {"H": [[e, 0.0], [0.0, e], [e, e]], "labels": [0, 1, 2], "b": [e, 0, 1]}))
    for e, s1, s2, b2 in itertools.product(_ENTRIES, _CORNERS, [*_CORNERS, None], _CORNERS):
        out.append(("linear-hvae", {"Sxx": [[abs(e), 0.0], [0.0, 1.0]], "sigma1": s1, "sigma2": s2, "beta2": b2}))
    return out


def test_schema_valid_extremes_never_give_5xx(client: TestClient) -> None:
    """At the declared bounds every route answers 200 with finite numbers, or a 422 that says why."""
    codes = []
    for route, body in _corner_requests():
        r = client.post(f"/v1/analysis/{route}", json=body)
        assert r.status_code in (200, 422), (route, body, r.text)
        _strict_json(r.text)
        codes.append(r.status_code)
    assert 200 in codes and 422 in codes  # both outcomes are exercised


def test_issue_request_with_a_huge_label_is_short_422_without_allocation(client: TestClient) -> None:
    """Issue 11 item 1: ``labels: [0, 1000000000]`` OOM-killed the server."""
    raw = b'{"H": [[1,0],[0,1]], "labels": [0, 1000000000]}'
    tracemalloc.start()
    try:
        r = _post_raw(client, "neural-collapse", raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 422 and len(r.content) < 1000
    assert f"less than {MAX_CLASSES}" in r.json()["error"]["message"]
    assert peak < 20_000_000  # bytes; building set(range(1e9)) needed tens of GB


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ([0, MAX_CLASSES - 1, 1], "only 3 samples"),  # within the schema cap but C > N
        ([0, 2, 2], "1 classes without samples: 1"),  # a gap
        ([0, -1, 1], "greater than or equal to 0"),
        ([0, 1.5, 1], "integer"),
        ([0, 1.0, 1], "integer"),
        ([0, True, 1], "integer"),
        ([0, 1], "shape (N,) = (3,)"),
    ],
)
def test_bad_labels_are_422(client: TestClient, labels: list, fragment: str) -> None:
    r = client.post("/v1/analysis/neural-collapse", json={"H": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], "labels": labels})
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]["message"]


def test_library_labels_bounded_by_samples_and_message_is_short() -> None:
    H = np.random.default_rng(0).normal(size=(1001, 2))
    labels = np.r_[np.zeros(1000, dtype=int), 999]  # 998 classes without samples
    with pytest.raises(AnalysisInputError) as info:
        neural_collapse_metrics(H, labels)
    assert "998 classes without samples: 1, 2, 3" in str(info.value) and len(str(info.value)) < 300
    tracemalloc.start()
    try:
        for bad in ([0, 10**9], [0, 2**62], [0.0, 1e18]):
            with pytest.raises(AnalysisInputError, match="only 2 samples"):
                neural_collapse_metrics([[1.0, 0.0], [0.0, 1.0]], bad)
            with pytest.raises(AnalysisInputError, match="only 2 samples"):
                perturbed_collapse([[1.0], [0.0]], [[1.0], [0.0]], [0, 1], perturbed_labels=bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_nc4_memory_is_chunked() -> None:
    """NC4 once built an (N, C, d) array; now chunks keep it near the size of the inputs."""
    rng = np.random.default_rng(0)
    C, per, d = 400, 50, 8
    labels = np.repeat(np.arange(C), per)
    H = rng.normal(size=(C * per, d)) + 5 * rng.normal(size=(C, d))[labels]
    W = rng.normal(size=(C, d))
    tracemalloc.start()
    try:
        res = neural_collapse_metrics(H, labels, W)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.nc4 is not None and 0.0 <= res.nc4 <= 1.0
    assert peak < 0.25 * (C * per) * C * d * 8  # well under the (N, C, d) float64 array (1.0 GB here)
