"""The OpenAPI document, made to say what the routes do (schemathesis checks the two agree).

FastAPI derives multipart form schemas from Python types, which says more than a form can carry or the
routes accept: an optional field becomes ``anyOf [T, null]`` although a form has no null (leave the field
out instead; the literal text ``null`` is not a value), a file may be empty although the routes answer an
empty upload 415, and a job's file list may be empty or longer than the server takes. ``form_schema_fixes``
rewrites every multipart body schema accordingly: no null alternatives, files ``minLength: 1``, the job
list ``minItems: 1`` and ``maxItems: max_files_per_job``, ``steps`` at most ``max_steps``; a 400 (malformed
multipart) is documented on every form route. ``job_links``
adds OpenAPI links from the job a POST /v1/jobs creates to the routes that read and delete it (clients and
stateful fuzzers follow them). ``open_security`` marks the key optional (``{}`` among the security
requirements) when the server has no key configured, as it then answers without one.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.settings import Settings

_MULTIPART = "multipart/form-data"
_MALFORMED_FORM = {  # Starlette's multipart parser answers 400 before any route code runs
    "description": "the body is not valid multipart/form-data",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def _is_file(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "string" and (
        schema.get("format") == "binary" or "contentMediaType" in schema
    )


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """``anyOf [T, null]`` -> ``T`` (title, description and a non-null default kept)."""
    options = [o for o in prop.get("anyOf", []) if o.get("type") != "null"]
    if "anyOf" not in prop or len(options) == len(prop["anyOf"]):
        return prop
    rest = {k: v for k, v in prop.items() if k != "anyOf" and not (k == "default" and v is None)}
    if len(options) == 1:
        return {**options[0], **rest}
    return {"anyOf": options, **rest}


def _fix_property(prop: dict[str, Any], max_files: int) -> dict[str, Any]:
    prop = _without_null(prop)
    if _is_file(prop):
        return {**prop, "minLength": 1}
    items = prop.get("items")
    if prop.get("type") == "array" and isinstance(items, dict) and _is_file(items):
        return {**prop, "items": {**items, "minLength": 1}, "minItems": 1, "maxItems": max_files}
    return prop


def form_schema_fixes(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Rewrite (in place) the schemas of every multipart request body; returns ``document``."""
    schemas = document.get("components", {}).get("schemas", {})
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            content = (operation.get("requestBody") or {}).get("content", {}) if isinstance(operation, dict) else {}
            ref = content.get(_MULTIPART, {}).get("schema", {}).get("$ref", "")
            body = schemas.get(ref.rsplit("/", 1)[-1]) if ref else None
            if not body:
                continue
            operation["responses"].setdefault("400", _MALFORMED_FORM)
            body["properties"] = {
                name: _fix_property(prop, settings.max_files_per_job) for name, prop in body["properties"].items()
            }
            steps = body["properties"].get("steps")
            if steps and steps.get("type") == "integer":  # this server's cap (PCA_MAX_STEPS), not the engine's
                steps["maximum"] = min(steps.get("maximum", settings.max_steps), settings.max_steps)
    return document


_JOB_LINKS = {
    "GetJob": ("jobs-get", {}),
    "GetJobResults": ("jobs-results", {}),
    "GetFirstItem": ("jobs-item", {"index": 0}),
    "DeleteJob": ("jobs-delete", {}),
}


def job_links(document: dict[str, Any]) -> dict[str, Any]:
    """Links from the 202 of ``jobs-create`` to the job routes, the id taken from the response body."""
    for operations in document.get("paths", {}).values():
        create = operations.get("post") if isinstance(operations, dict) else None
        if not create or create.get("operationId") != "jobs-create" or "202" not in create.get("responses", {}):
            continue
        create["responses"]["202"]["links"] = {
            name: {"operationId": target, "parameters": {"job_id": "$response.body#/id", **extra}}
            for name, (target, extra) in _JOB_LINKS.items()
        }
    return document


def open_security(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """On a server without API keys every operation also accepts no credentials: add ``{}``."""
    if settings.api_keys or settings.admin_key:
        return document
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            security = operation.get("security") if isinstance(operation, dict) else None
            if security and {} not in security:
                security.append({})
    return document


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve the rewritten document at /openapi.json (built once, like FastAPI's own)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = open_security(job_links(form_schema_fixes(original(), settings)), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
