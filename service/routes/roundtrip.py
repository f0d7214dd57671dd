"""POST /v1/roundtrip: the picture an editor starts from — the PNG of D(E(x)), the model's decoder applied to
its encoder's posterior mean of the uploaded image. Send the original and the protected file in turn to see
what protection does to an edit's starting point (the web page shows both).

Same door as /v1/protect: the API key, the upload and pixel limits, the one engine worker (429 when its
queue is full) and the memory budget (a decode that would not fit is refused with 413, never run). 409
when the model has no decoder."""

from __future__ import annotations

import io
from typing import Annotated, Any

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import Response

from pca_attack import Engine
from pca_attack.io.names import content_disposition
from service.deps import SettingsDep, WorkerDep
from service.errors import ApiError
from service.schemas import ErrorResponse
from service.uploads import ERROR_RESPONSES, await_engine, decode_upload, read_upload, safe_filename

router = APIRouter(tags=["diagnostics"])

NO_DECODER = (
    "the model {name} has no decoder loaded, so there is no round trip to show; start the server with a model "
    "that has one (e.g. a full VAE, or --decoder FILE for a tiny autoencoder) and with_decoder on"
)


def roundtrip_png(engine: Engine, x: Any) -> tuple[bytes, float | None]:
    """PNG bytes of decode(mean of encode(x)) for x (3, H, W) in [0, 1], and its PSNR against x (dB).

    Runs on the worker thread within the engine's memory budget: a decode that would not fit raises
    MemoryBudgetError (413) before any work."""
    from PIL import Image

    from pca_attack.attack.memory import MemoryBudgetError, decoder_fits, memory_scope
    from pca_attack.certify.diagnostics import psnr, roundtrip
    from pca_attack.io.images import tensor_to_array

    if engine.decoder is None:  # checked again here: the route's check ran before queueing
        raise ApiError(409, "no_decoder", NO_DECODER.format(name=engine.encoder.name))
    height, width = x.shape[-2:]
    available = engine.available_memory()
    if not decoder_fits(engine.encoder, height * width, available):
        raise MemoryBudgetError(
            f"decoding a {width} x {height} image would not fit this server's memory budget "
            f"({available / 2**30:.1f} GiB free); send a smaller image"
        )
    with memory_scope(available):
        recon = roundtrip(engine.encoder, engine.decoder, x[None])[0]  # (3, H, W) in [0, 1]
    buffer = io.BytesIO()
    Image.fromarray(tensor_to_array(recon, 255)).save(buffer, format="PNG")
    return buffer.getvalue(), psnr(recon, x)


@router.post(
    "/roundtrip",
    operation_id="roundtrip-image",
    summary="The image after a trip through the model's VAE (what an edit starts from)",
    response_class=Response,
    responses={
        200: {
            "description": "PNG of decode(encode(image)), the input's size (RGB; alpha is not encoded)",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "headers": {
                "X-PCA-Roundtrip-PSNR-dB": {
                    "description": "PSNR of the round trip against the uploaded image ('inf' when identical)",
                    "schema": {"type": "string"},
                }
            },
        },
        409: {"model": ErrorResponse, "description": "the model has no decoder"},
        **ERROR_RESPONSES,
    },
)
async def roundtrip_image(
    request: Request,
    settings: SettingsDep,
    worker: WorkerDep,
    file: Annotated[UploadFile, File(description="the image (an original or a protected one)")],
) -> Response:
    """Encode the image with the model's encoder and decode the posterior mean with its decoder: the picture
    an img2img or inpainting edit would start from. Compare the round trip of a protected file with the one
    of its original to see the damage the protection does."""
    engine: Engine = request.app.state.engine
    if engine.decoder is None:
        raise ApiError(409, "no_decoder", NO_DECODER.format(name=engine.encoder.name))
    image = await decode_upload(await read_upload(file, settings.max_upload_bytes), settings)
    x = image.to_tensor()  # (3, H, W) in [0, 1]
    future = worker.call(lambda e: roundtrip_png(e, x))
    data, quality = await await_engine(request, future, settings, "round trip")
    stem = safe_filename(file.filename).rsplit(".", 1)[0] or "image"
    headers = {
        "Content-Disposition": content_disposition(f"{stem}.roundtrip.png", "inline"),
        "X-PCA-Roundtrip-PSNR-dB": "inf" if quality is None else f"{quality:.3f}",
    }
    return Response(data, media_type="image/png", headers=headers)
