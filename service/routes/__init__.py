"""One router per resource; ``create_app`` mounts the /v1 ones behind the API-key check."""

from .diagnostics import router as diagnostics_router
from .health import router as health_router
from .jobs import router as jobs_router
from .models import router as models_router
from .protect import router as protect_router

__all__ = ["diagnostics_router", "health_router", "jobs_router", "models_router", "protect_router"]
