"""openapi.yaml at the repository root is what the app serves: a test fails when they drift."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]


def _exporter():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("export_openapi", ROOT / "scripts" / "export_openapi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_openapi_yaml_matches_the_app() -> None:
    exporter = _exporter()
    document = exporter.openapi_document()
    on_disk = yaml.safe_load((ROOT / "openapi.yaml").read_text(encoding="utf-8"))
    assert on_disk == document, "openapi.yaml drifted from the app: run python scripts/export_openapi.py"
    assert (ROOT / "openapi.yaml").read_text(encoding="utf-8") == exporter.render(document)


def test_operation_ids_are_clean(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    ids = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    for expected in (
        "protect-image",
        "jobs-create",
        "jobs-get",
        "jobs-results",
        "jobs-item",
        "jobs-delete",
        "diagnostics-posterior",
        "models-list",
        "health-live",
        "health-ready",
        "health-metrics",
    ):
        assert expected in ids
    assert all("_" not in i for i in ids), ids
    assert json.dumps(document)  # serialisable
