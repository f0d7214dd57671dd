"""Progress and consistency of the CLI (issue 12 item 4, issue 11 items 12-13): a plan line per image and a
step bar fed once per PGD step in ``protect``, ``batch --local`` and ``redteam``; ``--max-memory`` everywhere
the engine runs in-process; ``--eot`` names in ``--help`` and an unknown one refused before a model loads;
help texts shown literally; ``-o`` is ``--output`` in every command."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from pca_attack.options import ProtectOptions
from pca_cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}
PLAN_LINE = re.compile(r"(\S+\.png): (\d+)x(\d+): (untiled|\d+ tiles of \d+(?:x\d+)? px), ~[\d.]+ [MG]B of "
                       r"[\d.]+ [MG]B free in the budget, ~\d+ s")


def _images(folder: Path, photo: Callable[..., np.ndarray], sizes: list[tuple[int, int]]) -> Path:
    folder.mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(photo(h, w, seed=i)).save(folder / f"img{i}.png")
    return folder


class Recorder:
    """An ``ImageProgress`` stand-in that counts the engine's callbacks per image."""

    def __init__(self) -> None:
        self.plans: list[tuple[str, Any]] = []
        self.step_ends: dict[str, list[int]] = {}
        self.name = ""

    def start(self, name: str) -> None:
        self.name = name

    def on_plan(self, indices: list[int], plan: Any) -> None:
        self.plans.append((self.name, plan))

    def on_step(self, indices: list[int], event: Any) -> None:
        if event.end_of_step:
            self.step_ends.setdefault(self.name, []).append(event.step)

    def done(self) -> None:
        self.name = ""


def test_local_processor_fires_one_plan_and_one_event_per_step(tiny_vae_dir: Path, photo: Callable) -> None:
    from pca_cli.local import local_processor

    processor = local_processor(ProtectOptions(steps=3), str(tiny_vae_dir), "cpu", "fp32")
    recorder = Recorder()
    processor.steps = recorder
    for name, (h, w) in (("a.png", (24, 32)), ("b.png", (16, 16))):
        buffer = io.BytesIO()
        Image.fromarray(photo(h, w)).save(buffer, format="PNG")
        processor(Path(name), buffer.getvalue())
    assert [n for n, _ in recorder.plans] == ["a.png", "b.png"]
    assert (recorder.plans[0][1].width, recorder.plans[0][1].height) == (32, 24)
    assert recorder.step_ends == {"a.png": [1, 2, 3], "b.png": [1, 2, 3]}


