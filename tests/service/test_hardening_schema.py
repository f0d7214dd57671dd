"""Issue 11 item 9 (and what schemathesis --checks all found): the OpenAPI document and the routes agree.
A 405 lists every method of its path in ``Allow``; multipart schemas carry no null (a form cannot), files
are non-empty, a job takes 1..max_files_per_job files and at most max_steps steps; empty matrices, empty
files and missing ``files`` are refused with a message, as the schema says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import make_settings, png_bytes

FORM_BODIES = ("protect-image", "jobs-create", "diagnostics-posterior")


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("openapi"), max_files_per_job=7, max_steps=33)
    return create_app(settings).openapi()


def _form_body(document: dict[str, Any], operation_id: str) -> dict[str, Any]:
    for operations in document["paths"].values():
        for op in operations.values():
            if op.get("operationId") == operation_id:
                ref = op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
                return document["components"]["schemas"][ref.rsplit("/", 1)[-1]]  # type: ignore[no-any-return]
    raise AssertionError(f"no operation {operation_id}")


@pytest.mark.parametrize("operation_id", FORM_BODIES)
def test_multipart_schemas_have_no_null_and_no_empty_file(document: dict[str, Any], operation_id: str) -> None:
    body = _form_body(document, operation_id)
    for name, prop in body["properties"].items():
        assert {"type": "null"} not in prop.get("anyOf", []), f"{operation_id}.{name} is nullable in a form"
        assert prop.get("default", "x") is not None, f"{operation_id}.{name} has a null default"
        if prop.get("type") == "string" and "contentMediaType" in prop:
            assert prop["minLength"] == 1, f"{operation_id}.{name} allows an empty file"


def test_job_schema_states_the_server_limits(document: dict[str, Any]) -> None:
    body = _form_body(document, "jobs-create")
    files = body["properties"]["files"]
    assert "files" in body["required"]
    assert (files["minItems"], files["maxItems"], files["items"]["minLength"]) == (1, 7, 1)
    assert body["properties"]["steps"]["maximum"] == 33
    assert _form_body(document, "protect-image")["properties"]["steps"]["maximum"] == 33


def test_jobs_create_links_to_the_job_routes(document: dict[str, Any]) -> None:
    links = document["paths"]["/v1/jobs"]["post"]["responses"]["202"]["links"]
    assert {link["operationId"] for link in links.values()} == {"jobs-get", "jobs-results", "jobs-item", "jobs-delete"}
    assert all(link["parameters"]["job_id"] == "$response.body#/id" for link in links.values())


def test_every_path_answers_405_with_all_its_methods(client: TestClient) -> None:
    for template, operations in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        path = re.sub(r"\{index\}", "0", re.sub(r"\{[^}]+\}", "0" * 32, template))
        documented = {m.upper() for m in operations}
        for method in ("OPTIONS", "PUT", "PATCH"):
            if method in documented:
                continue
            r = client.request(method, path)
            assert r.status_code == 405, (method, path, r.status_code)
            allowed = {m.strip() for m in r.headers["allow"].split(",")}
            assert allowed == documented, (method, path, allowed)
            assert r.json()["error"]["code"] == "method_not_allowed"


def test_options_on_a_job_lists_delete(client: TestClient) -> None:
    r = client.options("/v1/jobs/" + "a" * 32)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"


def test_empty_file_missing_files_and_null_text_are_refused_with_a_message(client: TestClient) -> None:
    empty = client.post("/v1/protect", files={"file": ("e.png", b"", "image/png")}, data={"steps": "1"})
    assert empty.status_code == 415 and "empty" in empty.json()["error"]["message"]
    no_files = client.post("/v1/jobs", data={"steps": "1"})
    assert no_files.status_code == 422 and "files" in no_files.json()["error"]["message"]
    null_text = client.post(
        "/v1/protect", files={"file": ("a.png", png_bytes(), "image/png")}, data={"steps": "1", "intensity": "null"}
    )
    assert null_text.status_code == 422 and "intensity" in null_text.json()["error"]["message"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("linear-vae", {"X": []}),
        ("linear-vae", {"X": [[]]}),
        ("linear-vae", {"Sxx": []}),
        ("linear-cvae", {"X": [[1.0]], "Y": []}),
        ("linear-hvae", {"Sxx": [[]]}),
        ("neural-collapse", {"H": [], "labels": [0, 1]}),
        ("neural-collapse", {"H": [[]], "labels": [0, 1]}),
    ],
)
def test_empty_matrices_are_refused_as_the_schema_says(
    client: TestClient, document: dict[str, Any], route: str, body: dict[str, Any]
) -> None:
    r = client.post(f"/v1/analysis/{route}", json=body)
    assert r.status_code == 422, r.text
    assert "at least 1" in r.json()["error"]["message"]
    schema = _request_schema(document, f"/v1/analysis/{route}")
    for name, value in body.items():
        if value not in ([], [[]]):
            continue
        prop = next(o for o in schema["properties"][name].get("anyOf", [schema["properties"][name]]) if "items" in o)
        rows = prop["minItems"] if value == [] else prop["items"]["minItems"]
        assert rows == 1, (route, name)


def _request_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    ref = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return document["components"]["schemas"][ref.rsplit("/", 1)[-1]]  # type: ignore[no-any-return]


def test_schema_follows_a_servers_settings(tiny_vae: Path, tmp_path: Path) -> None:
    doc = create_app(make_settings(tiny_vae, tmp_path / "d", max_files_per_job=3)).openapi()
    assert _form_body(doc, "jobs-create")["properties"]["files"]["maxItems"] == 3
