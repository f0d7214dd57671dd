"""Per-image progress for the CLI: a first line with the image's size, plan, estimated memory and time, then
a step bar with ETA fed by the engine's per-step (and per-tile) progress events."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from pca_cli.messages import say


class CountColumn(ProgressColumn):
    """``3/10`` on a files bar; ``step 2/40 tile 3/4`` on an image's step bar (a task with a ``where`` field)."""

    def render(self, task: Task) -> Text:
        where = task.fields.get("where")
        return Text(str(where) if where is not None else f"{int(task.completed)}/{int(task.total or 0)}")


STEP_COLUMNS = (
    TextColumn("{task.description}"), BarColumn(), CountColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
)


class ImageProgress:
    """``on_plan`` / ``on_step`` callbacks of ``Engine.protect`` drawing on a rich ``Progress``."""

    def __init__(self, progress: Progress, console: Console) -> None:
        self.progress = progress
        self.console = console
        self.name = ""
        self.task: TaskID | None = None

    def start(self, name: str) -> None:
        """A new file begins (its plan comes with the first ``on_plan``)."""
        self.name = name

    def on_plan(self, indices: list[int], plan: Any) -> None:
        say(self.console, f"{self.name}: {plan.describe()}")
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"  {self.name}", total=1.0, where="")

    def on_step(self, indices: list[int], event: Any) -> None:
        if self.task is None:
            return
        where = f"step {event.step}/{event.steps}" + (f" tile {event.tile}/{event.tiles}" if event.tiles > 1 else "")
        self.progress.update(self.task, completed=event.fraction, where=where)

    def done(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
