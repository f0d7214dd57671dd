"""Loading encoders: folders, single files, registry, errors, caching, freezing, device checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pca_attack import (
    DeviceUnavailableError,
    ModelNotFoundError,
    clear_cache,
    load_decoder,
    load_encoder,
)
from pca_attack.models.weights import resolve_source


def test_folder_loads_frozen_encoder_only(tiny_vae_dir: Path) -> None:
    enc = load_encoder(str(tiny_vae_dir), device="cpu")
    assert all(not p.requires_grad for p in enc.parameters())
    assert not enc.training
    assert not hasattr(enc, "decoder")
    mean, logvar = enc(torch.rand(2, 3, 32, 40))
    assert mean.shape == (2, 4, 4, 5) and logvar.shape == (2, 4, 4, 5)
    assert logvar.min() >= -30 and logvar.max() <= 20


def test_encoder_matches_diffusers(tiny_vae_dir: Path) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    enc = load_encoder(str(tiny_vae_dir), device="cpu")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        dist = vae.encode(x * 2 - 1).latent_dist
        mean, logvar = enc(x)
    # channels_last convolutions (see pca_attack.models.devices.conv_memory_format): equal up to float rounding
    assert torch.allclose(mean, dist.mean, rtol=1e-4, atol=1e-5)
    assert torch.allclose(logvar, dist.logvar, rtol=1e-4, atol=1e-5)


def test_cache_returns_the_same_module(tiny_vae_dir: Path) -> None:
    a = load_encoder(str(tiny_vae_dir), device="cpu")
    b = load_encoder(str(tiny_vae_dir), device="cpu", dtype="fp32")
    assert a is b
    clear_cache()
    assert load_encoder(str(tiny_vae_dir), device="cpu") is not a


def test_pipeline_folder_with_vae_subfolder(tiny_vae_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_vae_dir, tmp_path / "pipe" / "vae")
    src = resolve_source(str(tmp_path / "pipe"))
    assert src.subfolder == "vae"
    assert load_encoder(str(tmp_path / "pipe"), device="cpu").latent_channels == 4


def test_single_safetensors_file_with_sidecar_config(tiny_vae_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "my_vae.safetensors"
    shutil.copy(tiny_vae_dir / "diffusion_pytorch_model.safetensors", weights)
    shutil.copy(tiny_vae_dir / "config.json", tmp_path / "my_vae.json")
    enc = load_encoder(str(weights), device="cpu")
    ref = load_encoder(str(tiny_vae_dir), device="cpu")
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(enc(x)[0], ref(x)[0])


def test_single_file_config_inferred_from_weights(tmp_path: Path) -> None:
    """Without a sidecar the SD-family architecture (32 norm groups) is read off the tensor shapes."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
    )
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))
    enc = load_encoder(str(path), device="cpu")
    assert enc.downsample_factor == 2 and enc.latent_channels == 4
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(enc(x)[0], vae.encode(x * 2 - 1).latent_dist.mean, atol=1e-5)


