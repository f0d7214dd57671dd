"""``pca-protect batch SRC DST --ray [auto|ADDRESS]``: the folder job on a Ray cluster with Ray Data.

Only the processing step changes; planning, resume, the atomic write and the manifest are the folder
runner's (``pca_client.runner.BatchRunner``), so ``--ray`` and ``--local`` resume each other and write the
same outputs and manifest lines for the same seed.

* The driver plans, hashes each source (resume rule) and hands the pending paths to Ray Data
  (``ray.data.from_items``, one row per file). Workers read the files as bytes themselves (never
  ``read_images``, which decodes and resizes).
* ``map_batches`` runs ``ProtectActor``, a stateful class: each actor loads the engine once
  (``EngineProcessor``, one image per forward pass, as ``--local``). One GPU per actor when the cluster has
  GPUs, one CPU slot per actor otherwise (torch then uses ``cpus // actors`` threads).
* Ray Data restarts a dead actor and retries its batch (``max_restarts=-1``, ``max_task_retries=-1``);
  the driver writes each result and its certificate with the runner's ``write_output`` (atomic), so a
  killed worker leaves no partial file.

Ray is the optional extra ``pip install 'pca-protect[ray]'``; it is imported only here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pca_attack.models.registry import DEFAULT_MODEL
from pca_attack.options import ProtectOptions
from pca_client.manifest import sha256_bytes, sha256_file
from pca_client.plan import BatchError, Task
from pca_client.results import BatchReport, FileResult
from pca_client.runner import BatchRunner

RAY_MISSING = "Ray is not installed: pip install 'pca-protect[ray]' (ray[data,serve])"


def import_ray() -> Any:
    """``ray``, or a BatchError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise BatchError(RAY_MISSING) from exc
    return ray


