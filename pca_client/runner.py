"""Folder batches you can trust with 100,000 files: plan, resume, protect, write atomically, record.

The same runner serves ``pca-protect batch --local`` (the in-process engine) and ``--server URL`` (the
HTTP client): both are a *processor*, a callable ``(path, data) -> (output bytes, suffix, certificate)``.

* **Plan.** Walk SRC recursively, keep supported image suffixes that pass the include/exclude globs and
  mirror each one into DST (``a/b/x.jpg`` -> ``DST/a/b/x.png`` for PNG output; when two sources of one
  folder would map to the same output, e.g. ``x.jpg`` and ``x.png``, both keep their full name:
  ``x.jpg.png``, ``x.png.png``). DST == SRC or DST inside SRC is refused unless ``in_place``.
* **Atomic writes.** Output bytes go to a hidden temp file in the destination folder, are fsynced and
  renamed over the target with ``os.replace``; an output file is therefore either absent, the previous
  version or complete. Temp files of an interrupted run are removed when the next run starts.
* **Manifest.** ``DST/.pca-manifest.jsonl`` gets one JSON line per processed file *after* its output is
  in place (status, source sha256, settings fingerprint, output path and sha256, certificate, error).
  The last line of a source wins; a torn last line (``kill -9``) is ignored.
* **Resume.** A file is skipped when its latest manifest line says ``done``, the output exists, and both
  the source sha256 and the settings fingerprint match; otherwise it is (re)done.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pca_attack.io.images import INPUT_SUFFIXES

MANIFEST_NAME = ".pca-manifest.jsonl"
CSV_NAME = ".pca-manifest.csv"
TEMP_PREFIX = ".pca-tmp-"
OUTPUT_SUFFIXES = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp"}

Processor = Callable[[Path, bytes], tuple[bytes, str, dict[str, Any]]]
Status = Literal["done", "failed", "skipped"]


class BatchError(Exception):
    """The batch cannot start (bad folders) or was aborted (a fatal processor error)."""


# -- settings ----------------------------------------------------------------------------------------
def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """Short stable hash of the attack + output settings (key order and None-valued keys ignored)."""
    clean = {k: v for k, v in sorted(settings.items()) if v is not None}
    blob = json.dumps(clean, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# -- planning ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One source image and where its protected copy goes."""

    source: Path
    rel: str  # source path relative to SRC, with '/'
    output: Path
    out_rel: str  # output path relative to DST, with '/'


def check_folders(src: Path, dst: Path, *, in_place: bool = False) -> tuple[Path, Path]:
    """Resolve both folders; refuse DST == SRC or DST inside SRC unless ``in_place``."""
    src_r, dst_r = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if not src_r.is_dir():
        raise BatchError(f"source folder {src} does not exist or is not a folder")
    if dst_r.exists() and not dst_r.is_dir():
        raise BatchError(f"destination {dst} exists and is not a folder")
    if not in_place:
        if dst_r == src_r:
            raise BatchError(f"destination {dst} is the source folder; pass --in-place to allow it")
        if src_r in dst_r.parents:
            raise BatchError(f"destination {dst} is inside the source folder {src}; pass --in-place to allow it")
    return src_r, dst_r


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def wanted(rel: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> bool:
    """Supported suffix, matched by an include glob (if any) and by no exclude glob.

    A glob matches the path relative to SRC (``*`` also crosses folders) or the bare file name.
    """
    name = rel.rsplit("/", 1)[-1]
    if name.startswith(".pca-") or PurePosixPath(name).suffix.lower() not in INPUT_SUFFIXES:
        return False
    if include and not _matches(rel, include):
        return False
    return not (exclude and _matches(rel, exclude))


def walk_sources(src: Path, skip_dirs: Iterable[Path] = ()) -> list[str]:
    """Every file under ``src`` (relative '/' paths, sorted), not descending into ``skip_dirs``."""
    skip = {Path(d).resolve() for d in skip_dirs}
    found: list[str] = []
    for root, dirs, files in os.walk(src):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if (here / d).resolve() not in skip)
        base = here.relative_to(src).as_posix()
        found.extend(f if base == "." else f"{base}/{f}" for f in files)
    return sorted(found)


