"""Batch jobs: POST /v1/jobs (202), GET /v1/jobs/{id}, GET /v1/jobs/{id}/results (zip),
GET /v1/jobs/{id}/items/{index}, DELETE /v1/jobs/{id}."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, File, Path, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pca_attack.io.formats import BY_SUFFIX, FORMATS, image_format
from pca_attack.io.names import certificate_name, content_disposition, output_names
from service.auth import Caller
from service.deps import CallerDep, MetricsDep, ProtectOptionsDep, RunnerDep, SettingsDep, StoreDep, WorkerDep
from service.errors import ApiError
from service.job_store import JobStore, JobView
from service.schemas import ErrorResponse, ItemProgress, Job, JobItem, JobProgress
from service.uploads import ERROR_RESPONSES, attack_config, read_upload

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(description="job id (32 hex characters)", max_length=64)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such job (unknown, deleted or expired)"},
    422: {"model": ErrorResponse, "description": "malformed job id or index"},
}


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "not_found", f"job {job_id[:64]!r} does not exist (unknown, deleted or expired)")


def visible_job(store: JobStore, job_id: str, caller: Caller) -> JobView:
    """The job, or 404 when it does not exist OR belongs to another key (the two are indistinguishable)."""
    view = store.get(job_id)
    if view is None or not caller.may_see(view.owner):
        raise _not_found(job_id)
    return view


def job_model(view: JobView) -> Job:
    outputs = item_outputs(view)
    items = [
        JobItem(
            index=i.index,
            filename=i.filename,
            status=i.status,  # type: ignore[arg-type]
            error=i.error,
            certificate=i.certificate,  # type: ignore[arg-type]
            download_url=f"/v1/jobs/{view.id}/items/{i.index}" if i.status == "done" and i.result_suffix else None,
            output=outputs[i.index],
            progress=ItemProgress(**i.progress) if i.status == "running" and i.progress else None,
        )
        for i in view.items
    ]
    return Job(
        id=view.id,
        status=view.status,  # type: ignore[arg-type]
        total=view.total,
        created_at=view.created_at,
        updated_at=view.updated_at,
        expires_at=view.expires_at,
        settings=view.settings,
        progress=JobProgress(total=view.total, done=view.done, failed=view.failed, running=view.running,
                             fraction=view.fraction),
        error=view.error,
        items=items,
    )


@router.post(
    "",
    operation_id="jobs-create",
    summary="Protect several images in the background",
    status_code=202,
    response_model=Job,
    responses=ERROR_RESPONSES,
)
async def create_job(
    settings: SettingsDep,
    store: StoreDep,
    runner: RunnerDep,
    worker: WorkerDep,
    options: ProtectOptionsDep,
    caller: CallerDep,
    files: Annotated[list[UploadFile], File(description="the images (1 .. max_files_per_job)")],
) -> JSONResponse:
    """Accept the images, store them under the data directory and queue them; answer 202 with the job.
    Items that turn out not to be readable images fail individually (see each item's `error`)."""
    if not files:
        raise ApiError(422, "invalid_parameter", "send at least one file in `files`")
    if len(files) > settings.max_files_per_job:
        raise ApiError(
            413,
            "too_many_files",
            f"{len(files)} files sent; this server accepts at most {settings.max_files_per_job} per job",
        )
    attack_config(options, settings)  # validate now: a job with bad settings is refused, not failed later
    uploads: list[tuple[str | None, bytes | BinaryIO]] = []
    for n, upload in enumerate(files):
        if upload.size == 0:  # the schema says non-empty; /v1/protect answers the same 415
            raise ApiError(415, "unsupported_image", f"files[{n}]: the upload is empty (0 bytes); send an image file")
        if upload.size is None:  # size unknown: read it (bounded) to check the limit
            uploads.append((upload.filename, await read_upload(upload, settings.max_upload_bytes, f"files[{n}]")))
        elif upload.size > settings.max_upload_bytes:
            raise ApiError(
                413, "file_too_large", f"files[{n}] is larger than the limit of {settings.max_upload_bytes:,} bytes"
            )
        else:  # spooled by the multipart parser: copied to the data directory in chunks, not held in memory
            uploads.append((upload.filename, upload.file))
    view = await run_in_threadpool(store.create, uploads, options.settings(), caller.owner)
    runner.wake.set()
    body = job_model(view).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{view.id}"})


@router.get(
    "/{job_id}",
    operation_id="jobs-get",
    summary="Status, progress and items of a job",
    response_model=Job,
    responses=_NOT_FOUND,
)
async def get_job(job_id: JobId, store: StoreDep, caller: CallerDep) -> Job:
    return job_model(visible_job(store, job_id, caller))


@router.get(
    "/{job_id}/results",
    operation_id="jobs-results",
    summary="Zip of the protected images, their reports and a manifest",
    response_class=Response,
    responses={
        200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
        **_NOT_FOUND,
    },
)
async def job_results(job_id: JobId, store: StoreDep, caller: CallerDep) -> Response:
    """Everything finished so far, named as every command names outputs: `<name>.<ext>` images (the
    uploaded name with the output suffix; `a.jpg` + `a.png` -> `a.jpg.png` + `a.png`), each certificate
    `<output name>.json` beside it, and `manifest.json` listing every item with its status and error."""
    view = visible_job(store, job_id, caller)
    outputs = item_outputs(view)
    buffer = io.BytesIO()
    manifest = {"job": job_model(view).model_dump(mode="json", exclude={"items"}), "items": []}
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for item in view.items:
            entry: dict[str, object] = {
                "index": item.index,
                "filename": item.filename,
                "status": item.status,
                "error": item.error,
            }
            if item.status == "done" and item.result_suffix:
                path = store.result_path(view.id, item.index, item.result_suffix)
                if path.exists():
                    name = outputs[item.index]
                    zf.write(path, name)
                    report = certificate_name(name)
                    zf.writestr(report, json.dumps(item.certificate, indent=2))
                    entry.update(output=name, report=report, certificate=item.certificate)
                else:
                    entry.update(status="failed", error="result file missing from the data directory")
            manifest["items"].append(entry)  # type: ignore[attr-defined]
        zf.writestr("manifest.json", json.dumps(manifest, indent=2))
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="job-{view.id}.zip"'},
    )


