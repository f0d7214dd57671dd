"""GET /v1/models: the loaded model, the presets with what each does, and this server's limits."""

from __future__ import annotations

from fastapi import APIRouter

from pca_attack import DEFAULT_PRESET, PRESETS, __version__
from pca_attack.io.formats import FORMAT_NAMES
from pca_attack.models.devices import dtype_name
from service.deps import EngineDep, SettingsDep
from service.schemas import Limits, ModelInfo, ModelsResponse, PresetInfo

router = APIRouter(tags=["models"])


@router.get(
    "/models",
    operation_id="models-list",
    summary="Loaded model, presets and limits",
    response_model=ModelsResponse,
)
async def list_models(engine: EngineDep, settings: SettingsDep) -> ModelsResponse:
    enc = engine.encoder
    return ModelsResponse(
        model=ModelInfo(
            name=enc.name,
            device=str(enc.device),
            dtype=dtype_name(enc.dtype),
            latent_channels=enc.latent_channels,
            downsample_factor=enc.downsample_factor,
            parameters=enc.num_parameters(),
            decoder_loaded=engine.decoder is not None,
        ),
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
    )
