"""The certificate reuses the attack's final posterior of a lossless output (issue 12: no second encoder pass
of the protected image) and reports exactly what it would have measured itself; lossy outputs are re-encoded."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pca_attack.certify.report as report
from pca_attack.attack.config import AttackConfig
from pca_attack.io.images import decode_image
from pca_attack.pipeline import Engine


def _image(photo: Callable[..., np.ndarray], height: int = 48, width: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo(height, width)).save(buffer, "PNG")
    return buffer.getvalue()


def _count_posteriors(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = report.posterior

    def counted(encoder, x):  # type: ignore[no-untyped-def]
        calls.append(int(x.shape[-1]))
        return real(encoder, x)

    monkeypatch.setattr(report, "posterior", counted)
    return calls


@pytest.mark.parametrize("preset", ["pca-", "adaptive"])
def test_a_lossless_certificate_reuses_the_attack_posterior_with_identical_fields(
    tiny_vae_dir: Path, photo: Callable[..., np.ndarray], monkeypatch: pytest.MonkeyPatch, preset: str
) -> None:
    engine = Engine.from_spec(str(tiny_vae_dir), device="cpu", with_decoder=True)
    source = decode_image(_image(photo))
    config = AttackConfig(steps=3, preset=preset)
    calls = _count_posteriors(monkeypatch)
    out = engine.protect([source], config, fmt="png")[0]
    assert len(calls) == 1  # the clean image only: the protected one came from the attack's final evaluation
    again = report.certificate(
        encoder=engine.encoder, config=config, clean=source, written=decode_image(out.data), fmt="png", quality=None,
        steps_run=out.certificate.steps_run, best_step=out.certificate.best_step, elapsed_s=0.0,
        decoder=engine.decoder,
    )
    assert len(calls) == 3  # measured itself: clean and protected
    reused = out.certificate.model_dump(exclude={"elapsed_s", "notes", "tiles", "tile_size", "generator_id"})
    fresh = again.model_dump(exclude={"elapsed_s", "notes", "tiles", "tile_size", "generator_id"})
    assert reused == fresh
    assert out.certificate.loss_protected < out.certificate.loss_clean


def test_a_lossy_certificate_encodes_the_written_file_again(
    tiny_vae_dir: Path, photo: Callable[..., np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine.from_spec(str(tiny_vae_dir), device="cpu", with_decoder=False)
    calls = _count_posteriors(monkeypatch)
    out = engine.protect([decode_image(_image(photo))], AttackConfig(steps=2), fmt="jpeg", quality=80)[0]
    assert len(calls) == 2  # clean, and the decoded JPEG (not the attack's pixels)
    assert out.certificate.format == "jpeg"


def test_a_tiled_attack_hands_the_certificate_its_stitched_posterior(
    tiny_vae_dir: Path, photo: Callable[..., np.ndarray]
) -> None:
    from pca_attack.attack.losses import pca_loss
    from pca_attack.attack.pgd import Protector
    from pca_attack.attack.tiling import TiledObjective, TileGrid

    encoder = Engine.from_spec(str(tiny_vae_dir), device="cpu", with_decoder=False).encoder
    batch = decode_image(_image(photo, 96, 128)).to_tensor()[None]  # (1, 3, 96, 128)
    grid = TileGrid(96, 128, encoder.downsample_factor, 32, 16)
    result = Protector(encoder, AttackConfig(steps=2)).protect(batch, tiles=grid)
    assert result.posterior is not None and len(grid) > 1
    mean, logvar = result.posterior  # (1, C, 12, 16): the tiles' cores stitched
    assert mean.shape[-2:] == grid.latent_shape
    # the posterior the final loss was computed from, as a tiled measurement of the returned image reports it
    assert torch.allclose(pca_loss(mean, logvar, 1e-8), result.final_loss, rtol=1e-5)
    again, _ = TiledObjective(encoder, grid=grid).posterior(result.images)
    assert torch.allclose(mean, again, atol=1e-6)
