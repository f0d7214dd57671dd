"""The red team's editor-N row (retention after an editor's downscale) and the plain vs --editor-resolution
comparison."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pca_attack.attack.config import AttackConfig
from pca_attack.errors import ConfigError
from pca_attack.io.images import decode_image
from pca_attack.models.encoder import load_encoder
from pca_attack.pipeline import Engine
from pca_attack.redteam.channels import apply_transform, get_transform
from pca_attack.redteam.editor import MODES, editor_retention
from pca_attack.redteam.report import redteam
from tests.conftest import to_bytes


def _image(h: int = 96, w: int = 144) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=g), size=(h, w),
                                             mode="bilinear", align_corners=False)
    return (torch.round(smooth * 255) / 255).clamp(0, 1)  # (1, 3, H, W)


def test_editor_resize_downscales_the_long_side_and_never_upscales() -> None:
    x = _image()
    small = apply_transform("editor-72", x)
    assert small.shape == (1, 3, 48, 72)
    assert torch.allclose(small * 255, torch.round(small * 255), atol=1e-4)  # uint8 grid, as an editor's
    assert torch.equal(apply_transform("editor-512", x), x)  # already smaller: left alone
    assert "72 px on the long side" in get_transform("editor-72").description
    for bad in ("editor-4", "editor-x", "editor-"):
        with pytest.raises(ConfigError, match="editor-N"):
            get_transform(bad)


def test_redteam_reports_the_editor_row_when_asked(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    clean = _image()
    protected = (clean + 8 / 255 * torch.sign(torch.randn(clean.shape, generator=torch.Generator()))).clamp(0, 1)
    report = redteam(encoder, clean, protected, transforms=["jpeg-75"], editor_resolution=72, with_roundtrip=False)
    assert [r.transform for r in report.rows] == ["none", "jpeg-75", "editor-72"]
    row = report.row("editor-72")
    assert row.latent_drift > 0 and math.isfinite(row.retention) and row.retention != 1.0
    assert "editor-72" in report.to_markdown()


def test_editor_retention_reports_both_attacks(tiny_vae_dir: Path) -> None:
    engine = Engine.from_spec(str(tiny_vae_dir), device="cpu", with_decoder=False)
    pixels = np.round(_image(128, 192)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    image = decode_image(to_bytes(Image.fromarray(pixels)))
    result = editor_retention(engine, [image], AttackConfig(steps=2), 64)
    assert set(result.rows) == set(MODES)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["transform"] == "editor-64" and data["images"] == 1
    for mode in MODES:
        entry = data["modes"][mode]
        assert entry["transform"] == "editor-64" and entry["latent_drift"] > 0
        assert entry["collapse_kept"] is not None and math.isfinite(entry["collapse_kept"])
    ratio = data["drift_ratio_editor_over_plain"]
    assert ratio == pytest.approx(data["modes"]["editor"]["latent_drift"] / data["modes"]["plain"]["latent_drift"])


def _redteam_cli(model_dir: Path, out: Path, pixels: np.ndarray, *options: str) -> dict:
    """Run ``pca-protect redteam`` on one picture (jpeg-75 only, no round trip); return its redteam.json."""
    from typer.testing import CliRunner

    from pca_cli import app

    src = out.parent / "source.png"
    Image.fromarray(pixels).save(src)
    result = CliRunner().invoke(app, [
        "redteam", str(src), "-o", str(out), "--model", str(model_dir), "--device", "cpu",
        "--transforms", "jpeg-75", "--no-roundtrip", "--max-memory", "4GB", *options,
    ], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return dict(json.loads((out / "redteam.json").read_text()))


def test_redteam_cli_compares_plain_and_editor_resolution_attacks(
    tiny_vae_dir: Path, tmp_path: Path, photo: Callable[..., np.ndarray]
) -> None:
    out = tmp_path / "out"
    data = _redteam_cli(tiny_vae_dir, out, photo(96, 144), "--steps", "2", "--editor-resolution", "72")
    assert [r["transform"] for r in data["rows"]] == ["none", "jpeg-75", "editor-72"]  # the editor attack's row
    comparison = data["editor_resolution"]
    assert comparison["transform"] == "editor-72" and comparison["images"] == 1
    plain, editor = comparison["modes"]["plain"], comparison["modes"]["editor"]
    assert plain["latent_drift"] > 0 and editor["latent_drift"] > 0
    assert plain["latent_drift"] != editor["latent_drift"]  # two different attacks were measured
    assert editor["latent_drift"] == pytest.approx(data["rows"][2]["latent_drift"])  # same outputs as the main table
    assert comparison["drift_ratio_editor_over_plain"] == pytest.approx(
        editor["latent_drift"] / plain["latent_drift"])
    markdown = (out / "redteam.md").read_text()
    assert "downscale to 72 px: plain vs --editor-resolution 72" in markdown and "| plain |" in markdown


def test_redteam_cli_without_editor_resolution_has_no_comparison(
    tiny_vae_dir: Path, tmp_path: Path, photo: Callable[..., np.ndarray]
) -> None:
    """Off (0), or the default 1024 on images not larger: one attack, no editor row, no comparison."""
    for extra in ((), ("--editor-resolution", "0")):
        data = _redteam_cli(tiny_vae_dir, tmp_path / f"out{len(extra)}", photo(48, 64), "--steps", "1", *extra)
        assert "editor_resolution" not in data and [r["transform"] for r in data["rows"]] == ["none", "jpeg-75"]
        assert data["config"]["editor_resolution"] == (None if extra else 1024)


def test_the_editor_row_is_left_out_when_no_image_is_larger(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    clean = _image()  # 96 x 144
    protected = (clean + 8 / 255 * torch.sign(torch.randn(clean.shape, generator=torch.Generator()))).clamp(0, 1)
    for side, rows in ((144, ["none"]), (143, ["none", "editor-143"])):
        report = redteam(encoder, clean, protected, transforms=[], editor_resolution=side, with_roundtrip=False)
        assert [r.transform for r in report.rows] == rows


def test_the_certificate_says_whether_an_editor_copy_was_collapsed(tiny_vae_dir: Path) -> None:
    engine = Engine.from_spec(str(tiny_vae_dir), device="cpu", with_decoder=False)
    pixels = np.round(_image(96, 128)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    png = to_bytes(Image.fromarray(pixels))
    for config, expected, spread in ((AttackConfig(steps=1, editor_resolution=64), 64, 0.0),
                                     (AttackConfig(steps=1, editor_resolution=64, editor_spread=0.25), 64, 0.25),
                                     (AttackConfig(steps=1), None, 0.0),  # the default 1024: not larger
                                     (AttackConfig(steps=1, editor_spread=0.25), None, 0.0),  # no copy, no spread
                                     (AttackConfig(steps=1, editor_resolution=None), None, 0.0)):
        cert = engine.protect_bytes(png, config).certificate
        assert (cert.editor_resolution, cert.editor_spread) == (expected, spread)
