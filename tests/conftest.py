"""Shared fixtures: tiny random KL-VAEs saved like real ones (never downloaded), and small test images."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pca_attack.models.registry import DEMO_MODEL_DIR

SHARED_MODELS = Path(__file__).resolve().parents[1] / ".." / "shared" / "models"  # real weights, never copied

torch.set_num_threads(1)  # tiny models: more threads only add contention on shared CI cores


def pytest_configure(config: pytest.Config) -> None:
    """One fresh memory-probe cache per test session (``pca_attack.attack.probe_cache``), inherited by the
    CLI, server and Ray processes the tests start: each model is probed once per session and thread count,
    never read from the user's own cache or from an earlier session's code. Likewise an empty folder for
    downloaded weights (``PCA_MODELS_DIR``): a test that loads ``taef2`` by name (the default model) sets up
    its own copy, and none sees the user's. pytest-xdist's workers inherit
    the folder their controller made (its configure runs before they start)."""
    if not hasattr(config, "workerinput"):
        os.environ["PCA_PROBE_CACHE"] = tempfile.mkdtemp(prefix="pca-probe-cache-")
        os.environ["PCA_MODELS_DIR"] = tempfile.mkdtemp(prefix="pca-models-")  # never the user's downloads


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        for name in ("PCA_PROBE_CACHE", "PCA_MODELS_DIR"):
            shutil.rmtree(os.environ.pop(name, ""), ignore_errors=True)


def make_tiny_vae(folder: Path, *, latent_channels: int = 4, quant_conv: bool = True, seed: int = 0) -> Path:
    """Save a random f8 AutoencoderKL with a few thousand parameters in diffusers layout."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=4,
        layers_per_block=1,
        latent_channels=latent_channels,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    )
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-latent-channel VAE folder (config.json + diffusion_pytorch_model.safetensors)."""
    return make_tiny_vae(tmp_path_factory.mktemp("tiny_vae"))


@pytest.fixture(scope="session")
def tiny_ae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny autoencoder (diffusers ``AutoencoderTiny``, TAESD's layout, 8 channels): convolutions only,
    so its tiles need no whole-image statistics (the GroupNorm VAE streams them: ~15x the time)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_ae")
    AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,  # type: ignore[attr-defined]
                    latent_channels=4).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vae16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 16-latent-channel VAE without quant_conv (the SD3 / FLUX layout)."""
    return make_tiny_vae(tmp_path_factory.mktemp("tiny_vae16"), latent_channels=16, quant_conv=False, seed=1)


@pytest.fixture
def taef2_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``taef2`` (the default model) loadable by name offline: ``PCA_MODELS_DIR`` holds symbolic links to the
    real weights in ``../shared/models/taef2``, as ``pca-protect models download taef2`` would hold the files;
    skipped where that folder is absent."""
    from pca_attack.models import encoder as encoder_module

    source = SHARED_MODELS / "taef2"
    if not source.is_dir():
        pytest.skip(f"{source.resolve()} is absent: the pretrained tiny-autoencoder weights are not in this workspace")
    folder = tmp_path / "models" / "taef2"
    folder.mkdir(parents=True)
    for name in ("taef2_encoder.pth", "taef2_decoder.pth"):
        (folder / name).symlink_to((source / name).resolve())
    monkeypatch.setenv("PCA_MODELS_DIR", str(folder.parent))
    monkeypatch.setattr(encoder_module, "_cache", {})
    return "taef2"


@pytest.fixture(scope="session")
def demo_available() -> bool:
    return (DEMO_MODEL_DIR / "config.json").is_file()


@pytest.fixture
def photo() -> Callable[..., np.ndarray]:
    """A smooth, photo-like RGB uint8 array of the requested size (deterministic)."""
    def make(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
        base = np.stack([np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in (0.0, 1.0, 2.0)], axis=2)
        noisy = 0.5 + 0.35 * base + 0.05 * rng.standard_normal((height, width, 3))
        return (np.clip(noisy, 0, 1) * 255).round().astype(np.uint8)
    return make


def to_bytes(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
