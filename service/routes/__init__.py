"""One router per resource; ``create_app`` mounts the /v1 ones behind the API-key check."""

from service.routes.diagnostics import router as diagnostics_router
from service.routes.health import router as health_router
from service.routes.jobs import router as jobs_router
from service.routes.models import router as models_router
from service.routes.protect import router as protect_router

__all__ = ["diagnostics_router", "health_router", "jobs_router", "models_router", "protect_router"]
