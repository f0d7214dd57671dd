"""The ``redteam`` subcommand writes its JSON, Markdown and plot (tiny random VAE, few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from pca_cli.redteam import redteam_command


def test_redteam_command_writes_its_files(tiny_vae_dir: Path, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path / "in"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i, (h, w) in enumerate([(40, 48), (33, 45)]):
            arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"img{i}.png")
        app = typer.Typer()
        app.command("redteam")(redteam_command)
        app.command("noop")(lambda: None)  # two commands: typer keeps "redteam" as a subcommand
        out = tmp_path / "out"
        result = CliRunner().invoke(app, [
            "redteam", str(folder), "--model", str(tiny_vae_dir), "--out", str(out), "--steps", "2",
            "--device", "cpu", "--transforms", "jpeg-75,resize-0.5,purify,crop-4", "--seed", "1",
        ])
        assert result.exit_code == 0, result.output
        data = json.loads((out / "redteam.json").read_text())
        assert data["images"] == 2 and len(data["certificates"]) == 2
        assert [r["transform"] for r in data["rows"]] == ["none", "jpeg-75", "resize-0.5", "purify", "crop-4"]
        assert "| jpeg-75 |" in (out / "redteam.md").read_text()
        assert (out / "redteam.png").read_bytes()[:4] == b"\x89PNG"
        bad = CliRunner().invoke(app, ["redteam", str(folder), "--model", str(tiny_vae_dir), "--out",
                                       str(out), "--transforms", "jpeg-7", "--steps", "1", "--device", "cpu"])
        assert bad.exit_code == 2 and "jpeg-75" in bad.output
        bad = CliRunner().invoke(app, ["redteam", str(folder), "--model", str(tiny_vae_dir), "--out",
                                       str(out), "--transforms", "crop-0", "--steps", "1", "--device", "cpu"])
        assert bad.exit_code == 2 and "crop-N for N >= 1" in bad.output
    finally:
        torch.set_num_threads(before)
