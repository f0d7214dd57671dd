"""The job store (SQLAlchemy 2.0; the tables are in ``service.job_rows``): plain views of the rows, and the
queries and state changes of the routes and of ``service.job_runner`` (including each running item's
per-step progress, so that every replica sharing the database answers the same ``GET /v1/jobs/{id}``).

Uploads and results live on disk under ``data_dir`` with generated names (``<job id>/<index>.in`` and
``<job id>/<index><suffix>``); the uploaded filename is only ever stored as text. On start, jobs that were
queued or running are resumed; an item whose input file is gone is marked failed with the reason. Finished
jobs expire after ``job_retention_s`` (rows and files deleted).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast

from sqlalchemy import create_engine, delete, event, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, sessionmaker

from pca_attack.io.files import atomic_write
from pca_attack.io.formats import BY_SUFFIX
from service.job_rows import Base, ItemRow, JobRow, add_missing_columns, utcnow
from service.job_rows import aware as _aware
from service.uploads import safe_filename

__all__ = ["ClaimedItem", "ItemRow", "ItemView", "JobRow", "JobStore", "JobView", "utcnow"]

log = logging.getLogger("service.job_store")

JOB_ACTIVE = ("queued", "running")
ITEM_FINAL = ("done", "failed", "cancelled")
_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ItemView:
    index: int
    filename: str
    status: str
    error: str | None
    certificate: dict[str, Any] | None
    result_suffix: str | None
    progress: dict[str, Any] | None = None  # the running attack's step / tile (see ``JobStore.set_progress``)


@dataclass
class JobView:
    id: str
    status: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    settings: dict[str, Any]
    total: int
    error: str | None
    items: list[ItemView]
    owner: str | None = None  # SHA-256 of the key that created the job (None: created on an open server)

    @property
    def done(self) -> int:
        return sum(1 for i in self.items if i.status == "done")

    @property
    def failed(self) -> int:
        return sum(1 for i in self.items if i.status == "failed")

    @property
    def running(self) -> int:
        return sum(1 for i in self.items if i.status == "running")

    @property
    def fraction(self) -> float:
        """Share of the work finished: final items count whole, running ones by their attack's progress."""
        if not self.items:
            return 0.0
        parts = (1.0 if i.status in ITEM_FINAL else float((i.progress or {}).get("fraction", 0.0)) for i in self.items)
        return round(min(1.0, sum(parts) / len(self.items)), 4)


@dataclass
class ClaimedItem:
    job_id: str
    index: int
    filename: str
    input_path: Path
    settings: dict[str, Any]


