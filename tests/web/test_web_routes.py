"""The page's files as the app serves them (no browser, no model): routes, headers, no outside URLs,
only public API paths in the scripts, and the URL `pca-protect serve` prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pca_cli.serve import page_url
from service.app import create_app
from service.routes.web import WEB_DIR
from service.settings import Settings

PUBLIC_API = re.compile(r"^/(v1/(models|jobs|protect|diagnostics|roundtrip)\b|openapi\.json$)")


@pytest.fixture()
def client(tmp_path: Path) -> TestClient:
    """The app without its lifespan: the page needs no model."""
    return TestClient(create_app(Settings(data_dir=tmp_path, model="demo")))


def test_index_and_files_are_served_with_a_self_only_policy(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/web/app.js">' in r.text
    policy = r.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "http" not in policy
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css"), ("api.js", "text/javascript")):
        r = client.get(f"/web/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
    assert client.head("/").status_code == 200


@pytest.mark.parametrize("path", ["/web/nope.js", "/web/..%2Fapp.py", "/web/%2E%2E%2Froutes%2Fweb.py", "/web/"])
def test_unknown_or_escaping_paths_are_404(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_page_is_not_part_of_the_api_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/web") for p in paths)


def test_page_files_fetch_nothing_from_outside() -> None:
    files = sorted(WEB_DIR.iterdir())
    assert {f.name for f in files} >= {"index.html", "app.js", "style.css"}
    for f in files:
        text = f.read_text()
        assert not re.search(r"https?://|//cdn|@import\s+url", text), f"{f.name} refers to an outside address"


def test_scripts_use_only_the_public_api() -> None:
    """Every absolute path a script names is a public /v1 route or the OpenAPI document."""
    paths: set[str] = set()
    for script in WEB_DIR.glob("*.js"):
        paths |= set(re.findall(r"""[`"'](/[A-Za-z][A-Za-z0-9_.\-/]*)""", script.read_text()))
    assert paths, "the scripts name no API path at all"
    assert {p for p in paths if not PUBLIC_API.match(p)} == set()
    assert {"/v1/models", "/v1/jobs", "/openapi.json", "/v1/diagnostics", "/v1/roundtrip"} <= paths


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("127.0.0.1", 8000, "http://127.0.0.1:8000/"),
        ("0.0.0.0", 80, "http://127.0.0.1:80/"),
        ("::", 8000, "http://[::1]:8000/"),
        ("example.org", 9000, "http://example.org:9000/"),
    ],
)
def test_serve_prints_a_page_url_a_browser_can_open(host: str, port: int, url: str) -> None:
    assert page_url(host, port) == url
