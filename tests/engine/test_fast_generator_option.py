"""The generator the fast modes use is chosen by whoever runs the engine, never by a request: ``--generator
PATH`` in ``pca-protect protect`` and ``batch --local``, ``PCA_GENERATOR`` for the service (refused at start-up
when unusable). A missing file, a file that is not a generator and a generator trained for another model each
get a clear error (exit 2 / start refused); ``GET /v1/models`` says whether fast modes are available."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from pca_attack.errors import ConfigError
from pca_attack.fast.generator import PerturbationNet
from pca_attack.fast.weights import check_generator, load_generator, model_metadata, save_generator
from pca_attack.models.encoder import load_encoder
from pca_attack.options import ProtectOptions
from pca_cli import app
from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random diffusers KL-VAE: 'another model' than the demo VAE."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4)
    folder = tmp_path_factory.mktemp("other_vae")
    vae.save_pretrained(folder)
    return folder


def _generator(folder: Path, model: str) -> Path:
    torch.manual_seed(1)
    path = folder / f"for_{Path(model).name}.safetensors"
    save_generator(PerturbationNet(8, 1, centred=True, pattern=8), path,
                   model_metadata(model, load_encoder(model, device="cpu", dtype="float32")))
    return path


@pytest.fixture(scope="module")
def generators(tmp_path_factory: pytest.TempPathFactory, other_model: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("generators")
    foreign = folder / "photo.safetensors"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return {"demo": _generator(folder, "demo"), "other": _generator(folder, str(other_model)), "foreign": foreign,
            "missing": folder / "nope.safetensors"}


@pytest.fixture()
def inputs(tmp_path: Path, photo: Callable[..., np.ndarray]) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo(40, 48)).save(folder / "a.png")
    return folder


def test_check_generator_tells_models_apart(generators: dict[str, Path], other_model: Path) -> None:
    demo = load_encoder("demo", device="cpu", dtype="float32")
    assert check_generator(str(generators["demo"]), demo).generator_id == load_generator(
        str(generators["demo"])).generator_id
    with pytest.raises(ConfigError, match="trained for model .*other_vae.*not for 'demo'"):
        check_generator(str(generators["other"]), demo)
    with pytest.raises(ConfigError, match="not a generator written by scripts/train_generator.py"):
        check_generator(str(generators["foreign"]), demo)
    with pytest.raises(ConfigError, match="not found"):
        check_generator(str(generators["missing"]), demo)
    other = load_encoder(str(other_model), device="cpu", dtype="float32")
    with pytest.raises(ConfigError, match="no generator ships for model"):
        check_generator(None, other)  # no --generator and nothing shipped for this model


@pytest.mark.parametrize(("which", "message"), [
    ("missing", "not found"), ("foreign", "not a generator"), ("other", "was trained for model"),
])
def test_protect_refuses_an_unusable_generator_with_exit_2(
    generators: dict[str, Path], inputs: Path, tmp_path: Path, which: str, message: str
) -> None:
    args = ["protect", str(inputs), "-o", str(tmp_path / "out"), "--model", "demo", "--mode", "fast", "--generator",
            str(generators[which])]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and not (tmp_path / "out" / "a.png").exists()


def test_protect_and_local_batch_use_the_given_generator(
    generators: dict[str, Path], inputs: Path, tmp_path: Path
) -> None:
    expected = load_generator(str(generators["demo"])).generator_id
    result = CliRunner().invoke(app, ["protect", str(inputs), "-o", str(tmp_path / "p"), "--model", "demo",
                                      "--mode", "fast+1", "--generator", str(generators["demo"])])
    assert result.exit_code == 0, result.output
    certificate = json.loads((tmp_path / "p" / "a.png.json").read_text())
    assert certificate["generator_id"] == expected and certificate["mode"] == "fast+1"
    result = CliRunner().invoke(app, ["batch", str(inputs), str(tmp_path / "b"), "--local", "--model", "demo",
                                      "--mode", "fast", "--generator", str(generators["demo"])])
    assert result.exit_code == 0, result.output
    written = [json.loads(p.read_text()) for p in (tmp_path / "b").rglob("*.json") if p.name.startswith("a.")]
    assert [c["generator_id"] for c in written] == [expected]


def test_local_batch_refuses_a_generator_for_another_model_and_a_server_batch_any(
    generators: dict[str, Path], inputs: Path, tmp_path: Path
) -> None:
    local = CliRunner().invoke(app, ["batch", str(inputs), str(tmp_path / "b"), "--local", "--model", "demo",
                                     "--mode", "fast", "--generator", str(generators["other"])], env={"COLUMNS": "200"})
    assert local.exit_code == 2 and "was trained for model" in " ".join(local.output.split())
    remote = CliRunner().invoke(app, ["batch", str(inputs), str(tmp_path / "c"), "--server", "http://127.0.0.1:9",
                                      "--generator", str(generators["demo"])], env={"COLUMNS": "200"})
    assert remote.exit_code == 2 and "PCA_GENERATOR" in " ".join(remote.output.split())


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"model": "demo", "device": "cpu", "dtype": "fp32", "offline": True,
                                 "with_decoder": False, "data_dir": tmp_path / "data", "max_steps": 5}
    return Settings(**(values | overrides))  # type: ignore[arg-type]


def test_service_setting_is_checked_before_the_server_starts(generators: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="is not a file"):
        _settings(tmp_path, generator=generators["missing"])
    for which, message in (("foreign", "not a generator"), ("other", "was trained for model")):
        app = create_app(_settings(tmp_path, generator=generators[which]))
        with pytest.raises(ConfigError, match=message), TestClient(app):
            pass  # the lifespan (start-up) refuses


def _png(photo: Callable[..., np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo(32, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def test_service_uses_the_operators_generator_and_says_so(
    generators: dict[str, Path], tmp_path: Path, photo: Callable[..., np.ndarray]
) -> None:
    expected = load_generator(str(generators["demo"])).generator_id
    with TestClient(create_app(_settings(tmp_path, generator=generators["demo"]))) as client:
        assert client.get("/v1/models").json()["generator_id"] == expected
        answer = client.post("/v1/protect", files={"file": ("a.png", _png(photo))}, data={"mode": "fast"})
        assert answer.status_code == 200, answer.text
        certificate = json.loads(base64.urlsafe_b64decode(answer.headers["x-pca-certificate"]))
        assert certificate["mode"] == "fast" and certificate["generator_id"] == expected
        form = client.get("/openapi.json").json()["components"]["schemas"]["Body_protect-image"]["properties"]
        assert "mode" in form and "generator" not in form and "generator" not in ProtectOptions.model_fields


def test_service_without_a_generator_offers_pgd_only(
    other_model: Path, tmp_path: Path, photo: Callable[..., np.ndarray]
) -> None:
    with TestClient(create_app(_settings(tmp_path, model=str(other_model)))) as client:
        assert client.get("/v1/models").json()["generator_id"] is None
        answer = client.post("/v1/protect", files={"file": ("a.png", _png(photo))}, data={"mode": "fast"})
        assert 400 <= answer.status_code < 500 and "generator" in answer.text