def item_outputs(view: JobView) -> dict[int, str]:
    """Output name of every item (``pca_attack.io.names.output_names`` over the whole job, so the zip, the
    item downloads and a folder batch of the same names agree)."""
    suffix = image_format(str(view.settings.get("format") or "png")).suffix
    names = output_names([item.filename for item in view.items], suffix)
    return {item.index: name for item, name in zip(view.items, names, strict=True)}


@router.get(
    "/{job_id}/items/{index}",
    operation_id="jobs-item",
    summary="Download one protected image of a job",
    response_class=Response,
    responses={
        200: {"content": {f.mime_type: {"schema": {"type": "string", "format": "binary"}} for f in FORMATS.values()}},
        409: {"model": ErrorResponse, "description": "the item is not done (yet)"},
        **_NOT_FOUND,
    },
)
async def job_item(
    job_id: JobId, index: Annotated[int, Path(ge=0, le=1_000_000)], store: StoreDep, caller: CallerDep
) -> Response:
    view = visible_job(store, job_id, caller)
    item = next((i for i in view.items if i.index == index), None)
    if item is None:
        raise ApiError(404, "not_found", f"job {job_id} has no item {index} (it has {view.total})")
    if item.status != "done" or not item.result_suffix:
        raise ApiError(409, "not_ready", f"item {index} is {item.status}" + (f": {item.error}" if item.error else ""))
    path = store.result_path(view.id, index, item.result_suffix)
    if not path.exists():
        raise ApiError(404, "not_found", f"the result of item {index} is missing from the data directory")
    media = BY_SUFFIX[item.result_suffix].mime_type
    name = item_outputs(view)[index]
    return Response(path.read_bytes(), media_type=media, headers={"Content-Disposition": content_disposition(name)})


@router.delete(
    "/{job_id}",
    operation_id="jobs-delete",
    summary="Cancel a job and delete its files",
    response_model=Job,
    responses=_NOT_FOUND,
)
async def delete_job(job_id: JobId, store: StoreDep, runner: RunnerDep, metrics: MetricsDep, caller: CallerDep) -> Job:
    """Cancel the job if it is queued or running, delete its uploads and results, and return its final
    state. The id answers 404 afterwards (and to every key but its creator's and the admin key)."""
    visible_job(store, job_id, caller)
    view = store.cancel_and_delete(job_id)
    runner.cancel(job_id)
    if view is None:
        raise _not_found(job_id)
    metrics.jobs.labels(status="deleted").inc()
    return job_model(view)
