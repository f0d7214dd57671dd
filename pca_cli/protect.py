"""``pca-protect protect INPUT... -o OUTDIR``: protect files and folders in-process.

Folders are walked recursively and mirrored under OUTDIR; every output is written atomically with its
certificate beside it (``<output name>.json``). Inputs are never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pca_attack.models.registry import DEFAULT_MODEL
from pca_attack.options import ProtectOptions
from pca_cli.messages import say
from pca_cli.options import (
    DecoderOpt,
    DeviceOpt,
    DtypeOpt,
    GeneratorOpt,
    MaxMemoryOpt,
    ModelsOpt,
    OfflineOpt,
    fast_generator,
    memory_budget,
    with_protect_options,
)

MEMORY_REFUSAL = "memory budget: "  # failures with this prefix make the exit code 2 (a flag fixes them)


def plan_outputs(inputs: list[Path], outdir: Path, suffix: str) -> list[tuple[Path, Path]]:
    """(source, destination) pairs: folders mirrored under outdir, files placed directly in it.

    Names follow ``pca_attack.io.names.output_names`` (the scheme of every command): ``a.jpg`` -> ``a.png``;
    ``a.jpg`` and ``a.png`` together -> ``a.jpg.png`` and ``a.png``.
    """
    from pca_attack.io.formats import INPUT_SUFFIXES
    from pca_attack.io.names import output_names

    found: list[tuple[Path, str]] = []  # (source, its path relative to outdir with '/')
    for item in inputs:
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
            found += [(f, f.relative_to(item).as_posix()) for f in files]
        elif item.is_file():
            found.append((item, item.name))
        else:
            raise typer.BadParameter(f"{item} does not exist", param_hint="INPUT")
    names = output_names([rel for _, rel in found], suffix)
    return [(source, outdir / name) for (source, _), name in zip(found, names, strict=True)]


def check_output(inputs: list[Path], output: Path) -> None:
    """Refuse an output folder that is (inside) an input folder."""
    out_root = output.resolve()
    for item in inputs:
        src = item.resolve()
        if src == out_root or (src.is_dir() and out_root.is_relative_to(src)):
            raise typer.BadParameter(
                f"output folder {output} is (inside) the input {item}; choose a separate folder",
                param_hint="--output",
            )


def write_budget_map(source: Path, dest: Path, eps: float) -> Path:
    """Write the JND budget map of ``source`` as an 8-bit grey PNG beside ``dest`` (255 = the whole eps)."""
    import io

    from PIL import Image

    from pca_attack.attack.budget import budget_map_image
    from pca_attack.io.files import atomic_write
    from pca_attack.io.images import decode_image

    grey = budget_map_image(decode_image(source.read_bytes()).to_tensor(), eps)  # (H, W) uint8
    buffer = io.BytesIO()
    Image.fromarray(grey.numpy()).save(buffer, format="PNG")
    path = dest.with_name(dest.name + ".budget.png")
    atomic_write(path, buffer.getvalue())
    return path


def protect_files(
    engine: Any, pairs: list[tuple[Path, Path]], options: ProtectOptions, save_budget_map: bool = False,
    generator: str | None = None,
) -> list[tuple[Path, str]]:
    """Protect each (source, destination) pair with a progress bar; the failures with their reason.
    ``generator``: the fast modes' weights path (None: the one shipped for the model)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from pca_attack.attack.memory import MemoryBudgetError
    from pca_attack.errors import PCAError
    from pca_attack.io.files import atomic_write
    from pca_attack.io.names import certificate_name
    from pca_cli.progress import CountColumn, ImageProgress
    from pca_cli.summary import result_line

    config = options.to_attack_config().with_(generator=generator)
    failures: list[tuple[Path, str]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), CountColumn(), TimeRemainingColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("protecting", total=len(pairs))
        steps = ImageProgress(progress, console)
        for source, dest in pairs:
            steps.start(source.name)
            try:
                result = engine.protect_bytes(
                    source.read_bytes(), config, **options.output(), on_plan=steps.on_plan, progress=steps.on_step
                )
                atomic_write(dest, result.data)
                report = result.certificate.model_dump() | {"source": str(source), "output": str(dest)}
                atomic_write(dest.with_name(certificate_name(dest.name)), json.dumps(report, indent=2).encode())
                if save_budget_map:
                    write_budget_map(source, dest, config.eps)
                line = result_line(source, dest, result.certificate)
                say(console, line)
            except MemoryBudgetError as exc:
                failures.append((source, MEMORY_REFUSAL + str(exc)))
            except (PCAError, OSError) as exc:
                failures.append((source, str(exc)))
            steps.done()
            progress.advance(task)
    return failures


@with_protect_options
def protect_command(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders (walked recursively).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (mirrors input folders).")],
    options: ProtectOptions,
    model: ModelsOpt = (DEFAULT_MODEL,),  # type: ignore[assignment]  # typer turns the tuple into a list
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    offline: OfflineOpt = False,
    max_memory: MaxMemoryOpt = None,
    decoder: DecoderOpt = None,
    generator: GeneratorOpt = None,
    save_budget_map: Annotated[
        bool, typer.Option("--save-budget-map", help="Also write each image's JND budget map as OUTPUT.budget.png.")
    ] = False,
) -> None:
    """Protect images in-process and write each output with its JSON certificate beside it."""
    from pca_attack.attack.losses import check_preset
    from pca_attack.errors import PCAError
    from pca_attack.io.formats import image_format
    from pca_attack.models.registry import DEMO_WARNING, uses_demo
    from pca_attack.pipeline import Engine

    console = Console(stderr=True)
    budget = memory_budget(max_memory)
    try:
        options.to_attack_config()
    except PCAError as exc:
        raise typer.BadParameter(str(exc)) from exc
    check_output(inputs, output)
    pairs = plan_outputs(inputs, output, image_format(options.format).suffix)
    if any(dest.resolve() == src.resolve() for src, dest in pairs):
        raise typer.BadParameter("an output would overwrite its input; choose another --output")
    if not pairs:
        console.print("[yellow]no supported images found[/yellow]")
        raise typer.Exit(1)
    try:
        engine = Engine.from_spec(model, device=device, dtype=dtype, offline=offline or None, max_memory=budget,
                                  decoder=str(decoder) if decoder else None)
        check_preset(engine.encoder, options.to_attack_config().loss_preset.name)  # e.g. adaptive on a tiny AE
        generator_path = fast_generator(generator, engine.encoder, options.mode)  # exit 2 when unusable
    except PCAError as exc:
        say(console, str(exc), label="error:")
        raise typer.Exit(2) from exc
    say(console, f"model {engine.encoder.name} on {engine.encoder.device}; {len(pairs)} image(s)")
    if uses_demo(engine.model_names()):
        console.print(f"[yellow]warning:[/yellow] {DEMO_WARNING}", markup=True, highlight=False)
    failures = protect_files(engine, pairs, options, save_budget_map, generator_path)
    for source, reason in failures:
        say(console, f"{source}: {reason}", label="failed")
    say(console, f"{len(pairs) - len(failures)} protected, {len(failures)} failed -> {output}")
    if failures:
        raise typer.Exit(2 if any(reason.startswith(MEMORY_REFUSAL) for _, reason in failures) else 1)
