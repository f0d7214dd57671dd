"""TAEF2 (FLUX.2's tiny autoencoder) and the TAESana encoder: real pretrained weights read from the workspace.

The weights live outside the project (``../shared/models`` from the repository root) and are never copied
into it; every test here skips, with a message, where that folder is absent (e.g. a fresh clone).
"""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pca_attack import AttackConfig, ConfigError, load_decoder, load_encoder
from pca_attack.pipeline import Engine

MODELS = Path(__file__).resolve().parents[2] / ".." / "shared" / "models"
TAEF2, TAESANA = MODELS / "taef2", MODELS / "taesana"


def _need(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"{folder.resolve()} is absent: the pretrained tiny-autoencoder weights are not in this workspace")
    return folder


def _crop(height: int, width: int) -> np.ndarray:
    """A central crop of scikit-image's chelsea photo, (H, W, 3) uint8."""
    from skimage import data

    a = data.chelsea()
    top, left = (a.shape[0] - height) // 2, (a.shape[1] - width) // 2
    return np.ascontiguousarray(a[top : top + height, left : left + width])


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)


def test_encode_shape_and_deterministic_posterior() -> None:
    enc = load_encoder(str(_need(TAEF2)), device="cpu")
    mean, logvar = enc(_tensor(_crop(64, 96)))
    assert mean.shape == (1, 32, 8, 12) and logvar is None
    assert (enc.latent_channels, enc.downsample_factor, enc.posterior_type) == (32, 8, "deterministic")


def test_clean_round_trip_above_25_db() -> None:
    folder = str(_need(TAEF2))
    enc, dec = load_encoder(folder, device="cpu"), load_decoder(folder, device="cpu")
    x = _tensor(_crop(128, 160))
    with torch.no_grad():
        recon = dec(enc(x)[0])
    assert 10 * math.log10(1.0 / float((recon - x).pow(2).mean())) > 25.0


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def test_ten_step_protect_cuts_mean_energy_and_holds_budget_on_bytes() -> None:
    engine = Engine.from_spec(str(_need(TAEF2)), device="cpu")
    rgb = _crop(64, 96)
    out = engine.protect_bytes(_png(rgb), AttackConfig(steps=10))
    written = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB")).astype(int)
    assert np.abs(written - rgb.astype(int)).max() <= 16
    cert = out.certificate
    assert cert.budget_ok and cert.posterior == "deterministic"
    assert cert.mean_energy_protected < 0.7 * cert.mean_energy_clean  # > 30 % lower
    assert cert.roundtrip_psnr_clean_db is not None and cert.roundtrip_psnr_protected_db is not None
    # a collapse, not a reproduced change: the round trip is far from the output too
    assert cert.roundtrip_psnr_self_db is not None and cert.roundtrip_psnr_self_db < cert.roundtrip_psnr_clean_db - 3


def test_adaptive_is_refused_with_a_clear_message() -> None:
    engine = Engine.from_spec(str(_need(TAEF2)), device="cpu", with_decoder=False)
    with pytest.raises(ConfigError, match=r"'adaptive'.*deterministic encoder.*'pca-'"):
        engine.protect_bytes(_png(_crop(32, 32)), AttackConfig(preset="adaptive", steps=1))


def test_loads_as_folder_encoder_file_and_with_decoder_option(tmp_path: Path) -> None:
    folder = _need(TAEF2)
    x = _tensor(_crop(32, 48))
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(folder / "taef2_encoder.pth", lone / "taef2_encoder.pth")  # a temporary copy, no decoder beside
    specs = [str(folder), str(folder / "taef2_encoder.pth"), str(lone / "taef2_encoder.pth")]
    means = [load_encoder(spec, device="cpu")(x)[0] for spec in specs]
    assert all(torch.equal(means[0], m) for m in means[1:])
    with pytest.raises(Exception, match="--decoder"):
        load_decoder(str(lone / "taef2_encoder.pth"), device="cpu")
    with torch.no_grad():
        beside = load_decoder(str(folder / "taef2_encoder.pth"), device="cpu")(means[0])
        given = load_decoder(specs[2], device="cpu", decoder=str(folder / "taef2_decoder.pth"))(means[0])
    assert torch.equal(beside, given)


def test_taesana_is_f32_without_decoder() -> None:
    enc = load_encoder(str(_need(TAESANA)), device="cpu")
    mean, logvar = enc(_tensor(_crop(64, 96)))
    assert mean.shape == (1, 32, 2, 3) and logvar is None
    engine = Engine.from_spec(str(TAESANA), device="cpu")
    assert engine.decoder is None  # encoder-only: certificates carry no round trip


def test_cli_refuses_adaptive_with_exit_code_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pca_cli import app

    Image.fromarray(_crop(32, 32)).save(tmp_path / "in.png")
    result = CliRunner().invoke(app, ["protect", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"),
                                      "--model", str(_need(TAEF2)), "--preset", "adaptive", "--steps", "1"])
    assert result.exit_code == 2
    assert "deterministic encoder" in result.output


def test_protect_cli_takes_a_separate_decoder_file(tmp_path: Path) -> None:
    """`pca-protect protect ENCODER.pth --decoder DECODER.pth`: round-trip fields appear in the certificate
    although no decoder lies beside the encoder file; without --decoder they are absent."""
    import json

    from typer.testing import CliRunner

    from pca_cli import app

    folder = _need(TAEF2)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(folder / "taef2_encoder.pth", lone / "taef2_encoder.pth")
    src = tmp_path / "in.png"
    src.write_bytes(_png(_crop(32, 48)))
    reports = {}
    for name, extra in (("with", ["--decoder", str(folder / "taef2_decoder.pth")]), ("without", [])):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["protect", str(src), "-o", str(out), "--model",
                                          str(lone / "taef2_encoder.pth"), "--steps", "1", "--device", "cpu", *extra])
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(next(out.glob("*.json")).read_text())
    assert reports["with"]["roundtrip_psnr_clean_db"] > 25
    assert reports["without"].get("roundtrip_psnr_clean_db") is None


def test_excess_damage_tells_a_reproduced_change_from_a_collapse() -> None:
    """A smooth change the autoencoder reproduces costs round-trip PSNR against the clean image (it is in the
    output), but no excess damage; the attack's collapse is excess damage (TAEF2, a 128x192 crop)."""
    from pca_attack import Protector
    from pca_attack.attack.lowpass import lowpass
    from pca_attack.redteam.report import redteam

    encoder, decoder = load_encoder(str(_need(TAEF2)), device="cpu"), load_decoder(str(TAEF2), device="cpu")
    x = torch.from_numpy(_crop(128, 192)).permute(2, 0, 1).float() / 255  # (3, H, W)
    field = lowpass(torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(0)), 8.0)[0]
    smooth = torch.round((x + field / field.abs().max() * 16 / 255).clamp(0, 1) * 255) / 255
    attacked = Protector(encoder, AttackConfig(steps=5)).protect(x[None]).images[0]
    reproduced = redteam(encoder, x, smooth, decoder=decoder, transforms=["blur-1"]).row("blur-1")
    collapsed = redteam(encoder, x, attacked, decoder=decoder, transforms=["blur-1"]).row("blur-1")
    assert reproduced.roundtrip_damage_db > 1.0 and abs(reproduced.roundtrip_excess_db) < 0.3
    assert collapsed.roundtrip_excess_db > 2.0
