"""The job runner: a thread that claims queued items from the ``JobStore``, decodes them, submits them to
the engine worker in groups (so same-size images share micro-batches), records each item's per-step
progress (``ProgressRecorder``, throttled) and its outcome, and expires old jobs. The job's settings are
the ``ProtectOptions`` it was created with."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import CancelledError
from typing import Any

from pca_attack import decode_image
from pca_attack.attack.progress import StepProgress
from pca_attack.errors import ConfigError
from pca_attack.options import ProtectOptions
from service.errors import from_engine_error
from service.job_store import ClaimedItem, JobStore
from service.uploads import decode_failure, protect_request
from service.worker import ProtectRequest

log = logging.getLogger("service.job_runner")

PROGRESS_INTERVAL_S = 0.5  # at most ~2 progress writes per second per running item


class ProgressRecorder:
    """The worker's progress listener of one job item: writes the attack's step / tile to the item's row,
    at most once per ``interval_s`` (the first event always), so database writes stay bounded."""

    def __init__(self, store: JobStore, job_id: str, index: int, interval_s: float | None = None) -> None:
        self.store, self.job_id, self.index = store, job_id, index
        self.interval_s = PROGRESS_INTERVAL_S if interval_s is None else interval_s
        self._last = -float("inf")
        self.writes = 0

    def __call__(self, event: StepProgress) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        self.store.set_progress(self.job_id, self.index, event.summary())
        self.writes += 1


class JobRunner:
    """Feeds the jobs of a ``JobStore`` to an ``EngineWorker``, one claimed group at a time."""

    def __init__(
        self,
        store: JobStore,
        worker: Any,
        *,
        max_pixels: int,
        batch: int,
        task_timeout_s: float,
        cleanup_interval_s: float,
    ) -> None:
        self.store = store
        self.worker = worker
        self.max_pixels = max_pixels
        self.batch = max(1, batch)
        self.task_timeout_s = task_timeout_s
        self.cleanup_interval_s = cleanup_interval_s
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight: dict[str, list[Any]] = {}  # job id -> futures waiting in the engine queue

    def cancel(self, job_id: str) -> int:
        """Drop a deleted job's images still waiting in the engine queue (frees their slots)."""
        return sum(1 for f in self._inflight.get(job_id, []) if f.cancel())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pca-job-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        last_cleanup = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_cleanup > self.cleanup_interval_s:
                    last_cleanup = time.monotonic()
                    self.store.expire()
                claimed = self.store.claim(self.batch)
                if not claimed:
                    self.wake.wait(min(self.cleanup_interval_s, 2.0))
                    self.wake.clear()
                    continue
                self._process(claimed)
            except Exception:
                log.exception("job runner: unexpected error (runner keeps running)")
                self._stop.wait(1.0)

    def _fail(self, item: ClaimedItem, error: str) -> None:
        self.store.finish_item(item.job_id, item.index, status="failed", error=error)

    def _request(self, item: ClaimedItem, options: ProtectOptions, config: Any) -> ProtectRequest | None:
        """The worker request of one claimed item, or None after recording why it failed."""
        try:
            data = item.input_path.read_bytes()
        except OSError:
            self._fail(item, "the uploaded file is missing from the data directory")
            return None
        try:
            image = decode_image(data, max_pixels=self.max_pixels)
        except Exception as exc:  # the same message /v1/protect answers (415 text) for the same file
            self._fail(item, decode_failure(exc).message)
            return None
        try:
            request = protect_request(image, config, options)
        except ValueError as exc:
            self._fail(item, str(exc))
            return None
        request.on_progress = ProgressRecorder(self.store, item.job_id, item.index)
        return request

    def _process(self, claimed: list[ClaimedItem]) -> None:
        try:
            options = ProtectOptions.model_validate(claimed[0].settings)
            config = options.to_attack_config()
        except (ValueError, ConfigError) as exc:  # a row written by another version: fail, never loop
            for item in claimed:
                self._fail(item, f"the job's settings are not valid here: {exc}")
            return
        requests = [(item, self._request(item, options, config)) for item in claimed]
        ready = [(item, req) for item, req in requests if req is not None]
        if not ready:
            return
        futures = self.worker.submit_many([req for _, req in ready], block=True, timeout=None)
        self._inflight[claimed[0].job_id] = futures
        try:
            self._collect([item for item, _ in ready], futures)
        finally:
            self._inflight.pop(claimed[0].job_id, None)

    def _collect(self, items: list[ClaimedItem], futures: list[Any]) -> None:
        for item, future in zip(items, futures, strict=True):
            try:
                out = future.result(timeout=self.task_timeout_s)
            except CancelledError:
                self.store.finish_item(item.job_id, item.index, status="cancelled", error="job cancelled")
                continue
            except Exception as exc:
                api = from_engine_error(exc)
                if api.status >= 500:
                    log.error("job %s item %d failed unexpectedly", item.job_id, item.index, exc_info=exc)
                self._fail(item, api.message if api.status < 500 else f"protection failed: {exc}")
                continue
            self.store.finish_item(
                item.job_id,
                item.index,
                status="done",
                certificate=out.certificate.model_dump(mode="json"),
                result=out.data,
                suffix=out.suffix,
            )
