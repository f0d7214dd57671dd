"""``--device cuda`` is strict: a CUDA device that does not exist fails loudly with a typed error (CLI exit 2),
never a silent fall-back to the CPU. Runs everywhere: without CUDA it asks for ``cuda``; with CUDA it asks for
``cuda:N`` one past the last device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pca_attack import DeviceUnavailableError, Engine, load_encoder
from pca_attack.models.devices import resolve_device
from pca_cli import app

pytestmark = pytest.mark.cuda


def missing_cuda_device() -> str:
    """A CUDA device name that this machine cannot provide."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


def test_resolving_a_missing_cuda_device_raises_a_typed_error() -> None:
    name = missing_cuda_device()
    with pytest.raises(DeviceUnavailableError) as info:
        resolve_device(name)
    message = str(info.value)
    assert "cuda" in message.lower()
    assert "--device cpu" in message or "device(s) exist" in message  # says what to do / what exists


def test_loading_onto_a_missing_cuda_device_never_falls_back_to_the_cpu() -> None:
    name = missing_cuda_device()
    with pytest.raises(DeviceUnavailableError):
        load_encoder("demo", device=name, dtype="fp32")
    with pytest.raises(DeviceUnavailableError):
        Engine.from_spec("demo", device=name, with_decoder=False, offline=True)


def test_cli_protect_with_a_missing_cuda_device_exits_2(tmp_path) -> None:
    source = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 48, 3), 128, dtype=np.uint8)).save(source)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["protect", str(source), "-o", str(out), "--device", missing_cuda_device(), "--steps", "1", "--offline"]
    )
    assert result.exit_code == 2, result.output
    assert "cuda" in result.output.lower()
    assert not any(out.glob("*.png"))  # nothing was protected on another device


def test_cuda_loads_onto_the_gpu_when_present() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: only the refusal above can be checked here")
    encoder = load_encoder("demo", device="cuda", dtype="fp32")
    assert encoder.device.type == "cuda"
