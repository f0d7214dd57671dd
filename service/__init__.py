"""The REST service of pca-protect: FastAPI app factory, engine worker, job store and routers.

Start it with ``pca-protect serve`` or ``uvicorn service.app:create_app --factory``.
"""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
