"""The ``pca-protect`` console script: protect, diagnose, models, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pca_cli import app

runner = CliRunner()


def _tree(root: Path, photo: Callable[..., np.ndarray]) -> None:
    (root / "a" / "b").mkdir(parents=True)
    Image.fromarray(photo(20, 28)).save(root / "one.png")
    Image.fromarray(photo(24, 16, seed=1)).save(root / "a" / "one.jpg", quality=95)
    Image.fromarray(photo(16, 16, seed=2)).save(root / "a" / "b" / "deep.png")
    (root / "notes.txt").write_text("not an image")


def test_protect_mirrors_the_tree_with_reports(tiny_vae_dir: Path, tmp_path: Path, photo: Callable) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _tree(src, photo)
    result = runner.invoke(app, ["protect", str(src), "-o", str(out), "--model", str(tiny_vae_dir),
                                 "--steps", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for rel in ("one.png", "a/one.png", "a/b/deep.png"):
        assert (out / rel).is_file(), rel
        report = json.loads((out / (rel + ".json")).read_text())
        assert report["budget_ok"] and report["linf_255"] <= 16
    assert Image.open(out / "a" / "one.png").size == (16, 24)
    assert not list(out.rglob("*.part"))


def test_protect_refuses_output_inside_input(tiny_vae_dir: Path, tmp_path: Path, photo: Callable) -> None:
    _tree(tmp_path / "src", photo)
    result = runner.invoke(app, ["protect", str(tmp_path / "src"), "-o", str(tmp_path / "src" / "out"),
                                 "--model", str(tiny_vae_dir)])
    assert result.exit_code != 0 and "inside" in result.output


def test_missing_model_exits_with_a_fix(tmp_path: Path, photo: Callable) -> None:
    Image.fromarray(photo(16, 16)).save(tmp_path / "x.png")
    result = runner.invoke(app, ["protect", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"),
                                 "--model", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "models download" in result.output


def test_errors_print_paths_verbatim_on_one_line(tmp_path: Path, photo: Callable) -> None:
    """A long path with brackets survives in the error as the user can copy it: no markup eaten, no line break
    inserted at the console's width (CliRunner's console is 80 columns wide)."""
    Image.fromarray(photo(16, 16)).save(tmp_path / "x.png")
    missing = tmp_path / ("very-long-folder-name-" * 4) / "[red]model[/red]"
    result = runner.invoke(app, ["protect", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"),
                                 "--model", str(missing)])
    assert result.exit_code == 2
    assert str(missing) in result.output, result.output


def test_cuda_without_cuda_is_a_loud_error(tiny_vae_dir: Path, tmp_path: Path, photo: Callable) -> None:
    import torch

    if torch.cuda.is_available():
        return
    Image.fromarray(photo(16, 16)).save(tmp_path / "x.png")
    result = runner.invoke(app, ["protect", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"),
                                 "--model", str(tiny_vae_dir), "--device", "cuda"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output


def test_diagnose_pair(tiny_vae_dir: Path, tmp_path: Path, photo: Callable) -> None:
    Image.fromarray(photo(16, 24)).save(tmp_path / "x.png")
    runner.invoke(app, ["protect", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"),
                        "--model", str(tiny_vae_dir), "--steps", "2"])
    result = runner.invoke(app, ["diagnose", str(tmp_path / "x.png"), str(tmp_path / "o" / "x.png"),
                                 "--model", str(tiny_vae_dir)])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["latent_drift"] > 0 and "kl_prior" in stats["clean"]
    assert stats["clean"]["roundtrip_psnr_db"] is not None


def test_every_subcommand_is_registered() -> None:
    for command in ("protect", "diagnose", "models", "batch", "serve", "redteam", "theory"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_version_and_models_list() -> None:
    assert runner.invoke(app, ["--version"]).output.startswith("pca-protect ")
    listing = runner.invoke(app, ["models", "list"])
    assert listing.exit_code == 0 and "sd15" in listing.output and "demo" in listing.output
    assert "default (no --model, no PCA_MODEL): taef2" in " ".join(listing.output.split())