def connect(address: str) -> Any:
    """Join the cluster: ``auto`` = $RAY_ADDRESS, else a running local cluster, else a new local one."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "auto" else address, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise BatchError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
    return ray


@dataclass(frozen=True)
class ActorPlan:
    """How many engine actors, and what each one reserves."""

    actors: int
    num_gpus: float
    threads: int  # torch threads per CPU actor


def plan_actors(resources: dict[str, float], wanted_actors: int) -> ActorPlan:
    """One actor per GPU (up to ``wanted_actors``); on CPU clusters one CPU slot each, threads shared."""
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus > 0:
        return ActorPlan(max(1, min(wanted_actors, gpus)), 1.0, 1)
    actors = max(1, min(wanted_actors, cpus))
    return ActorPlan(actors, 0.0, max(1, cpus // actors))


class ProtectActor:
    """Ray Data stateful UDF: the engine is loaded once per actor; a batch of paths in, outputs out."""

    def __init__(self, options: dict[str, Any], model: str, device: str, dtype: str, threads: int) -> None:
        import torch

        from pca_cli.local import local_processor

        if device != "cuda" and threads > 0:
            torch.set_num_threads(threads)
        self.processor = local_processor(ProtectOptions(**options), model, device, dtype)

    def protect(self, path: str) -> dict[str, Any]:
        """One file: read the bytes here, protect, or report the error as the runner does."""
        t0 = time.perf_counter()
        row: dict[str, Any] = {"data": b"", "suffix": "", "certificate": "", "error": "", "source_sha256": ""}
        row["elapsed_s"] = 0.0
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            row["error"] = f"cannot read file: {exc.strerror or exc}"
            return row
        row["source_sha256"] = sha256_bytes(data)
        try:
            out, suffix, cert = self.processor(Path(path), data)
        except Exception as exc:  # an unreadable image fails that file, not the batch
            row["error"] = str(exc) or type(exc).__name__
            return row
        row.update(data=out, suffix=suffix, certificate=json.dumps(cert))
        row["elapsed_s"] = time.perf_counter() - t0
        return row

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        rows = [self.protect(str(p)) for p in batch["path"]]
        columns: dict[str, Any] = {"rel": batch["rel"]}
        for key in ("data", "suffix", "certificate", "error", "source_sha256", "elapsed_s"):
            columns[key] = np.array([r[key] for r in rows], dtype=object)
        return columns


class RayBatchRunner(BatchRunner):
    """``BatchRunner`` whose processing step is a Ray Data ``map_batches`` over the pending files."""

    def __init__(
        self,
        src: Path,
        dst: Path,
        options: ProtectOptions,
        *,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        workers: int = 1,
        actor_cls: type = ProtectActor,
        **kwargs: Any,
    ) -> None:
        super().__init__(src, dst, _driver_never_protects, settings=options.settings(), fmt=options.format, **kwargs)
        self.options, self.model, self.device, self.dtype = options, model, device, dtype
        self.workers, self.actor_cls = max(1, workers), actor_cls

    def run(
        self,
        only: Iterable[str] | None = None,
        *,
        on_plan: Callable[[int], None] | None = None,
        on_result: Callable[[FileResult], None] | None = None,
    ) -> BatchReport:
        """Plan and resume as the runner does, protect the pending files on Ray, record each result."""
        t0 = time.perf_counter()
        tasks, report = self.begin(only, on_plan)
        pending: dict[str, tuple[Task, str]] = {}
        for task in tasks:
            result = self._triage(task)
            if isinstance(result, str):
                pending[task.rel] = (task, result)
            else:
                self._finish(result, report, on_result)
        try:
            for row in self._stream(pending):
                task, why = pending[str(row["rel"])]
                self._finish(self._result(task, why, row), report, on_result)
        except KeyboardInterrupt:
            report.interrupted = True
        return self.end(report, t0)

    def _triage(self, task: Task) -> FileResult | str:
        """The reason to protect ``task``, or its final result (up to date, unreadable)."""
        try:
            sha = sha256_file(task.source)
        except OSError as exc:
            return FileResult(task.rel, "failed", error=f"cannot read file: {exc.strerror or exc}", reason="new")
        why = self.reason(task, sha)
        if why is None:
            self.restore_certificate(task)
            return FileResult(task.rel, "skipped", task.out_rel, reason="up to date", source_sha256=sha)
        return why

    def _finish(self, result: FileResult, report: BatchReport, on_result: Callable[[FileResult], None] | None) -> None:
        self._record(result)
        report.add(result)
        if on_result is not None:
            on_result(result)

    def _stream(self, pending: dict[str, tuple[Task, str]]) -> Iterator[dict[str, Any]]:
        """Rows of protected files as Ray Data finishes them (any order)."""
        if not pending:
            return
        import_ray()
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        plan = plan_actors(ray.cluster_resources(), self.workers)
        items = [{"rel": rel, "path": str(task.source)} for rel, (task, _) in pending.items()]
        device = "cuda" if plan.num_gpus and self.device == "auto" else self.device
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            self.actor_cls,
            batch_size=1,  # one image per forward pass: the same arithmetic (and bytes) as --local
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            num_cpus=1,
            num_gpus=plan.num_gpus or None,
            fn_constructor_kwargs={
                "options": self.options.model_dump(),
                "model": self.model,
                "device": device,
                "dtype": self.dtype,
                "threads": plan.threads,
            },
        )
        yield from dataset.iter_rows()

    def _result(self, task: Task, why: str, row: dict[str, Any]) -> FileResult:
        """Write a protected file and its certificate atomically (the runner's naming) and describe it."""
        sha = str(row["source_sha256"]) or None
        if row["error"]:
            return FileResult(task.rel, "failed", error=str(row["error"]), reason=why, source_sha256=sha,
                              elapsed_s=float(row["elapsed_s"]))
        out, cert = bytes(row["data"]), json.loads(str(row["certificate"]))
        out_rel = self.write_output(task, out, str(row["suffix"]), cert)  # and its certificate beside it
        return FileResult(
            task.rel,
            "done",
            out_rel,
            reason=why,
            certificate=cert,
            source_sha256=sha,
            output_sha256=sha256_bytes(out),
            elapsed_s=float(row["elapsed_s"]),
        )


def _driver_never_protects(path: Path, data: bytes) -> tuple[bytes, str, dict[str, Any]]:
    raise RuntimeError("RayBatchRunner protects on Ray actors, never in the driver")
