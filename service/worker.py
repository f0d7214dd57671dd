"""The single engine worker: one thread owns the model, everything else queues to it.

Requests put tasks in a bounded queue and wait on ``concurrent.futures.Future`` objects. The thread takes
the oldest task and, when it is a protect task, every other waiting task with the same image size and
the same settings (up to ``max_batch``), and runs them as one micro-batch. A full queue refuses new tasks
(the route answers 429 with Retry-After) instead of growing memory; a cancelled future leaves the queue
at once, freeing its slot. No exception from one task ever stops the thread.

Memory (``PCA_MAX_MEMORY``): the budget counts the whole process, so before each micro-batch the engine's
baseline is what the process holds then (the model, and what warm-up, imports, earlier certificates and
waiting uploads added since the model was loaded: 0.1-0.2 GB measured), not what it held at load; and the
heap is bounded (``bound_heap``) from the start, as an explicit CPU budget does in the CLI.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pca_attack import AttackConfig, DecodedImage, Engine, ProtectedImage
from pca_attack.attack.progress import StepProgress
from pca_attack.attack.sizes import bound_heap, memory_in_use
from service.errors import QueueFullError
from service.metrics import Metrics

log = logging.getLogger("service.worker")


@dataclass
class ProtectRequest:
    """What one image needs to be protected."""

    image: DecodedImage
    config: AttackConfig
    fmt: str = "png"
    quality: int | None = None
    keep_exif: bool = True
    abandoned: threading.Event = field(default_factory=threading.Event, compare=False)  # its client went away
    on_progress: Callable[[StepProgress], None] | None = field(default=None, compare=False)  # per step / tile

    def batch_key(self) -> tuple[Any, ...]:
        """Tasks with equal keys may share a micro-batch."""
        cfg = json.dumps(self.config.to_dict(), sort_keys=True, default=str)
        return (self.image.height, self.image.width, cfg, self.fmt, self.quality, self.keep_exif)


class AbandonedError(Exception):
    """Every request of a running micro-batch was abandoned (client gone, timed out): stopped between steps."""


@dataclass
class _Task:
    future: Future[Any]
    request: ProtectRequest | None = None  # a protect task ...
    call: Callable[[Engine], Any] | None = None  # ... or any other use of the model (diagnostics)
    enqueued: float = field(default_factory=time.monotonic)


class EngineWorker:
    """A bounded queue in front of one Engine, served by one thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        queue_size: int = 16,
        max_batch: int = 4,
        metrics: Metrics | None = None,
        retry_after_s: int = 5,
        generator: str | None = None,
    ) -> None:
        self.engine = engine
        self.generator = generator  # fast modes' weights path (the operator's PCA_GENERATOR; None: shipped)
        self.queue_size = int(queue_size)
        self.max_batch = int(max_batch)
        self.metrics = metrics
        self.retry_after_s = retry_after_s
        self._tasks: deque[_Task] = deque()
        self._cond = threading.Condition(threading.RLock())
        self._stop = False
        self._thread: threading.Thread | None = None
        self.processed = 0  # images and calls finished (ok or not), for tests and logs

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self.engine.max_memory is not None and self.engine.encoder.device.type == "cpu":
            bound_heap()  # PCA_MAX_MEMORY is set after the engine is built: RSS must follow the live tensors
        self._thread = threading.Thread(target=self._run, name="pca-engine-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking tasks, fail the waiting ones, join the thread."""
        with self._cond:
            self._stop = True
            pending = list(self._tasks)
            self._tasks.clear()
            self._cond.notify_all()
        for task in pending:
            if task.future.set_running_or_notify_cancel():
                task.future.set_exception(RuntimeError("the service is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop

    @property
    def depth(self) -> int:
        """Tasks waiting (not counting the batch being run)."""
        return len(self._tasks)

    # -- submitting ---------------------------------------------------------------------------------
    def submit(self, request: ProtectRequest) -> Future[ProtectedImage]:
        """Queue one image; raises QueueFullError (429) when the queue is full."""
        return self.submit_many([request])[0]

    def submit_many(
        self, requests: Sequence[ProtectRequest], *, block: bool = False, timeout: float | None = None
    ) -> list[Future[ProtectedImage]]:
        """Queue several images atomically (so they can share a batch). ``block`` waits for room."""
        return self._enqueue([_Task(Future(), request=r) for r in requests], block, timeout)

    def call(self, fn: Callable[[Engine], Any]) -> Future[Any]:
        """Run ``fn(engine)`` on the worker thread (diagnostics use the model too)."""
        return self._enqueue([_Task(Future(), call=fn)], False, None)[0]

    def _enqueue(self, tasks: list[_Task], block: bool, timeout: float | None) -> list[Future[Any]]:
        if len(tasks) > self.queue_size:
            raise ValueError(f"{len(tasks)} tasks can never fit a queue of {self.queue_size}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._stop:
                    raise RuntimeError("the engine worker is stopped")
                if len(self._tasks) + len(tasks) <= self.queue_size:
                    break
                if not block:
                    if self.metrics is not None:
                        self.metrics.rejected.inc()
                    raise QueueFullError(self.retry_after_s)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise QueueFullError(self.retry_after_s)
                self._cond.wait(remaining if remaining is not None else 1.0)
            for task in tasks:
                self._tasks.append(task)
                task.future.add_done_callback(self._forget)
            self._update_depth()
            self._cond.notify_all()
        return [t.future for t in tasks]

    def _forget(self, future: Future[Any]) -> None:
        """A future cancelled while waiting leaves the queue now (its slot is free again)."""
        if not future.cancelled():
            return
        with self._cond:
            for task in list(self._tasks):
                if task.future is future:
                    self._tasks.remove(task)
            self._update_depth()
            self._cond.notify_all()

    def _update_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._tasks))

    # -- the thread ---------------------------------------------------------------------------------
    def _take(self) -> list[_Task] | None:
        with self._cond:
            while not self._tasks and not self._stop:
                self._cond.wait(1.0)
            if self._stop:
                return None
            first = self._tasks.popleft()
            batch = [first]
            if first.request is not None:
                key = first.request.batch_key()
                for task in list(self._tasks):
                    if len(batch) >= self.max_batch:
                        break
                    if task.request is not None and task.request.batch_key() == key:
                        self._tasks.remove(task)
                        batch.append(task)
            self._update_depth()
            self._cond.notify_all()  # room for blocked submitters
        return [t for t in batch if t.future.set_running_or_notify_cancel()]

    def _run(self) -> None:
        log.info("engine worker started (queue %d, max batch %d)", self.queue_size, self.max_batch)
        while True:
            try:
                batch = self._take()
                if batch is None:
                    break
                if batch:
                    self._execute(batch)
            except BaseException:  # the thread must survive anything a task does
                log.exception("engine worker: unexpected error (worker keeps running)")
        log.info("engine worker stopped")

    def _execute(self, batch: list[_Task]) -> None:
        if self.metrics is not None:
            self.metrics.in_flight.set(len(batch))
        try:
            first = batch[0]
            if first.call is not None:
                self._finish(first, lambda: first.call(self.engine) if first.call else None)
                return
            try:
                results = self._protect([t.request for t in batch if t.request is not None])
            except Exception:
                if len(batch) == 1:
                    raise
                # one bad image must not fail its batch-mates: retry them one by one (not the abandoned ones)
                for task in batch:
                    req = task.request
                    assert req is not None
                    if req.abandoned.is_set():
                        self._fail(task, AbandonedError("the request was abandoned by its client"))
                        continue
                    self._finish(task, lambda req=req: self._protect([req])[0])  # type: ignore[misc]
                return
            for task, result in zip(batch, results, strict=True):
                task.future.set_result(result)
                self.processed += 1
        except Exception as exc:
            for task in batch:
                if not task.future.done():
                    self._fail(task, exc)
        finally:
            if self.metrics is not None:
                self.metrics.in_flight.set(0)

    def _finish(self, task: _Task, fn: Callable[[], Any]) -> None:
        try:
            task.future.set_result(fn())
        except Exception as exc:
            self._fail(task, exc)
        self.processed += 1

    def _fail(self, task: _Task, exc: Exception) -> None:
        if isinstance(exc, AbandonedError):
            if not task.future.done():
                task.future.set_exception(exc)
            return
        if self.metrics is not None:
            self.metrics.image_failures.labels(code=type(exc).__name__).inc()
        from pca_attack.errors import PCAError

        if not isinstance(exc, PCAError):
            log.error("engine task failed: %r", exc, exc_info=exc)
        if not task.future.done():
            task.future.set_exception(exc)

    def _protect(self, requests: list[ProtectRequest]) -> list[ProtectedImage]:
        head = requests[0]
        t0 = time.perf_counter()
        if self.engine.max_memory is not None:  # the budget counts the whole process as it is NOW (issue 12)
            self.engine.baseline_memory = memory_in_use(self.engine.encoder.device)
        config = head.config if self.generator is None else head.config.with_(generator=self.generator)
        results = self.engine.protect(
            [r.image for r in requests],
            config,
            fmt=head.fmt,
            quality=head.quality,
            keep_exif=head.keep_exif,
            progress=partial(_on_step, requests),
        )
        elapsed = time.perf_counter() - t0
        if self.metrics is not None and results:
            self.metrics.record_batch(len(results), results[0].certificate.steps_run, elapsed, head.fmt)
        return results


def _on_step(requests: list[ProtectRequest], indices: list[int], event: StepProgress) -> None:
    """Progress callback of the engine: tell each running request's listener (job rows) where its attack is;
    once every image of the running micro-batch is abandoned, stop between PGD steps (or tiles) instead of
    computing for nobody. A failing listener never stops the attack."""
    for i in indices:
        listener = requests[i].on_progress
        if listener is not None:
            try:
                listener(event)
            except Exception:
                log.warning("progress listener failed (the attack goes on)", exc_info=True)
    if indices and all(requests[i].abandoned.is_set() for i in indices):
        raise AbandonedError(f"stopped at step {event.step}/{event.steps}: the client went away")
