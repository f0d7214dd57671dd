"""POST /v1/diagnostics: the encoder's posterior statistics of an image or a clean/protected pair."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile

from pca_attack import Engine
from pca_attack.certify.diagnostics import image_stats, pair_stats
from service.deps import SettingsDep, WorkerDep
from service.errors import ApiError
from service.schemas import Diagnostics
from service.uploads import ERROR_RESPONSES, decode_upload, read_upload, wait_for

router = APIRouter(tags=["diagnostics"])


def _finite(value: Any) -> Any:
    """NaN/inf become null so the JSON stays valid; containers are cleaned recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@router.post(
    "/diagnostics",
    operation_id="diagnostics-posterior",
    summary="Posterior statistics of an image or a clean/protected pair",
    response_model=Diagnostics,
    responses=ERROR_RESPONSES,
)
async def diagnostics(
    request: Request,
    settings: SettingsDep,
    worker: WorkerDep,
    file: Annotated[UploadFile, File(description="the image (the clean one of a pair)")],
    protected: Annotated[UploadFile | None, File(description="optional protected version of `file`")] = None,
    redteam: Annotated[
        bool,
        Form(description="pairs only: also measure what survives JPEG, WebP, resizing, blur, noise, a "
             "filter cleaner and VAE purification (slower: several encoder passes per channel)"),
    ] = False,
) -> Diagnostics:
    """How collapsed is the encoder's posterior q(z|x) for this image? KL to N(0, I) and to each preset's
    target, per-latent-channel summaries and, when the model has a decoder, round-trip PSNR. With
    `protected`, both images are measured and their latent drift and pixel distance reported."""
    clean = await decode_upload(await read_upload(file, settings.max_upload_bytes), settings)
    other = None
    if protected is not None and (protected.filename or protected.size):
        data = await read_upload(protected, settings.max_upload_bytes, what="protected")
        other = await decode_upload(data, settings, what="protected")
        if (other.height, other.width) != (clean.height, clean.width):
            raise ApiError(
                422,
                "size_mismatch",
                f"`protected` is {other.width} x {other.height} but `file` is "
                f"{clean.width} x {clean.height}; a pair must have the same size",
            )
    if redteam and other is None:
        raise ApiError(422, "invalid_parameter", "redteam=true needs a pair: send `protected` as well as `file`")
    x_clean = clean.to_tensor()  # (3, H, W)
    x_other = other.to_tensor() if other is not None else None

    def run(engine: Engine) -> dict[str, Any]:
        from pca_attack.attack.memory import decoder_fits, memory_scope

        available = engine.available_memory()  # the same budget as protect: large images measured in tiles
        decoder = engine.decoder if decoder_fits(engine.encoder, x_clean[0].numel(), available) else None
        with memory_scope(available):
            if x_other is None:
                return {"image": image_stats(engine.encoder, x_clean, decoder)}
            stats = pair_stats(engine.encoder, x_clean, x_other, decoder)
            stats["image"] = stats.pop("clean")
            if redteam:
                from pca_attack.redteam.report import redteam as run_redteam

                stats["redteam"] = run_redteam(engine, x_clean, x_other, with_roundtrip=False).to_dict()
        return stats

    future = worker.call(run)
    stats = _finite(await wait_for(request, future, settings.request_timeout_s, settings.retry_after_s))
    engine: Engine = request.app.state.engine
    return Diagnostics(
        model=engine.encoder.name,
        decoder_loaded=engine.decoder is not None,
        width=clean.width,
        height=clean.height,
        **stats,
    )
