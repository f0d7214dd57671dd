"""``pca-protect batch SRC DST``: protect a folder tree through a service (``--server``) or in-process
(``--local``), resumable, atomic, with a progress bar, a summary table and a manifest.

Exit codes: 0 all good, 1 some files failed (listed, and kept in the manifest) or the batch was
aborted, 2 bad usage (e.g. DST inside SRC without ``--in-place``, server unreachable), 130 Ctrl-C.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pca_attack.models.registry import DEFAULT_MODEL
from pca_attack.options import ProtectOptions
from pca_cli.messages import say
from pca_cli.options import GeneratorOpt, MaxMemoryOpt, OfflineOpt, memory_budget, with_protect_options

if TYPE_CHECKING:
    from rich.console import Console

    from pca_client.results import BatchReport, DryRun, FileResult
    from pca_client.runner import BatchRunner, Processor


def _remote_processor(
    options: ProtectOptions, url: str, api_key: str | None, retries: int, timeout: float, jobs: int
) -> Processor:
    from pca_client.http import PCAClient, PCAClientError, ProtectSettings

    client = PCAClient(url, api_key=api_key, retries=retries, timeout=timeout, max_connections=max(4, jobs))
    try:
        client.health()
        warning = client.models().get("warning")
    except PCAClientError as exc:
        raise _UsageError(f"cannot reach the service at {url}: {exc.message}") from exc
    if warning:  # the server runs the bundled demo VAE: its outputs protect nothing real
        typer.echo(f"warning: the service at {url} says: {warning}", err=True)
    return client.processor(ProtectSettings(**options.settings()))


ServerOpt = Annotated[
    str | None, typer.Option("--server", envvar="PCA_SERVER", help="Service URL, e.g. http://127.0.0.1:8000.")
]
LocalOpt = Annotated[bool, typer.Option("--local", help="Use the in-process engine instead of a server.")]
RayOpt = Annotated[
    str | None,
    typer.Option("--ray", help="Protect on a Ray cluster (Ray Data): 'auto' ($RAY_ADDRESS, a running local "
                 "cluster or a new one) or a cluster ADDRESS; --jobs = engine actors. Needs pca-protect[ray]."),
]
BatchModelOpt = Annotated[
    list[str],
    typer.Option("--model", "-m", help="Model for --local (registry name or folder); several (a comma list or "
                 "a repeated --model) are attacked at once."),
]
ApiKeyOpt = Annotated[
    str | None, typer.Option("--api-key", envvar="PCA_API_KEY", help="API key of the service (X-API-Key).")
]
IncludeOpt = Annotated[
    list[str] | None, typer.Option("--include", "-i", help="Glob to keep (repeatable), e.g. '*.jpg'.")
]
ExcludeOpt = Annotated[
    list[str] | None, typer.Option("--exclude", "-x", help="Glob to skip (repeatable), e.g. 'raw/*'.")
]
WatchTimeoutOpt = Annotated[
    float | None, typer.Option("--watch-timeout", help="Stop watching after this many seconds.")
]


class _UsageError(Exception):
    """Printed and answered with exit code 2."""


def _progress(console: Console) -> Any:
    """One display for the files bar (count, rate, failures) and, with --local, the running image's step bar
    (a task without the ``failed`` field: its step / tile instead)."""
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    from pca_cli.progress import CountColumn

    class FileColumn(ProgressColumn):
        def __init__(self, render: Any, style: str = "") -> None:
            self.render_task, self.style = render, style
            super().__init__()

        def render(self, task: Any) -> Text:
            return Text(self.render_task(task) if "failed" in task.fields else "", style=self.style)

    def rate(task: Any) -> str:
        speed = task.finished_speed or task.speed
        return f"{speed:.2f} files/s" if speed else "-- files/s"

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        CountColumn(),
        FileColumn(rate, "cyan"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        FileColumn(lambda t: f"{t.fields['failed']} failed", "red"),
        console=console,
        transient=False,
    )


def _run_with_progress(runner: BatchRunner, console: Console, processor: Any = None) -> BatchReport:
    """The files bar; with the in-process processor also each image's plan line and its step bar."""
    from pca_cli.progress import ImageProgress

    state: dict[str, Any] = {}
    with _progress(console) as bar:
        if hasattr(processor, "steps"):
            processor.steps = ImageProgress(bar, console)

        def on_plan(total: int) -> None:
            state["task"] = bar.add_task("protecting", total=total, failed=0)

        def on_result(result: FileResult) -> None:
            state["failed"] = state.get("failed", 0) + (result.status == "failed")
            bar.update(state["task"], advance=1, failed=state["failed"])

        try:
            return runner.run(on_plan=on_plan, on_result=on_result)
        finally:
            if hasattr(processor, "steps"):
                processor.steps = None


def _summary(report: BatchReport, runner: BatchRunner, console: Console) -> None:
    from rich.table import Table

    table = Table(title="pca-protect batch", show_header=True)
    table.add_column("files")
    table.add_column("count", justify="right")
    for name, value in (
        ("planned", report.total),
        ("protected", report.done),
        ("up to date (skipped)", report.skipped),
        ("failed", len(report.failed)),
    ):
        table.add_row(name, str(value))
    table.add_row("elapsed", f"{report.elapsed_s:.1f} s")
    table.add_row("manifest", str(runner.manifest.path))
    console.print(table)
    for failure in report.failed:
        say(console, f"FAILED {failure.rel}: {failure.error}")
    if report.aborted:
        say(console, f"ABORTED: {report.aborted}; rerun the same command to resume")
    if report.interrupted:
        console.print("INTERRUPTED: rerun the same command to resume", markup=False)


