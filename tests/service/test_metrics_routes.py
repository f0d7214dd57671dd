"""/metrics labels every served route by its path template, including FastAPI's own /docs and /openapi.json
and the web page (issue 11 item 18); only a path no route serves is 'unmatched'."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_docs_openapi_and_page_are_labelled_by_route(client: TestClient) -> None:
    for path in ("/docs", "/openapi.json", "/", "/v1/models", "/no-such-path"):
        client.get(path)
    text = client.get("/metrics").text
    for route in ("/docs", "/openapi.json", "/v1/models"):
        assert f'route="{route}"' in text, route
    assert 'route="/"' in text
    assert 'route="unmatched"' in text  # the 404 path
    assert 'route="/no-such-path"' not in text  # unmatched paths never become labels (unbounded cardinality)
