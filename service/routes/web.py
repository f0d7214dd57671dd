"""The artists' web page: ``GET /`` serves ``service/web/index.html`` and ``GET /web/{name}`` its
scripts and style sheet. Plain files, no build step; nothing is fetched from outside the app (the
Content-Security-Policy says so to the browser). The page talks to the server only through the
public /v1 API, like any client. Not behind API keys (the page asks for one when /v1 needs it) and
not part of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import ApiError

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
_MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> FileResponse:
    path = WEB_DIR / name
    media = _MEDIA_TYPES.get(path.suffix)
    if media is None or path.parent != WEB_DIR or not path.is_file():
        raise ApiError(404, "not_found", f"the page has no file {name[:64]!r}")
    return FileResponse(path, media_type=f"{media}; charset=utf-8", headers=_HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> FileResponse:
    """The page."""
    return _file("index.html")


@router.api_route("/web/{name}", methods=["GET", "HEAD"])
async def static_file(name: str) -> FileResponse:
    """One of the page's files (scripts, style sheet)."""
    return _file(name)
