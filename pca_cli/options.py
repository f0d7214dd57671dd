"""Options of the subcommands. The protect options (attack and output settings) are not declared here:
``with_protect_options`` generates one typer option per field of ``pca_attack.options.ProtectOptions``
(type, default, bounds and help from the model), so ``protect``, ``batch`` and ``redteam`` share the same
flags and cannot drift from the service or the client. Only the flag spellings are chosen here."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from pca_attack.options import ProtectOptions, field_bounds

F = TypeVar("F", bound=Callable[..., Any])

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="Registry name (taef2, sd15, sdxl, demo, ...), diffusers folder or weights file."
    ),
]
ModelsOpt = Annotated[  # protect: several models are attacked at once (one perturbation for all of them)
    list[str],
    typer.Option(
        "--model", "-m",
        help="Registry name (taef2, sd15, sdxl, demo, ...), diffusers folder or weights file. Several (a comma "
        "list 'taef2,demo' or a repeated --model) are attacked at once: one perturbation for every listed editor.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="auto, cpu, cuda, cuda:N or mps.")]
DecoderOpt = Annotated[
    Path | None,
    typer.Option(
        "--decoder", help="Decoder weights file for round-trip measurements (e.g. taef2_decoder.pth); by default "
        "a tiny autoencoder's *_decoder.pth beside its encoder file is used.", exists=True, dir_okay=False,
    ),
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (fp16 on CUDA, else fp32), fp32, fp16 or bf16.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network (also HF_HUB_OFFLINE=1).")]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="Memory the process may use, e.g. 1.5GB or 800MB (default: what it holds + 15% of the free RAM/VRAM). "
        "Larger images are protected in tiles; one that cannot fit even so is refused before any work (exit 2).",
    ),
]
GeneratorOpt = Annotated[
    Path | None,
    typer.Option(
        "--generator",
        help="Fast modes (--mode fast / fast+N): generator weights (.safetensors written by "
        "scripts/train_generator.py for this model). Default: the generator shipped for the model (taef2 and demo).",
    ),
]

# flag spellings of the protect options (presentation only: names, bounds and defaults come from the model)
FLAGS: dict[str, tuple[str, ...]] = {
    "preset": ("--preset", "-p"),
    "eps": ("--eps", "-e"),
    "steps": ("--steps", "-n"),
    "random_start": ("--random-start/--no-random-start",),
    "format": ("--format", "-f"),
    "quality": ("--quality", "-q"),
    "keep_exif": ("--keep-exif/--strip-exif",),
}
PANEL = "Protect options"
_SYMBOLS = {"gt": "<", "ge": "<=", "lt": "<", "le": "<="}


def flags(name: str) -> tuple[str, ...]:
    """The CLI flags of a protect option (``eot_samples`` -> ``--eot-samples``)."""
    return FLAGS.get(name, ("--" + name.replace("_", "-"),))


def bounds_text(info: FieldInfo) -> str:
    """``0 < x <= 64`` from the field's bounds (empty when unbounded)."""
    bounds = field_bounds(info)
    if "max_length" in bounds:
        return f"at most {bounds['max_length']} characters"
    low = next((f"{bounds[k]} {_SYMBOLS[k]} " for k in ("gt", "ge") if k in bounds), "")
    high = next((f" {_SYMBOLS[k]} {bounds[k]}" for k in ("lt", "le") if k in bounds), "")
    return f"{low}x{high}" if low or high else ""


def _cli_type(info: FieldInfo) -> tuple[Any, str]:
    """The typer type of a field and the choices to list in its help (a Literal becomes str, validated by
    the model, so that aliases such as ``jpg`` keep working)."""
    if get_origin(info.annotation) is Literal:
        return str, ", ".join(map(str, get_args(info.annotation)))
    branches = [a for a in get_args(info.annotation) if a is not type(None)]  # an optional choice: Literal | None
    if len(branches) == 1 and get_origin(branches[0]) is Literal and len(get_args(info.annotation)) == 2:
        return str | None, ", ".join(map(str, get_args(branches[0])))
    return info.annotation, ""


def option_parameters(model: type[BaseModel] = ProtectOptions) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of ``model``."""
    parameters = []
    for name, info in model.model_fields.items():
        kind, choices = _cli_type(info)
        if choices and all(f"{choice}:" in (info.description or "") for choice in choices.split(", ")):
            choices = ""  # the description already explains each one as 'name: ...' (eot, budget)
        notes = "; ".join(n for n in (choices, bounds_text(info)) if n)
        text = (info.description or name) + (f" ({notes})" if notes else "")
        option = typer.Option(*flags(name), help=text[0].upper() + text[1:] + ".", rich_help_panel=PANEL)
        annotation = Annotated[kind, option]  # type: ignore[valid-type]
        keyword = inspect.Parameter.KEYWORD_ONLY
        parameters.append(inspect.Parameter(name, keyword, default=info.default, annotation=annotation))
    return parameters


def fast_generator(generator: Path | None, encoder: Any, mode: str) -> str | None:
    """The ``--generator`` path for the attack configuration, checked against the loaded encoder whenever a
    fast mode will use a generator or a path was given: a missing or foreign file, or one trained for another
    model, exits with 2 before any image is touched."""
    if generator is None and mode == "pgd":
        return None
    from pca_attack.errors import PCAError
    from pca_attack.fast.weights import check_generator

    path = None if generator is None else str(generator)
    try:
        check_generator(path, encoder)
    except PCAError as exc:
        raise typer.BadParameter(str(exc), param_hint="--generator") from exc
    return path


def memory_budget(text: str | None) -> int | None:
    """``--max-memory`` in bytes (None: the engine's default budget); a size it cannot read exits with 2."""
    if not text:
        return None
    from pca_attack.attack.memory import parse_size
    from pca_attack.errors import PCAError

    try:
        return parse_size(text)
    except PCAError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-memory") from exc


def validation_message(exc: ValidationError) -> str:
    """``--eps: Input should be less than or equal to 64, got 80`` for each problem."""
    return "; ".join(
        f"{'/'.join(flags(str(e['loc'][0])))}: {e['msg']}, got {e['input']!r}" if e["loc"] else e["msg"]
        for e in exc.errors()
    )


def with_protect_options(command: F, model: type[BaseModel] = ProtectOptions) -> F:
    """Replace ``command``'s ``options`` parameter by the model's fields as CLI options; the command is
    called with ``options=model(...)`` (bad values exit with code 2 and the model's message)."""
    signature = inspect.signature(command, eval_str=True)
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values() if p.name != "options"]
    generated = option_parameters(model)
    names = [p.name for p in generated]

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in names}
        try:
            options = model(**values)
        except ValidationError as exc:
            raise typer.BadParameter(validation_message(exc)) from exc
        return command(options=options, **kwargs)

    parameters = own + generated
    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": signature.return_annotation}
    return run  # type: ignore[return-value]
