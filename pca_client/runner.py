"""Folder batches you can trust with 100,000 files: plan, resume, protect, write atomically, record.

The same runner serves ``pca-protect batch --local`` (the in-process engine, ``pca_cli.local``) and
``--server URL`` (``pca_client.http``): both are a *processor*, a callable
``(path, data) -> (output bytes, suffix, certificate)``. Planning is ``pca_client.plan``, the record is
``pca_client.manifest``.

* **Atomic writes.** Outputs go through ``pca_attack.io.files.atomic_write``: an output file is either
  absent, the previous version or complete. Temp files of an interrupted run are removed when the next
  run starts.
* **Resume.** A file is skipped when its latest manifest line says ``done``, the output exists, and both
  the source sha256 and the settings fingerprint match; otherwise it is (re)done.
* **Names.** ``pca_attack.io.names``: the output keeps the source's name with the format's suffix, its
  certificate is ``<output>.json`` beside it (rewritten from the manifest when a skipped file lacks it).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path, PurePosixPath
from typing import Any

from pca_attack.io.files import atomic_write, remove_stale_temps
from pca_attack.io.names import certificate_name
from pca_client.manifest import Manifest, settings_fingerprint, sha256_bytes, sha256_file
from pca_client.plan import Task, check_folders, output_suffix, plan_tasks, walk_sources, wanted
from pca_client.results import BatchReport, DryRun, FileResult

Processor = Callable[[Path, bytes], tuple[bytes, str, dict[str, Any]]]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class BatchRunner:
    """Protect every wanted image of ``src`` into ``dst`` with ``processor``; resumable and atomic.

    ``settings`` are the attack + output settings (they go into the fingerprint and the manifest);
    ``fmt`` decides the output suffix used for mirroring. ``jobs`` files are in flight at once.
    """

    def __init__(
        self,
        src: Path,
        dst: Path,
        processor: Processor,
        *,
        settings: Mapping[str, Any],
        fmt: str = "png",
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        jobs: int = 1,
        in_place: bool = False,
        write_csv: bool = False,
        grace_s: float = 10.0,
    ) -> None:
        self.src, self.dst = check_folders(src, dst, in_place=in_place)
        self.processor = processor
        self.settings = dict(settings)
        self.fingerprint = settings_fingerprint(self.settings)
        self.fmt = fmt
        output_suffix(fmt)  # validate early
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.jobs = max(1, int(jobs))
        self.write_csv = write_csv
        self.grace_s = grace_s
        self.cancel = threading.Event()
        self.manifest = Manifest(self.dst)

    # planning
    def tasks(self, only: Iterable[str] | None = None) -> list[Task]:
        """The mirrored plan (optionally restricted to the ``only`` relative paths)."""
        inside = self.src in self.dst.parents
        rels = walk_sources(self.src, skip_dirs=[self.dst] if inside else [])
        if self.dst == self.src:  # in place: outputs of earlier runs are not new sources
            known_out = self.manifest.outputs() - set(self.manifest.entries)
            rels = [r for r in rels if r not in known_out]
        rels = [r for r in rels if wanted(r, self.include, self.exclude)]
        planned = plan_tasks(self.src, self.dst, rels, self.fmt)
        if only is not None:
            keep = set(only)
            planned = [t for t in planned if t.rel in keep]
        return planned

    def reason(self, task: Task, sha: str) -> str | None:
        """Why ``task`` must be (re)done, or None when the manifest says it is up to date."""
        entry = self.manifest.entries.get(task.rel)
        if entry is None:
            return "new"
        if entry.get("status") != "done":
            return "failed before"
        if entry.get("settings_fingerprint") != self.fingerprint:
            return "settings changed"
        if entry.get("output") != task.out_rel or not task.output.is_file():
            return "output missing"
        same_file = task.output == task.source and entry.get("output_sha256") == sha
        if entry.get("source_sha256") != sha and not same_file:
            return "source changed"
        return None

    def dry_run(self, only: Iterable[str] | None = None) -> DryRun:
        """Plan and check resume state without writing anything."""
        plan = DryRun()
        for task in self.tasks(only):
            try:
                why = self.reason(task, sha256_file(task.source))
            except OSError as exc:
                why = f"unreadable ({exc.strerror or exc})"
            if why is None:
                plan.up_to_date.append(task)
            else:
                plan.todo.append((task, why))
        return plan

    # processing
    def _process(self, task: Task) -> FileResult:
        t0 = time.perf_counter()
        if self.cancel.is_set():
            return FileResult(task.rel, "failed", error="interrupted", reason="interrupted")
        try:
            data = task.source.read_bytes()
        except OSError as exc:
            return FileResult(task.rel, "failed", error=f"cannot read file: {exc.strerror or exc}")
        sha = sha256_bytes(data)
        why = self.reason(task, sha)
        if why is None:
            self.restore_certificate(task)
            return FileResult(task.rel, "skipped", task.out_rel, reason="up to date", source_sha256=sha)
        try:
            out, suffix, cert = self.processor(task.source, data)
        except Exception as exc:
            if getattr(exc, "fatal", False):
                raise
            message = str(exc) or type(exc).__name__
            return FileResult(
                task.rel,
                "failed",
                error=message,
                reason=why,
                source_sha256=sha,
                elapsed_s=time.perf_counter() - t0,
            )
        out_rel = self.write_output(task, out, suffix, cert)
        return FileResult(
            task.rel,
            "done",
            out_rel,
            reason=why,
            certificate=cert,
            source_sha256=sha,
            output_sha256=sha256_bytes(out),
            elapsed_s=time.perf_counter() - t0,
        )

    def write_output(self, task: Task, out: bytes, suffix: str, cert: Mapping[str, Any]) -> str:
        """Write a protected file and then its certificate beside it (both atomically); the output's path
        relative to DST (the planned one, with ``suffix`` when the processor answered another format)."""
        out_rel = task.out_rel
        if suffix and not out_rel.endswith(suffix):
            out_rel = str(PurePosixPath(out_rel).with_suffix(suffix))
        atomic_write(self.dst / out_rel, out, self.cancel)
        report = {**cert, "source": task.rel, "output": out_rel}
        atomic_write(self.dst / certificate_name(out_rel), json.dumps(report, indent=2).encode())  # never cancelled
        return out_rel

    def restore_certificate(self, task: Task) -> None:
        """An up-to-date output whose certificate file is missing (an older run) gets it from the manifest."""
        path = self.dst / certificate_name(task.out_rel)
        cert = self.manifest.entries.get(task.rel, {}).get("certificate")
        if isinstance(cert, dict) and not path.exists():
            report = {**cert, "source": task.rel, "output": task.out_rel}
            atomic_write(path, json.dumps(report, indent=2).encode())

    def _record(self, result: FileResult) -> None:
        if result.status == "skipped" or result.reason == "interrupted":
            return
        self.manifest.append(
            {
                "source": result.rel,
                "status": result.status,
                "output": result.output,
                "error": result.error,
                "reason": result.reason,
                "source_sha256": result.source_sha256,
                "output_sha256": result.output_sha256,
                "settings_fingerprint": self.fingerprint,
                "settings": self.settings,
                "certificate": result.certificate,
                "elapsed_s": round(result.elapsed_s, 4),
                "time": _now(),
            }
        )

    def begin(
        self, only: Iterable[str] | None, on_plan: Callable[[int], None] | None
    ) -> tuple[list[Task], BatchReport]:
        """The planned tasks and an empty report; stale temp files of an interrupted run removed first."""
        tasks = self.tasks(only)
        remove_stale_temps({t.output.parent for t in tasks} | {self.dst})
        if on_plan is not None:
            on_plan(len(tasks))
        return tasks, BatchReport(total=len(tasks))

    def run(
        self,
        only: Iterable[str] | None = None,
        *,
        on_plan: Callable[[int], None] | None = None,
        on_result: Callable[[FileResult], None] | None = None,
    ) -> BatchReport:
        """Process the plan with ``jobs`` in flight; Ctrl-C stops cleanly (report.interrupted)."""
        t0 = time.perf_counter()
        tasks, report = self.begin(only, on_plan)
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="pca-batch")
        pending: set[Future[FileResult]] = set()
        queue = iter(tasks)
        try:
            while True:
                while len(pending) < 2 * self.jobs and (task := next(queue, None)) is not None:
                    pending.add(pool.submit(self._process, task))
                if not pending:
                    break
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                self._collect(finished, pending, report, on_result)
        except KeyboardInterrupt:
            report.interrupted = True
        except Exception as exc:
            if not getattr(exc, "fatal", False):
                self._abandon(pool)
                raise
            report.aborted = str(exc) or type(exc).__name__
        except BaseException:
            self._abandon(pool)
            raise
        if report.interrupted or report.aborted:
            self._abandon(pool)
            pending.difference_update([f for f in pending if f.cancelled()])  # never notify a waiter
            finished, _ = wait(pending, timeout=self.grace_s)
            self._collect(finished, pending, report, on_result, quiet=True)  # outputs in place get their line
        else:
            pool.shutdown(wait=True)
        return self.end(report, t0)

    def end(self, report: BatchReport, started: float) -> BatchReport:
        """Close a run: the CSV view of the manifest (when asked) and the elapsed time."""
        if self.write_csv:
            self.manifest.write_csv()
        report.elapsed_s = time.perf_counter() - started
        return report

    def _abandon(self, pool: ThreadPoolExecutor) -> None:
        """Stop starting work: running files finish or are cancelled before their rename."""
        self.cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)

    def _collect(
        self,
        futures: Iterable[Future[FileResult]],
        pending: set[Future[FileResult]],
        report: BatchReport,
        on_result: Callable[[FileResult], None] | None,
        *,
        quiet: bool = False,
    ) -> None:
        """Record finished futures (each once); then re-raise the first worker exception unless ``quiet``."""
        error: BaseException | None = None
        for fut in list(futures):
            pending.discard(fut)
            exc = None if fut.cancelled() else fut.exception()
            if fut.cancelled() or exc is not None:
                error = error or exc
                continue
            result = fut.result()
            if result.reason == "interrupted":
                continue
            self._record(result)
            report.add(result)
            if on_result is not None:
                on_result(result)
        if error is not None and not quiet:
            raise error

    def watch(
        self,
        *,
        timeout_s: float | None = None,
        stop: threading.Event | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
        on_result: Callable[[FileResult], None] | None = None,
        debounce_ms: int = 800,
    ) -> BatchReport:
        """Protect files as they appear or change under SRC until ``stop``, ``timeout_s`` or Ctrl-C."""
        import watchfiles

        stop = stop or threading.Event()
        timer = threading.Timer(timeout_s, stop.set) if timeout_s else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        total = BatchReport()
        try:
            for changes in watchfiles.watch(
                self.src,
                stop_event=stop,
                debounce=debounce_ms,
                rust_timeout=500,
                yield_on_timeout=True,
                raise_interrupt=False,
            ):
                rels = self._changed(changes)
                if not rels:
                    continue
                report = self.run(rels, on_result=on_result)
                total.total += report.total
                total.done += report.done
                total.skipped += report.skipped
                total.failed.extend(report.failed)
                if on_batch is not None:
                    on_batch(report)
                if report.interrupted or report.aborted:
                    total.interrupted, total.aborted = report.interrupted, report.aborted
                    break
        finally:
            if timer is not None:
                timer.cancel()
        return total

    def _changed(self, changes: Iterable[tuple[Any, str]]) -> list[str]:
        """Wanted files among the changes; a new folder is scanned (its files may predate its watch)."""
        rels: set[str] = set()
        for kind, raw in changes:
            if int(kind) == 3:  # watchfiles.Change.deleted
                continue
            path = Path(raw)
            try:
                rel = path.resolve().relative_to(self.src).as_posix()
            except ValueError:
                continue
            if path.is_dir():
                rels.update(f"{rel}/{sub}" for sub in walk_sources(path))
            elif path.is_file():
                rels.add(rel)
        return sorted(r for r in rels if wanted(r, self.include, self.exclude))
