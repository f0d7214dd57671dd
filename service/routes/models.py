"""GET /v1/models: the loaded model (every member of an ensemble), the presets with what each does, and this
server's limits."""

from __future__ import annotations

from fastapi import APIRouter, Request

from pca_attack import DEFAULT_PRESET, PRESETS, __version__
from pca_attack.attack.objective import ensemble_facts
from pca_attack.io.formats import FORMAT_NAMES
from pca_attack.models.encoder import Encoder
from pca_attack.models.ensemble import Ensemble, member_facts
from pca_attack.models.registry import DEMO_WARNING, uses_demo
from pca_attack.pipeline import Engine
from service.deps import EngineDep, SettingsDep
from service.schemas import EnsembleInfo, Limits, ModelInfo, ModelsResponse, PresetInfo

router = APIRouter(tags=["models"])


@router.get(
    "/models",
    operation_id="models-list",
    summary="Loaded models (every member of an ensemble), presets and limits",
    response_model=ModelsResponse,
)
async def list_models(engine: EngineDep, settings: SettingsDep, request: Request) -> ModelsResponse:
    members = [ModelInfo.model_validate(facts) for facts in member_facts(*loaded_models(engine))]
    return ModelsResponse(
        model=members[0],
        members=members,
        ensemble=None if engine.ensemble is None else EnsembleInfo.model_validate(ensemble_facts(engine.ensemble)),
        default_preset=DEFAULT_PRESET,
        presets=[
            PresetInfo(name=p.name, target_variance=p.target_variance, direction=p.direction, summary=p.summary)
            for p in PRESETS.values()
        ],
        limits=Limits(
            max_upload_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_pixels,
            max_steps=settings.max_steps,
            max_files_per_job=settings.max_files_per_job,
            queue_size=settings.queue_size,
            max_batch=settings.max_batch,
            request_timeout_s=settings.request_timeout_s,
            job_retention_s=settings.job_retention_s,
            formats=list(FORMAT_NAMES),
        ),
        version=__version__,
        warning=DEMO_WARNING if uses_demo(engine.model_names()) else None,
        generator_id=getattr(request.app.state, "generator_id", None),
    )


def loaded_models(engine: Engine) -> tuple[Encoder | Ensemble, dict[str, bool]]:
    """The engine's model (an Ensemble or its one Encoder) and which members have a decoder loaded."""
    if engine.ensemble is not None:
        return engine.ensemble, {name: d is not None for name, d in engine.decoders.items()}
    return engine.encoder, {engine.encoder.name: engine.decoder is not None}
