"""The service on Ray Serve: the same FastAPI app (``service.app.create_app``) as a Serve deployment with N
replicas, each owning one engine (one GPU per replica where the cluster has GPUs).

* ``pca-protect serve --ray --replicas N`` (``run``), or ``serve run service.ray_app:app_builder replicas=2``.
* Replicas read their settings from the ``PCA_*`` environment of the caller (passed in the runtime env); the
  jobs store is shared through ``PCA_DATABASE_URL``: the default SQLite file under an absolute
  ``PCA_DATA_DIR`` on one node, a PostgreSQL URL (and a shared ``PCA_DATA_DIR``) across nodes.
* Each replica keeps the service's own engine worker, which micro-batches same-size images
  (``PCA_MAX_BATCH``), so no ``@serve.batch`` layer is added. Long work stays on the job queue (/v1/jobs).
* A replica whose process dies is restarted by Serve; the proxy routes requests to the live ones meanwhile.

Ray is the optional extra ``pip install 'pca-protect[ray]'``; only this module imports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve

DEPLOYMENT = "PCAService"
APP_NAME = "pca-protect"


def _asgi_app() -> FastAPI:
    """Built inside each replica: its own engine, worker and job runner (settings from ``PCA_*``)."""
    from service.app import create_app

    return create_app()


@serve.deployment(name=DEPLOYMENT, health_check_period_s=5, health_check_timeout_s=30)
@serve.ingress(_asgi_app)
class PCAService:
    """One replica of the REST service (the FastAPI app answers every route)."""


def replica_env(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's ``PCA_*`` variables plus ``overrides``, with the data folder made absolute so every
    replica (whatever its working folder) shares one data folder and SQLite jobs store."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PCA_")}
    env.update(overrides or {})
    env["PCA_DATA_DIR"] = str(Path(env.get("PCA_DATA_DIR", "data")).expanduser().resolve())
    return env


def build(replicas: int = 1, *, num_gpus: float | None = None, env: dict[str, str] | None = None) -> Any:
    """The bound application: ``replicas`` copies, one GPU each when the cluster has GPUs."""
    if num_gpus is None:
        import ray

        num_gpus = 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    actor_options = {"num_cpus": 1, "num_gpus": num_gpus, "runtime_env": {"env_vars": replica_env(env)}}
    deployment: Any = PCAService  # a serve.Deployment once decorated
    return deployment.options(num_replicas=replicas, ray_actor_options=actor_options).bind()


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run service.ray_app:app_builder replicas=2``."""
    return build(int(args.get("replicas", 1)))


def run(env: dict[str, str], *, host: str, port: int, replicas: int, address: str = "auto") -> None:
    """Start (or join) a Ray cluster, deploy ``replicas`` replicas on ``host:port`` and block until Ctrl-C."""
    import ray

    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(replicas, env=env), name=APP_NAME, route_prefix="/", blocking=True)