def output_suffix(fmt: str) -> str:
    try:
        return OUTPUT_SUFFIXES[fmt.lower().lstrip(".")]
    except KeyError:
        raise BatchError(f"output format {fmt!r} is not supported; choose png, jpeg or webp") from None


def plan_tasks(src: Path, dst: Path, rels: Iterable[str], fmt: str) -> list[Task]:
    """Mirror ``rels`` into ``dst`` with the output suffix; colliding outputs keep the full source name."""
    suffix = output_suffix(fmt)
    targets: dict[str, list[str]] = {}
    for rel in sorted(set(rels)):
        p = PurePosixPath(rel)
        targets.setdefault(str(p.with_suffix(suffix)), []).append(rel)
    tasks: list[Task] = []
    for target, group in targets.items():
        for rel in group:
            out_rel = f"{rel}{suffix}" if len(group) > 1 else target
            tasks.append(Task(src / rel, rel, dst / out_rel, out_rel))
    return sorted(tasks, key=lambda t: t.rel)


# -- manifest ----------------------------------------------------------------------------------------
class Manifest:
    """Append-only JSON-lines record of DST; the latest line per source wins."""

    def __init__(self, dst: Path) -> None:
        self.path = dst / MANIFEST_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        self.lines = 0
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by kill -9
                if isinstance(entry, dict) and isinstance(entry.get("source"), str):
                    self.entries[entry["source"]] = entry
                    self.lines += 1

    def outputs(self) -> set[str]:
        """Output paths (relative to DST) the manifest knows, done or not."""
        return {e["output"] for e in self.entries.values() if isinstance(e.get("output"), str)}

    def append(self, entry: dict[str, Any]) -> None:
        """Append one line durably (flush + fsync); repairs a torn last line first."""
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as fh:
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        fh.write(b"\n")
                fh.write(line.encode())
                fh.flush()
                os.fsync(fh.fileno())
            self.entries[entry["source"]] = entry
            self.lines += 1

    def compact(self) -> None:
        """Rewrite atomically with only the latest line per source (drops history)."""
        with self._lock:
            body = "".join(json.dumps(e, sort_keys=True, default=str) + "\n" for e in self.entries.values())
            atomic_write(self.path, body.encode())
            self.lines = len(self.entries)

    def write_csv(self, path: Path | None = None) -> Path:
        """A flat CSV view (certificate reduced to its headline numbers)."""
        target = path or self.path.with_name(CSV_NAME)
        cols = [
            "source",
            "status",
            "output",
            "error",
            "source_sha256",
            "settings_fingerprint",
            "output_sha256",
            "linf_255",
            "budget_ok",
            "psnr_db",
            "ssim",
            "time",
        ]
        rows = []
        for entry in self.entries.values():
            cert = entry.get("certificate") or {}
            row = {c: entry.get(c) for c in cols}
            row.update({k: cert.get(k) for k in ("linf_255", "budget_ok", "psnr_db", "ssim")})
            rows.append(row)
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(target, buf.getvalue().encode())
        return target