def _print_dry_run(plan: DryRun, console: Console) -> None:
    from collections import Counter

    reasons = Counter(why for _, why in plan.todo)
    console.print(f"dry run: {len(plan.todo)} to protect, {len(plan.up_to_date)} up to date")
    for why, count in sorted(reasons.items()):
        console.print(f"  {why}: {count}")
    for task, why in plan.todo:
        console.print(f"would protect {task.rel} -> {task.out_rel} ({why})", markup=False, highlight=False)


@with_protect_options
def batch_command(
    src: Annotated[Path, typer.Argument(help="Folder to protect (walked recursively).")],
    dst: Annotated[Path, typer.Argument(help="Output folder; the tree of SRC is mirrored into it.")],
    options: ProtectOptions,
    server: ServerOpt = None,
    local: LocalOpt = False,
    ray: RayOpt = None,
    model: BatchModelOpt = (DEFAULT_MODEL,),  # type: ignore[assignment]  # typer turns the tuple into a list
    device: Annotated[str, typer.Option("--device", "-d", help="Device for --local.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="Dtype for --local (auto, fp32, fp16, bf16).")] = "auto",
    max_memory: MaxMemoryOpt = None,
    offline: OfflineOpt = False,
    generator: GeneratorOpt = None,
    api_key: ApiKeyOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Requests in flight (--local: 1).")] = 4,
    in_place: Annotated[bool, typer.Option("--in-place", help="Allow DST == SRC or DST inside SRC.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be done; write nothing.")] = False,
    write_csv: Annotated[bool, typer.Option("--csv", help="Also write DST/.pca-manifest.csv.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Then keep protecting new files until Ctrl-C.")] = False,
    watch_timeout: WatchTimeoutOpt = None,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Retries of transient errors.")] = 6,
    timeout: Annotated[float, typer.Option("--timeout", help="Per-request timeout in seconds.")] = 330.0,
) -> None:
    """Protect every image under SRC into DST (mirrored tree), resumably, with a manifest."""
    from rich.console import Console

    from pca_client.plan import BatchError

    console, err = Console(), Console(stderr=True)
    if sum(map(bool, (server, local, ray))) != 1:
        err.print("[red]choose exactly one of --server URL, --local or --ray auto|ADDRESS[/red]")
        raise typer.Exit(2)
    budget = _local_budget(max_memory, local, generator)
    folders = {"include": include or (), "exclude": exclude or (), "in_place": in_place}
    try:
        if dry_run:
            _print_dry_run(_runner(src, dst, _unused_processor, options, **folders).dry_run(), console)
            return
        _runner(src, dst, _unused_processor, options, **folders)  # bad folders fail before a model loads
        if ray:
            runner = _ray_runner(src, dst, options, ray, ",".join(model), device, dtype, jobs, write_csv, folders)
        else:
            processor: Processor
            if local:
                from pca_cli.local import local_processor

                processor, jobs = local_processor(options, model, device, dtype, budget, offline, generator), 1
            else:
                processor = _remote_processor(options, str(server), api_key, retries, timeout, jobs)
            runner = _runner(src, dst, processor, options, jobs=jobs, write_csv=write_csv, **folders)
    except (BatchError, _UsageError) as exc:
        say(err, str(exc), label="error:")
        raise typer.Exit(2) from exc
    report = _run_with_progress(runner, err, processor if local else None)
    if watch and report.ok:
        _watch(runner, report, watch_timeout, console, err)
    _summary(report, runner, console)
    _exit(report)


def _local_budget(max_memory: str | None, local: bool, generator: Path | None = None) -> int | None:
    """``--max-memory`` in bytes; it sets the in-process engine's budget only (a usage error otherwise), as
    ``--generator`` sets the in-process engine's generator only."""
    if generator is not None and not local:
        raise typer.BadParameter("applies to --local; a service uses its operator's PCA_GENERATOR",
                                 param_hint="--generator")
    if max_memory and not local:
        raise typer.BadParameter("applies to --local; a service has its own budget (PCA_MAX_MEMORY)",
                                 param_hint="--max-memory")
    return memory_budget(max_memory)


def _exit(report: BatchReport) -> None:
    """Exit 130 after Ctrl-C (at once: workers may still wait on the network; outputs are atomic), 1 when
    files failed or the batch was aborted."""
    if report.interrupted:
        import os
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    if not report.ok:
        raise typer.Exit(1)


def _runner(src: Path, dst: Path, processor: Processor, options: ProtectOptions, **kwargs: Any) -> BatchRunner:
    from pca_client.runner import BatchRunner

    return BatchRunner(src, dst, processor, settings=options.settings(), fmt=options.format, **kwargs)


def _ray_runner(
    src: Path, dst: Path, options: ProtectOptions, address: str, model: str, device: str, dtype: str, jobs: int,
    write_csv: bool, folders: dict[str, Any],
) -> BatchRunner:
    from pca_cli.ray_batch import RayBatchRunner, connect

    connect(address)
    return RayBatchRunner(
        src, dst, options, model=model, device=device, dtype=dtype, workers=jobs, write_csv=write_csv, **folders
    )


def _watch(runner: BatchRunner, report: BatchReport, timeout: float | None, console: Console, err: Console) -> None:
    """Keep protecting new or changed files; their results are added to ``report``."""
    say(err, f"watching {runner.src} for new or changed images (Ctrl-C to stop)")
    more = runner.watch(
        timeout_s=timeout,
        on_result=lambda r: console.print(
            f"{r.status} {r.rel}" + (f": {r.error}" if r.error else ""), markup=False, highlight=False
        ),
    )
    report.done += more.done
    report.skipped += more.skipped
    report.failed.extend(more.failed)
    report.aborted = report.aborted or more.aborted


def _unused_processor(path: Path, data: bytes) -> tuple[bytes, str, dict[str, Any]]:
    raise RuntimeError("dry run: nothing is protected")
