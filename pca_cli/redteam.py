"""``pca-protect redteam IMAGE_OR_FOLDER -o DIR``: protect, re-publish through real channels, measure.

Each image is protected in-process, then JPEG / WebP / resize / blur / noise / cleaner / VAE
purification are applied to the clean and to the protected image alike, and the latent drift that
survives is compared with the drift before the channel (the *retention*, see
``pca_attack.redteam``). Writes ``redteam.json``, ``redteam.md`` and ``redteam.png`` into DIR.
When an image is larger than the editor resolution N (``--editor-resolution``, default 1024; 0 = off) the images
are also protected plainly, and both attacks are measured after an editor's downscale to N px on the long side
(``editor_resolution`` in the JSON, a section in the report).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pca_attack.models.registry import DEFAULT_MODEL
from pca_attack.options import ProtectOptions
from pca_cli.messages import say
from pca_cli.options import (
    DeviceOpt,
    DtypeOpt,
    MaxMemoryOpt,
    ModelOpt,
    OfflineOpt,
    memory_budget,
    with_protect_options,
)

if TYPE_CHECKING:
    from pca_attack.redteam.editor import EditorRetention
    from pca_attack.redteam.report import RedteamReport


def collect_images(target: Path, limit: int) -> list[Path]:
    """The image files of a file or (recursively) a folder, sorted, at most ``limit``."""
    from pca_attack.io.formats import INPUT_SUFFIXES

    if target.is_file():
        return [target]
    files = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
    return files[:limit]


def plot_report(report: RedteamReport, path: Path, title: str) -> None:
    """Bar chart of the retention per transformation (drift, and round-trip damage when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.rows
    names = [r.transform for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(rows)), 3.6))
    ax.bar([x - 0.2 for x in xs], [r.retention for r in rows], width=0.4, label="latent-drift retention")
    rt = [r.retention_roundtrip for r in rows]
    if any(v is not None for v in rt):
        ax.bar([x + 0.2 for x in xs], [v or 0.0 for v in rt], width=0.4, label="round-trip damage retention")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("retention (1 = all collapse kept)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def protect_images(
    engine: Any, files: list[Path], options: ProtectOptions, console: Any
) -> tuple[list[Any], list[Any], list[dict[str, Any]]]:
    """Protect each file as the options say (its plan line first, then a step bar with ETA); the clean and
    the protected (as written, decoded again) tensors (3, H, W) and the certificates."""
    from rich.progress import Progress

    from pca_attack.io.images import decode_image
    from pca_cli.progress import STEP_COLUMNS, ImageProgress

    config = options.to_attack_config()
    cleans, protecteds, certs = [], [], []
    with Progress(*STEP_COLUMNS, console=console, transient=True) as bar:
        steps = ImageProgress(bar, console)
        for path in files:
            decoded = decode_image(path)
            steps.start(path.name)
            result = engine.protect([decoded], config, **options.output(), on_plan=steps.on_plan,
                                    progress=steps.on_step)[0]
            steps.done()
            cleans.append(decoded.to_tensor())  # (3, H, W)
            protecteds.append(decode_image(result.data).to_tensor())  # the bytes actually written
            certs.append({"file": str(path), **result.certificate.model_dump()})
            say(console, f"protected {path.name}: drift {result.certificate.latent_drift:.3f}")
    return cleans, protecteds, certs


def editor_comparison(
    engine: Any, files: list[Path], options: ProtectOptions, cleans: list[Any], protecteds: list[Any], console: Any
) -> EditorRetention | None:
    """With an editor resolution N (default 1024) and an image larger than N: protect the files plainly as well,
    and measure both attacks after an editor's downscale to N px on the long side (``pca_attack.redteam.editor``);
    None otherwise (off, or every image not larger than N: the two attacks are the same)."""
    from pca_attack.redteam.editor import compare
    from pca_attack.redteam.report import larger_than

    long_side = options.editor_resolution
    if long_side is None or not larger_than(cleans, long_side):  # off, or smaller images: the attacks are the same
        return None
    console.print(f"plain attack (no --editor-resolution) for the comparison after the downscale to {long_side} px")
    _, plain, _ = protect_images(engine, files, options.model_copy(update={"editor_resolution": None}), console)
    return compare(engine, cleans, {"plain": plain, "editor": protecteds}, long_side, seed=options.seed,
                   preset=options.preset)


