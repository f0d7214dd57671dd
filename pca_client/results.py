"""What a folder batch did: one ``FileResult`` per source file, the run's ``BatchReport``, a ``DryRun`` plan.

Plain records shared by the runner (``pca_client.runner``), the Ray batch and the CLI's summaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pca_client.plan import Task

Status = Literal["done", "failed", "skipped"]


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
