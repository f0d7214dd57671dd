"""POST /v1/protect: one image in, the protected image (or JSON with it and its certificate) out."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from pca_attack import ProtectedImage
from pca_attack.io.formats import FORMATS
from pca_attack.io.names import content_disposition
from service.deps import ProtectOptionsDep, SettingsDep, WorkerDep
from service.errors import ApiError
from service.schemas import ProtectJSON
from service.uploads import (
    ERROR_RESPONSES,
    attack_config,
    decode_upload,
    output_name,
    protect_request,
    read_upload,
    run_protect,
)

router = APIRouter(tags=["protect"])

_IMAGE_SCHEMA = {"schema": {"type": "string", "format": "binary"}}
_CERT_HEADERS = {
    "X-PCA-Linf-255": {
        "description": "measured Linf distance on the 0-255 scale",
        "schema": {"type": "string"},
    },
    "X-PCA-Budget-OK": {"description": "true when linf_255 <= eps", "schema": {"type": "string"}},
    "X-PCA-KL-Clean": {"description": "KL(q(z|input) || N(0,I)) per element", "schema": {"type": "string"}},
    "X-PCA-KL-Protected": {
        "description": "KL(q(z|output) || N(0,I)) per element",
        "schema": {"type": "string"},
    },
    "X-PCA-Certificate": {"description": "the certificate JSON, base64url", "schema": {"type": "string"}},
}


def certificate_headers(out: ProtectedImage) -> dict[str, str]:
    cert = out.certificate
    return {
        "X-PCA-Linf-255": f"{cert.linf_255:g}",
        "X-PCA-Budget-OK": "true" if cert.budget_ok else "false",
        "X-PCA-KL-Clean": repr(float(cert.kl_clean)),
        "X-PCA-KL-Protected": repr(float(cert.kl_protected)),
        "X-PCA-Certificate": base64.urlsafe_b64encode(cert.model_dump_json().encode()).decode("ascii"),
    }


@router.post(
    "/protect",
    operation_id="protect-image",
    summary="Protect one image",
    response_model=None,
    responses={
        200: {
            "description": "the protected image (default) or, with ?response=json, JSON with it and its certificate",
            "model": ProtectJSON,
            "content": {f.mime_type: _IMAGE_SCHEMA for f in FORMATS.values()},
            "headers": _CERT_HEADERS,
        },
        **ERROR_RESPONSES,
    },
)
async def protect_image(
    request: Request,
    settings: SettingsDep,
    worker: WorkerDep,
    options: ProtectOptionsDep,
    file: Annotated[UploadFile, File(description="the image (PNG, JPEG, WebP, TIFF, BMP, still GIF)")],
    response_kind: Annotated[
        Literal["image", "json"], Query(alias="response", description="image bytes or JSON with base64")
    ] = "image",
) -> Response:
    """Protect one image with the Posterior Collapse Attack. The output has the input's size; it is PNG
    unless another format is asked for. The certificate (measured on the returned bytes) comes in the
    `X-PCA-*` headers or, with `?response=json`, in the body."""
    config = attack_config(options, settings)
    data = await read_upload(file, settings.max_upload_bytes)
    image = await decode_upload(data, settings)
    try:
        req = protect_request(image, config, options)
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from exc
    out = await run_protect(request, worker, settings, req)
    name = output_name(file.filename or "image", out.suffix)
    if response_kind == "json":
        body = ProtectJSON(
            certificate=out.certificate,
            format=out.format,  # type: ignore[arg-type]
            filename=name,
            image_base64=base64.b64encode(out.data).decode("ascii"),
        )
        return JSONResponse(body.model_dump(mode="json"))
    headers = {"Content-Disposition": content_disposition(name), **certificate_headers(out)}  # RFC 5987
    return Response(content=out.data, media_type=out.mime_type, headers=headers)
