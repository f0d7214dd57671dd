"""The REST service of pca-protect: FastAPI app factory, engine worker, job store and routers.

Start it with ``pca-protect serve`` or ``uvicorn service.app:create_app --factory``.

``create_app`` and ``Settings`` are imported lazily, so ``import pca_client`` stays light (no torch,
no FastAPI) for programs that only talk to a running server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.app import create_app
    from service.settings import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from service.app import create_app

        return create_app
    if name == "Settings":
        from service.settings import Settings

        return Settings
    raise AttributeError(f"module 'service' has no attribute {name!r}")