# -- atomic writes -----------------------------------------------------------------------------------
def atomic_write(path: Path, data: bytes, cancel: threading.Event | None = None) -> None:
    """Write ``data`` to ``path`` through a fsynced temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if cancel is not None and cancel.is_set():
            raise InterruptedError("batch interrupted before the output was renamed into place")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folders: Iterable[Path]) -> int:
    """Delete temp files a killed run left in ``folders``; returns how many."""
    removed = 0
    for folder in set(folders):
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


# -- processors --------------------------------------------------------------------------------------
class EngineProcessor:
    """The in-process processor: one ``Engine`` (serialised by a lock; the engine is not re-entrant)."""

    def __init__(
        self,
        engine: Any,
        config: Any,
        *,
        fmt: str = "png",
        quality: int | None = None,
        keep_exif: bool = True,
    ) -> None:
        self.engine, self.config = engine, config
        self.fmt, self.quality, self.keep_exif = fmt, quality, keep_exif
        self._lock = threading.Lock()

    def __call__(self, path: Path, data: bytes) -> tuple[bytes, str, dict[str, Any]]:
        with self._lock:
            out = self.engine.protect_bytes(
                data, self.config, fmt=self.fmt, quality=self.quality, keep_exif=self.keep_exif
            )
        return out.data, out.suffix, out.certificate.model_dump(mode="json")


# -- results -----------------------------------------------------------------------------------------
@dataclass
class FileResult:
    """What happened to one source file in this run."""

    rel: str
    status: Status
    output: str | None = None  # relative to DST
    error: str | None = None
    reason: str = ""  # why it was (re)done or skipped: new, source changed, settings changed, ...
    certificate: dict[str, Any] | None = None
    source_sha256: str | None = None
    output_sha256: str | None = None
    elapsed_s: float = 0.0


@dataclass
class BatchReport:
    """Totals of one run; ``failed`` keeps the failing results (path + error)."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[FileResult] = field(default_factory=list)
    interrupted: bool = False
    aborted: str | None = None  # why the batch stopped early (a fatal processor error)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted and self.aborted is None

    def add(self, result: FileResult) -> None:
        if result.status == "done":
            self.done += 1
        elif result.status == "skipped":
            self.skipped += 1
        else:
            self.failed.append(result)


@dataclass
class DryRun:
    """What a run would do: ``todo`` with the reason for each, and how many are up to date."""

    todo: list[tuple[Task, str]] = field(default_factory=list)
    up_to_date: list[Task] = field(default_factory=list)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- the runner --------------------------------------------------------------------------------------
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
        out_rel = task.out_rel
        if suffix and not out_rel.endswith(suffix):
            out_rel = str(PurePosixPath(out_rel).with_suffix(suffix))
        atomic_write(self.dst / out_rel, out, self.cancel)
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

    def run(
        self,
        only: Iterable[str] | None = None,
        *,
        on_plan: Callable[[int], None] | None = None,
        on_result: Callable[[FileResult], None] | None = None,
    ) -> BatchReport:
        """Process the plan with ``jobs`` in flight; Ctrl-C stops cleanly (report.interrupted)."""
        t0 = time.perf_counter()
        tasks = self.tasks(only)
        remove_stale_temps({t.output.parent for t in tasks} | {self.dst})
        report = BatchReport(total=len(tasks))
        if on_plan is not None:
            on_plan(len(tasks))
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="pca-batch")
        pending: set[Future[FileResult]] = set()
        queue = iter(tasks)

        def collect(futures: Iterable[Future[FileResult]], *, quiet: bool = False) -> None:
            """Record finished futures (each once); then re-raise the first worker exception."""
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

        try:
            while True:
                while len(pending) < 2 * self.jobs and (task := next(queue, None)) is not None:
                    pending.add(pool.submit(self._process, task))
                if not pending:
                    break
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                collect(finished)
        except KeyboardInterrupt:
            report.interrupted = True
        except Exception as exc:
            if not getattr(exc, "fatal", False):
                self.cancel.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            report.aborted = str(exc) or type(exc).__name__
        except BaseException:
            self.cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        if report.interrupted or report.aborted:
            self.cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)
            pending.difference_update([f for f in pending if f.cancelled()])  # never notify a waiter
            finished, _ = wait(pending, timeout=self.grace_s)
            collect(finished, quiet=True)  # outputs already in place get their manifest line
        else:
            pool.shutdown(wait=True)
        if self.write_csv:
            self.manifest.write_csv()
        report.elapsed_s = time.perf_counter() - t0
        return report

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
