"""``pca-protect protect`` prints one result line per image, read from the certificate it wrote."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image
from typer.testing import CliRunner

from pca_cli import app
from pca_cli.summary import collapse_text

runner = CliRunner()


def test_each_protected_image_gets_a_line_with_its_certificate_numbers(
    tiny_vae_dir: Path, tmp_path: Path, photo: Callable
) -> None:
    Image.fromarray(photo(24, 32)).save(tmp_path / "cat.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["protect", str(tmp_path / "cat.png"), "-o", str(out), "--model", str(tiny_vae_dir),
                                 "--steps", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    cert = json.loads((out / "cat.png.json").read_text())
    line = next(line for line in result.output.splitlines() if line.startswith("cat.png -> "))
    drop = 1 - cert["loss_protected"] / cert["loss_clean"]
    assert f"collapse {drop:.0%}" in line and f"PSNR {cert['psnr_db']:.1f} dB" in line
    assert f"SSIM {cert['ssim']:.3f}" in line and line.endswith("budget ok")
    assert cert["editor_resolution"] is None and "for editors" not in line  # 32 px: not larger than 1024


def test_the_line_says_when_an_editor_copy_was_collapsed_too(
    tiny_vae_dir: Path, tmp_path: Path, photo: Callable
) -> None:
    Image.fromarray(photo(48, 96)).save(tmp_path / "cat.png")
    result = runner.invoke(app, ["protect", str(tmp_path / "cat.png"), "-o", str(tmp_path / "out"), "--model",
                                 str(tiny_vae_dir), "--steps", "2", "--device", "cpu", "--editor-resolution", "64"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("cat.png -> "))
    assert ", also at 64 px for editors; change PSNR" in line


def test_the_collapse_reads_as_a_drop_or_as_a_rise_by_the_preset_direction() -> None:
    def cert(direction: str) -> Any:
        return SimpleNamespace(direction=direction, loss_clean=4.0, loss_protected=1.0)

    assert collapse_text(cert("minimize")) == "collapse 75%"
    assert collapse_text(cert("maximize")) == "loss x0.25"