def test_protect_prints_a_plan_line_per_image(tiny_vae_dir: Path, tmp_path: Path, photo: Callable) -> None:
    src = _images(tmp_path / "src", photo, [(24, 32), (16, 24)])
    result = runner.invoke(app, ["protect", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_vae_dir),
                                 "--device", "cpu", "--steps", "2"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert sorted(m.group(1) for m in PLAN_LINE.finditer(result.output)) == ["img0.png", "img1.png"], result.output


def test_batch_local_prints_a_plan_line_per_image(tiny_vae_dir: Path, tmp_path: Path, photo: Callable) -> None:
    src = _images(tmp_path / "src", photo, [(24, 32), (16, 24)])
    result = runner.invoke(app, ["batch", str(src), str(tmp_path / "dst"), "--local", "--model", str(tiny_vae_dir),
                                 "--device", "cpu", "--steps", "2", "--max-memory", "4GB"], env=WIDE)
    assert result.exit_code == 0, result.output
    plans = {m.group(1): (int(m.group(2)), int(m.group(3)), m.group(4)) for m in PLAN_LINE.finditer(result.output)}
    assert plans == {"img0.png": (32, 24, "untiled"), "img1.png": (24, 16, "untiled")}, result.output


def test_redteam_prints_a_plan_line_per_image(tiny_vae_dir: Path, tmp_path: Path, photo: Callable) -> None:
    src = _images(tmp_path / "src", photo, [(24, 32)])
    result = runner.invoke(app, ["redteam", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_vae_dir),
                                 "--device", "cpu", "--steps", "2", "--transforms", "jpeg-75", "--no-roundtrip",
                                 "--max-memory", "4GB"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert [m.group(1) for m in PLAN_LINE.finditer(result.output)] == ["img0.png"], result.output
    assert (tmp_path / "out" / "redteam.json").is_file()


@pytest.mark.parametrize("command", ["protect", "batch", "redteam"])
def test_unknown_eot_is_a_usage_error_before_the_model_loads(command: str, tmp_path: Path, photo: Callable) -> None:
    src = _images(tmp_path / "src", photo, [(16, 16)])
    missing = str(tmp_path / "no-such-model")  # loading it would fail with another message
    args = {
        "protect": ["protect", str(src), "-o", str(tmp_path / "o")],
        "batch": ["batch", str(src), str(tmp_path / "o"), "--local"],
        "redteam": ["redteam", str(src), "-o", str(tmp_path / "o")],
    }[command]
    result = runner.invoke(app, [*args, "--model", missing, "--eot", "bogus"], env=WIDE)
    assert result.exit_code == 2, result.output
    assert "bogus" in result.output and "web-jpeg-85" in result.output and "mixed" in result.output
    assert "models download" not in result.output  # the model was never looked for


@pytest.mark.parametrize("command", ["protect", "batch", "redteam"])
def test_max_memory_is_checked_before_the_model_loads(command: str, tmp_path: Path, photo: Callable) -> None:
    src = _images(tmp_path / "src", photo, [(16, 16)])
    args = {
        "protect": ["protect", str(src), "-o", str(tmp_path / "o")],
        "batch": ["batch", str(src), str(tmp_path / "o"), "--local"],
        "redteam": ["redteam", str(src), "-o", str(tmp_path / "o")],
    }[command]
    result = runner.invoke(app, [*args, "--model", str(tmp_path / "nope"), "--max-memory", "lots"], env=WIDE)
    assert result.exit_code == 2 and "--max-memory" in result.output and "1.5GB" in result.output, result.output


def test_batch_max_memory_applies_to_local_only(tmp_path: Path, photo: Callable) -> None:
    src = _images(tmp_path / "src", photo, [(16, 16)])
    result = runner.invoke(app, ["batch", str(src), str(tmp_path / "o"), "--server", "http://127.0.0.1:9",
                                 "--max-memory", "1GB"], env=WIDE)
    assert result.exit_code == 2 and "PCA_MAX_MEMORY" in result.output, result.output


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def test_help_lists_eot_presets_and_redteam_channels() -> None:
    from pca_attack.attack.eot import eot_names
    from pca_attack.redteam.channels import transform_names

    for command in ("protect", "batch", "redteam"):
        text = _help(command)
        assert all(name in text for name in eot_names()), command
        assert "custom" not in text, command  # the presets offered are the documented ones
    assert all(name in _help("redteam") for name in transform_names())


def test_help_texts_keep_their_brackets_and_defaults() -> None:
    serve = _help("serve")
    assert "pca-protect[ray]" in serve and "[default: 127.0.0.1]" in serve and "[default: 8000]" in serve
    assert "pca-protect[ray]" in _help("batch")


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
        else:
            found.append((prefix + name, command))
    return found


def test_dash_o_means_output_everywhere_and_shared_flags_agree() -> None:
    commands = _commands(typer.main.get_command(app))  # type: ignore[arg-type]
    with_o = []
    for name, command in commands:
        for param in command.params:
            if "-o" in param.opts:
                assert "--output" in param.opts, (name, param.opts)
                with_o.append(name)
    assert {"protect", "redteam"} <= set(with_o)
    shared = {"--keep-exif", "--strip-exif", "--random-start", "--no-random-start", "--eot", "--preset", "-p",
              "--model", "-m", "--device", "-d", "--dtype", "--offline", "--max-memory"}
    for name in ("protect", "batch", "redteam"):
        command = dict(commands)[name]
        flags = {flag for p in command.params for flag in (*p.opts, *p.secondary_opts)}
        assert shared <= flags, (name, shared - flags)