class JobStore:
    """Jobs and items in a SQL database, their files under ``data_dir/jobs/<id>/``."""

    def __init__(self, database_url: str, data_dir: Path, retention_s: float) -> None:
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.retention = timedelta(seconds=retention_s)
        kwargs: dict[str, Any] = {}
        if database_url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(database_url, **kwargs)
        if database_url.startswith("sqlite"):

            @event.listens_for(self.engine, "connect")
            def _pragmas(conn: Any, _: Any) -> None:
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

        Base.metadata.create_all(self.engine)
        added = add_missing_columns(self.engine)
        if added:
            log.info("jobs database upgraded: added %s", ", ".join(added))
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.lock = threading.RLock()  # serialises state changes between the runner and the routes

    def close(self) -> None:
        self.engine.dispose()

    # -- paths (generated, never from user input) ---------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        if not _ID_RE.match(job_id):
            raise ValueError("bad job id")
        return self.jobs_dir / job_id

    def input_path(self, job_id: str, index: int) -> Path:
        return self.job_dir(job_id) / f"{int(index):05d}.in"

    def result_path(self, job_id: str, index: int, suffix: str) -> Path:
        if suffix not in BY_SUFFIX:
            raise ValueError("bad suffix")
        return self.job_dir(job_id) / f"{int(index):05d}.out{suffix}"

    # -- creating and reading -----------------------------------------------------------------------
    def create(
        self, files: list[tuple[str | None, bytes | BinaryIO]], settings: dict[str, Any], owner: str | None = None
    ) -> JobView:
        """Store the uploads (bytes, or file objects copied in chunks) and queue a job owned by ``owner``."""
        job_id = uuid.uuid4().hex
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True)
        for index, (_, data) in enumerate(files):
            atomic_write(self.input_path(job_id, index), data)
        now = utcnow()
        with self.lock, self.sessions.begin() as s:
            job = JobRow(
                id=job_id,
                status="queued",
                created_at=now,
                updated_at=now,
                expires_at=None,
                settings_json=json.dumps(settings),
                total=len(files),
                error=None,
                owner=owner,
            )
            job.items = [
                ItemRow(index=i, filename=safe_filename(name, f"image-{i}"), status="queued")
                for i, (name, _) in enumerate(files)
            ]
            s.add(job)
        view = self.get(job_id)
        assert view is not None
        return view

    def get(self, job_id: str) -> JobView | None:
        if not _ID_RE.match(job_id):
            return None
        with self.sessions() as s:
            job = s.get(JobRow, job_id)
            return None if job is None else _view(job)

    # -- the runner's side --------------------------------------------------------------------------
    def claim(self, limit: int) -> list[ClaimedItem]:
        """Mark up to ``limit`` queued items of the oldest active job running and return them."""
        with self.lock, self.sessions.begin() as s:
            job = s.scalars(
                select(JobRow).where(JobRow.status.in_(JOB_ACTIVE)).order_by(JobRow.created_at).limit(1)
            ).first()
            if job is None:
                return []
            items = [i for i in job.items if i.status == "queued"][:limit]
            if not items:
                self._settle(s, job)
                return []
            # compare-and-set per item: with several processes on one database (Ray Serve replicas sharing
            # PCA_DATABASE_URL) an item another process claimed first is skipped, never run twice
            won = [item for item in items if _take(s, item.id)]
            job.status, job.updated_at = "running", utcnow()
            settings = json.loads(job.settings_json)
            return [ClaimedItem(job.id, i.index, i.filename, self.input_path(job.id, i.index), settings) for i in won]

    def finish_item(
        self,
        job_id: str,
        index: int,
        *,
        status: str,
        error: str | None = None,
        certificate: dict[str, Any] | None = None,
        result: bytes | None = None,
        suffix: str | None = None,
    ) -> bool:
        """Record an item's outcome (and write its result file); False if the job is gone or cancelled."""
        with self.lock:
            with self.sessions.begin() as s:
                job = s.get(JobRow, job_id)
                if job is None or job.status == "cancelled":
                    return False
                item = next((i for i in job.items if i.index == index), None)
                if item is None:
                    return False
                if result is not None and suffix is not None:
                    atomic_write(self.result_path(job_id, index, suffix), result)
                    item.result_suffix = suffix
                item.status, item.error, item.progress_json = status, error, None
                item.certificate_json = json.dumps(certificate) if certificate is not None else None
                job.updated_at = utcnow()
                self._settle(s, job)
            if status == "done" or status == "failed":
                self.input_path(job_id, index).unlink(missing_ok=True)
            return True

    def set_progress(self, job_id: str, index: int, progress: dict[str, Any]) -> bool:
        """Record where a running item's attack is (one UPDATE, no lock on the job); False when the item is
        no longer running (finished, cancelled or deleted meanwhile)."""
        change = (
            update(ItemRow)
            .where(ItemRow.job_id == job_id, ItemRow.index == index, ItemRow.status == "running")
            .values(progress_json=json.dumps(progress))
        )
        with self.sessions.begin() as s:
            return cast(CursorResult[Any], s.execute(change)).rowcount == 1

    def _settle(self, s: Session, job: JobRow) -> None:
        """A job whose items are all final becomes done (or failed when none succeeded)."""
        if job.status not in JOB_ACTIVE or any(i.status not in ITEM_FINAL for i in job.items):
            return
        ok = any(i.status == "done" for i in job.items)
        job.status = "done" if ok else "failed"
        if not ok and not job.error:
            job.error = "no item could be protected; see each item's error"
        now = utcnow()
        job.updated_at, job.expires_at = now, now + self.retention

    # -- cancel / delete / recovery / expiry --------------------------------------------------------
    def cancel_and_delete(self, job_id: str) -> JobView | None:
        """Cancel a queued/running job, delete its files and rows; return the final state."""
        with self.lock:
            with self.sessions.begin() as s:
                job = s.get(JobRow, job_id) if _ID_RE.match(job_id) else None
                if job is None:
                    return None
                if job.status in JOB_ACTIVE:
                    job.status = "cancelled"
                    for item in job.items:
                        if item.status not in ITEM_FINAL:
                            item.status, item.error = "cancelled", "job cancelled by DELETE"
                job.updated_at = utcnow()
                view = _view(job)
                s.delete(job)
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return view

    def recover(self) -> dict[str, int]:
        """After a restart: requeue interrupted items, fail the ones whose input is gone."""
        counts = {"requeued": 0, "failed": 0}
        with self.lock, self.sessions.begin() as s:
            s.execute(update(ItemRow).where(ItemRow.status == "running").values(status="queued", progress_json=None))
            for job in s.scalars(select(JobRow).where(JobRow.status.in_(JOB_ACTIVE))):
                for item in job.items:
                    if item.status != "queued":
                        continue
                    if self.input_path(job.id, item.index).exists():
                        counts["requeued"] += 1
                    else:
                        item.status = "failed"
                        item.error = "the uploaded file was lost (missing from the data directory after a restart)"
                        counts["failed"] += 1
                job.status = "queued" if any(i.status == "queued" for i in job.items) else job.status
                job.updated_at = utcnow()
                self._settle(s, job)
        return counts

    def expire(self, now: datetime | None = None) -> int:
        """Delete finished jobs past their expiry; returns how many."""
        now = now or utcnow()
        with self.lock:
            with self.sessions.begin() as s:
                ids = list(s.scalars(select(JobRow.id).where(JobRow.expires_at.is_not(None), JobRow.expires_at < now)))
                if ids:
                    s.execute(delete(ItemRow).where(ItemRow.job_id.in_(ids)))
                    s.execute(delete(JobRow).where(JobRow.id.in_(ids)))
            for job_id in ids:
                shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        if ids:
            log.info("expired %d job(s)", len(ids))
        return len(ids)

    def has_work(self) -> bool:
        with self.sessions() as s:
            return s.scalars(select(ItemRow.id).where(ItemRow.status == "queued").limit(1)).first() is not None


def _take(s: Session, item_id: int) -> bool:
    """Atomically move one item from queued to running; False when another process took it first."""
    claim = update(ItemRow).where(ItemRow.id == item_id, ItemRow.status == "queued").values(status="running")
    result = s.execute(claim)
    return cast(CursorResult[Any], result).rowcount == 1


def _view(job: JobRow) -> JobView:
    return JobView(
        id=job.id,
        status=job.status,
        created_at=_aware(job.created_at) or utcnow(),
        updated_at=_aware(job.updated_at) or utcnow(),
        expires_at=_aware(job.expires_at),
        settings=json.loads(job.settings_json),
        total=job.total,
        error=job.error,
        owner=job.owner,
        items=[
            ItemView(
                i.index,
                i.filename,
                i.status,
                i.error,
                json.loads(i.certificate_json) if i.certificate_json else None,
                i.result_suffix,
                json.loads(i.progress_json) if i.progress_json else None,
            )
            for i in job.items
        ],
    )
