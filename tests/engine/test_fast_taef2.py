"""The generator shipped for ``--model taef2``: fast modes work out of the box on FLUX.2's tiny autoencoder.

The TAEF2 weights come from ``../shared/models/taef2`` (never copied: ``PCA_MODELS_DIR`` holds symbolic links
to them, as ``pca-protect models download taef2`` would hold the files); skipped where that folder is absent.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pca_attack.fast.weights import check_generator, shipped_generator

TAEF2 = Path(__file__).resolve().parents[2] / ".." / "shared" / "models" / "taef2"  # fixture taef2_by_name: conftest


def _chelsea_png(height: int, width: int) -> bytes:
    from skimage import data

    a = data.chelsea()
    top, left = (a.shape[0] - height) // 2, (a.shape[1] - width) // 2
    buf = io.BytesIO()
    Image.fromarray(a[top:top + height, left:left + width]).save(buf, "PNG")
    return buf.getvalue()


def test_a_generator_ships_for_taef2_and_suits_its_weights(taef2_by_name: str) -> None:
    from pca_attack.models.encoder import load_encoder

    assert shipped_generator("taef2") is not None
    loaded = check_generator(None, load_encoder(taef2_by_name, device="cpu", offline=True))
    assert loaded.metadata["model"] == "taef2" and loaded.metadata["steps"] == "850"


def test_a_folder_of_the_same_weights_finds_the_shipped_generator(taef2_by_name: str, tiny_ae_dir: Path) -> None:
    """Matched by the encoder's probe when its name (a path) is not a shipped one; another model finds none."""
    from pca_attack.errors import ConfigError
    from pca_attack.models.encoder import load_encoder

    folder = load_encoder(str(TAEF2), device="cpu")
    assert folder.name != "taef2" and shipped_generator(folder.name) is None
    assert check_generator(None, folder).path == shipped_generator("taef2")
    from pca_attack import AttackConfig
    from pca_attack.pipeline import Engine

    certificate = Engine.from_spec(str(TAEF2), device="cpu").protect_bytes(
        _chelsea_png(64, 64), AttackConfig(mode="fast")).certificate
    assert certificate.generator_id == check_generator(None, folder).generator_id and certificate.budget_ok
    other = load_encoder(str(tiny_ae_dir), device="cpu")
    assert shipped_generator(other.name, other) is None
    with pytest.raises(ConfigError, match="no generator ships"):
        check_generator(None, other)


def test_fast_mode_on_taef2_collapses_within_the_budget(taef2_by_name: str) -> None:
    from pca_attack import AttackConfig
    from pca_attack.pipeline import Engine

    engine = Engine.from_spec(taef2_by_name, device="cpu", offline=True)
    png = _chelsea_png(128, 192)
    fast = engine.protect_bytes(png, AttackConfig(mode="fast")).certificate
    assert fast.mode == "fast" and fast.budget_ok and fast.linf_255 <= 16
    assert fast.generator_id == check_generator(None, engine.encoder).generator_id
    assert 1 - fast.loss_protected / fast.loss_clean > 0.3  # one forward pass collapses (4 held-out photos: 0.53)


def test_protect_cli_fast_mode_by_name(taef2_by_name: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pca_cli import app

    (tmp_path / "in.png").write_bytes(_chelsea_png(64, 96))
    result = CliRunner().invoke(app, ["protect", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"),
                                      "--model", taef2_by_name, "--mode", "fast", "--offline"])
    assert result.exit_code == 0, result.output
    certificate = json.loads((tmp_path / "out" / "in.png.json").read_text())
    assert certificate["mode"] == "fast" and certificate["budget_ok"]
    assert np.asarray(Image.open(tmp_path / "out" / "in.png")).shape == (64, 96, 3)