def write_outputs(
    out: Path, options: ProtectOptions, report: RedteamReport, editor: EditorRetention | None,
    certs: list[dict[str, Any]], console: Any,
) -> None:
    """redteam.json (config, rows, the editor comparison, certificates), redteam.md and redteam.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"config": options.to_attack_config().to_dict(), **report.to_dict(),
                               "certificates": certs}
    markdown = report.to_markdown()
    if editor is not None:  # plain vs --editor-resolution after the editor's downscale
        payload["editor_resolution"] = editor.to_dict()
        markdown += "\n" + editor.to_markdown()
    (out / "redteam.json").write_text(json.dumps(payload, indent=2))
    header = (f"# Red team: {report.model}, preset {options.preset}, eps {options.eps:g}/255, {options.steps} steps, "
              f"EoT {options.eot or 'off'}, {report.images} image(s)\n\n")
    (out / "redteam.md").write_text(header + markdown)
    plot_report(report, out / "redteam.png", header.strip("# \n"))
    console.print(markdown)
    say(console, f"wrote {out / 'redteam.json'}, {out / 'redteam.md'}, {out / 'redteam.png'}")


@with_protect_options
def redteam_command(
    image_or_folder: Annotated[Path, typer.Argument(help="An image or a folder of images.", exists=True)],
    options: ProtectOptions,
    out: Annotated[
        Path, typer.Option("--output", "-o", "--out", help="Output folder for redteam.json, .md and .png.")
    ] = Path("redteam"),
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    transforms: Annotated[
        str | None, typer.Option("--transforms", "-t", help="Comma-separated subset (default: all).")
    ] = None,
    max_images: Annotated[int, typer.Option("--max-images", help="Use at most this many images.")] = 16,
    roundtrip: Annotated[
        bool, typer.Option("--roundtrip/--no-roundtrip", help="Also measure round-trip damage (decoder passes).")
    ] = True,
    purify_steps: Annotated[int, typer.Option("--purify-steps", help="Adam steps of the VAE purification.")] = 20,
    offline: OfflineOpt = False,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Protect the image(s), push them through real publishing channels, report what collapse survives."""
    from rich.console import Console

    from pca_attack.errors import PCAError
    from pca_attack.pipeline import Engine
    from pca_attack.redteam.channels import get_transform
    from pca_attack.redteam.report import redteam

    console = Console(stderr=True)
    budget = memory_budget(max_memory)
    files = collect_images(image_or_folder, max_images)
    if not files:
        raise typer.BadParameter(f"no supported images in {image_or_folder}", param_hint="IMAGE_OR_FOLDER")
    names = [t.strip() for t in transforms.split(",") if t.strip()] if transforms else None
    try:
        for name in names or []:
            get_transform(name)  # unknown names: a usage error listing the known ones, before any work
        options.to_attack_config()  # invalid combinations: a usage error before the model loads
        engine = Engine.from_spec(model, device=device, dtype=dtype, offline=offline or None, max_memory=budget)
        cleans, protecteds, certs = protect_images(engine, files, options, console)
        report = redteam(engine, cleans, protecteds, transforms=names, seed=options.seed, preset=options.preset,
                         with_roundtrip=roundtrip, purify_steps=purify_steps,
                         editor_resolution=options.editor_resolution)
        editor = editor_comparison(engine, files, options, cleans, protecteds, console)
    except PCAError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    write_outputs(out, options, report, editor, certs, console)