def test_ldm_layout_single_file_is_converted(tmp_path: Path) -> None:
    """An original-LDM checkpoint (keys encoder.down.N.block...) inside a full SD checkpoint loads."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
    )
    state = vae.state_dict()
    ldm: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key.replace("mid_block.attentions.0", "mid.attn_1").replace("mid_block.resnets.0", "mid.block_1")
        k = k.replace("mid_block.resnets.1", "mid.block_2")
        k = k.replace("down_blocks", "down").replace("resnets", "block").replace("downsamplers.0", "downsample")
        k = k.replace("up_blocks", "up").replace("upsamplers.0", "upsample").replace("conv_shortcut", "nin_shortcut")
        k = k.replace("conv_norm_out", "norm_out")
        k = k.replace("group_norm", "norm").replace("to_q", "q").replace("to_k", "k").replace("to_v", "v")
        k = k.replace("to_out.0", "proj_out")
        if ".attn_1." in k and value.ndim == 2:
            value = value[:, :, None, None]
        ldm["first_stage_model." + k] = value.contiguous()
    # LDM numbers decoder up-blocks in reverse order
    n = 2
    fixed = {}
    for key, value in ldm.items():
        parts = key.split(".")
        if parts[1:3] == ["decoder", "up"]:
            parts[3] = str(n - 1 - int(parts[3]))
        fixed[".".join(parts)] = value
    path = tmp_path / "sd.safetensors"
    save_file(fixed, str(path))
    enc = load_encoder(str(path), device="cpu")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(enc(x)[0], vae.encode(x * 2 - 1).latent_dist.mean, atol=1e-5)


def test_sixteen_channel_layout_without_quant_conv(tiny_vae16_dir: Path) -> None:
    enc = load_encoder(str(tiny_vae16_dir), device="cpu")
    assert enc.quant_conv is None and enc.latent_channels == 16
    mean, _ = enc(torch.rand(1, 3, 24, 24))
    assert mean.shape == (1, 16, 3, 3)


def test_decoder_is_separate_and_round_trips_shapes(tiny_vae_dir: Path) -> None:
    dec = load_decoder(str(tiny_vae_dir), device="cpu")
    out = dec(torch.randn(1, 4, 3, 5))
    assert out.shape == (1, 3, 24, 40) and out.min() >= 0 and out.max() <= 1


def test_encoder_only_file_has_no_decoder(tiny_vae_dir: Path, tmp_path: Path) -> None:
    state = load_file(str(tiny_vae_dir / "diffusion_pytorch_model.safetensors"))
    enc_only = {k: v for k, v in state.items() if k.startswith(("encoder.", "quant_conv."))}
    save_file(enc_only, str(tmp_path / "enc.safetensors"))
    (tmp_path / "enc.json").write_text((tiny_vae_dir / "config.json").read_text())
    assert load_encoder(str(tmp_path / "enc.safetensors"), device="cpu").latent_channels == 4
    from pca_attack import ModelLoadError

    with pytest.raises(ModelLoadError, match="no decoder"):
        load_decoder(str(tmp_path / "enc.safetensors"), device="cpu")


def test_missing_model_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        load_encoder(str(tmp_path / "nope"), device="cpu")
    text = str(info.value)
    assert "models download" in text and "demo" in text


def test_registry_model_offline_fails_fast_with_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="pca-protect models download sd15"):
        load_encoder("sd15", device="cpu", offline=True)


def test_folder_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"latent_channels": 4}))
    with pytest.raises(ModelNotFoundError, match="no diffusion_pytorch_model"):
        load_encoder(str(tmp_path), device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="machine has CUDA")
def test_cuda_requested_without_cuda_fails_loudly(tiny_vae_dir: Path) -> None:
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        load_encoder(str(tiny_vae_dir), device="cuda")


def test_bf16_encoder_still_gives_fp32_loss(tiny_vae_dir: Path) -> None:
    from pca_attack import pca_loss

    enc = load_encoder(str(tiny_vae_dir), device="cpu", dtype="bf16")
    mean, logvar = enc(torch.rand(1, 3, 16, 16))
    assert mean.dtype == torch.bfloat16
    assert pca_loss(mean, logvar, 1e-8).dtype == torch.float32


def test_cpu_encoder_runs_channels_last_and_matches_nchw(tiny_vae_dir: Path) -> None:
    """The CPU encoder's convolutions run channels_last (faster with oneDNN); the posterior equals the
    NCHW one up to float rounding, and gradients still reach the input in its own layout."""
    import copy

    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    assert encoder.memory_format == torch.channels_last
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    nchw = copy.deepcopy(encoder).to(memory_format=torch.contiguous_format)
    nchw.memory_format = torch.contiguous_format
    x = torch.rand(2, 3, 32, 40, requires_grad=True)
    mean, logvar = encoder(x)
    mean_ref, logvar_ref = nchw(x)
    assert torch.allclose(mean, mean_ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(logvar, logvar_ref, rtol=1e-4, atol=1e-5)
    (grad,) = torch.autograd.grad(mean.sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all()



def test_conv_layout_policy_per_device() -> None:
    from pca_attack.models.devices import conv_memory_format

    assert conv_memory_format(torch.device("cpu")) == torch.channels_last
    assert conv_memory_format(torch.device("cuda")) == torch.channels_last
    assert conv_memory_format(torch.device("mps")) == torch.contiguous_format
