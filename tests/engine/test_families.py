"""Model families on tiny random configs (nothing downloaded): FLUX.2, Qwen-Image, Sana DC-AE, tiny autoencoders.

Each family: only the encoder is built, its posterior equals diffusers' own ``encode``, the budget holds on the
written bytes, the loss moves in the preset's direction, and odd sizes are padded to the family's factor and
cropped back.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pca_attack import AttackConfig, ConfigError, load_decoder, load_encoder
from pca_attack.pipeline import Engine


def _flux2(folder: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=8)
    vae.save_pretrained(folder)
    return vae


def _qwen(folder: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKLQwenImage

    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                 latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    vae.save_pretrained(folder)
    return vae


def _dc(folder: Path) -> torch.nn.Module:
    from diffusers import AutoencoderDC

    vae = AutoencoderDC(
        latent_channels=4, attention_head_dim=8, encoder_block_types="ResBlock", decoder_block_types="ResBlock",
        encoder_block_out_channels=(8,) * 6, decoder_block_out_channels=(8,) * 6,
        encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6,
        encoder_qkv_multiscales=((),) * 6, decoder_qkv_multiscales=((),) * 6,
    )
    vae.save_pretrained(folder)
    return vae


def _tiny(folder: Path) -> torch.nn.Module:
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4, latent_channels=4)
    vae.save_pretrained(folder)
    return vae


def _reference(family: str, vae: torch.nn.Module, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """diffusers' own posterior of x01 (B, 3, H, W): (mean, logvar or None)."""
    with torch.no_grad():
        if family == "qwen":  # a one-frame video (B, 3, 1, H, W) in [-1, 1]
            dist = vae.encode(x01[:, :, None] * 2 - 1).latent_dist
            return dist.mean[:, :, 0], dist.logvar[:, :, 0]
        if family == "dc":
            return vae.encode(x01 * 2 - 1).latent, None
        if family == "tiny":
            return vae.encode(x01 * 2 - 1).latents, None
        dist = vae.encode(x01 * 2 - 1).latent_dist
        return dist.mean, dist.logvar


# family -> (builder, spatial factor, posterior type)
FAMILIES: dict[str, tuple[Callable[[Path], torch.nn.Module], int, str]] = {
    "flux2": (_flux2, 8, "gaussian"),
    "qwen": (_qwen, 8, "gaussian"),
    "dc": (_dc, 32, "deterministic"),
    "tiny": (_tiny, 8, "deterministic"),
}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    torch.manual_seed(0)
    return {name: (folder, build(folder)) for name, (build, _, _) in FAMILIES.items()
            for folder in [tmp_path_factory.mktemp(name)]}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_only_the_encoder_is_built_and_matches_diffusers(family: str, family_dirs: dict) -> None:
    folder, vae = family_dirs[family]
    enc = load_encoder(str(folder), device="cpu")
    assert enc.posterior_type == FAMILIES[family][2]
    assert enc.downsample_factor == FAMILIES[family][1]
    assert not any("decoder" in name for name, _ in enc.named_modules())
    halves = ("encoder.", "quant_conv.")
    encoder_params = sum(p.numel() for name, p in vae.named_parameters() if name.startswith(halves))
    assert enc.num_parameters() == encoder_params
    x = torch.rand(1, 3, 64, 64)
    mean, logvar = enc(x)
    ref_mean, ref_logvar = _reference(family, vae, x)
    assert mean.shape == ref_mean.shape
    assert torch.allclose(mean, ref_mean, rtol=1e-4, atol=1e-5)
    if ref_logvar is None:
        assert logvar is None
    else:
        assert logvar is not None and torch.allclose(logvar, ref_logvar.clamp(-30, 20), rtol=1e-4, atol=1e-5)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("preset", ["pca-", "pca+"])
def test_protect_bytes_odd_size_budget_and_direction(
    family: str, preset: str, family_dirs: dict, photo: Callable[..., np.ndarray]
) -> None:
    folder, _ = family_dirs[family]
    factor = FAMILIES[family][1]
    height, width = factor + 5, 2 * factor + 3  # not multiples of the factor: padded, then cropped back
    rgb = photo(height, width)
    engine = Engine.from_spec(str(folder), device="cpu")
    out = engine.protect_bytes(_png(rgb), AttackConfig(preset=preset, steps=4, eps=8))
    written = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"))
    assert written.shape == rgb.shape
    assert np.abs(written.astype(int) - rgb.astype(int)).max() <= 8
    cert = out.certificate
    assert cert.budget_ok and cert.posterior == FAMILIES[family][2]
    if preset == "pca-":
        assert cert.loss_protected < cert.loss_clean
        if cert.posterior == "deterministic":  # the loss IS the mean energy (scaled): it must fall too
            assert cert.mean_energy_protected < cert.mean_energy_clean
    else:
        assert cert.loss_protected > cert.loss_clean


@pytest.mark.parametrize("family", ["dc", "tiny"])
@pytest.mark.parametrize("preset", ["adaptive", "pca-var"])
def test_deterministic_families_refuse_variance_presets(family: str, preset: str, family_dirs: dict) -> None:
    folder, _ = family_dirs[family]
    engine = Engine.from_spec(str(folder), device="cpu", with_decoder=False)
    with pytest.raises(ConfigError, match="deterministic encoder"):
        engine.protect_bytes(_png(np.full((40, 40, 3), 128, np.uint8)), AttackConfig(preset=preset, steps=1))


def test_diffusers_tiny_decoder_matches(family_dirs: dict) -> None:
    folder, vae = family_dirs["tiny"]
    dec = load_decoder(str(folder), device="cpu")
    z = torch.randn(1, 4, 5, 6)
    with torch.no_grad():
        ref = ((vae.decode(z).sample + 1) / 2).clamp(0, 1)
    assert torch.allclose(dec(z), ref, rtol=1e-4, atol=1e-5)


def _original_layout(vae: torch.nn.Module, role: str) -> dict[str, torch.Tensor]:
    """AutoencoderTiny keys -> the original .pth layout (decoder index + 1: the clamp is layer 0)."""
    prefix, shift = f"{role}.layers.", 0 if role == "encoder" else 1
    out = {}
    for key, tensor in vae.state_dict().items():
        if key.startswith(prefix):
            index, rest = key.removeprefix(prefix).split(".", 1)
            out[f"{int(index) + shift}.{rest}"] = tensor.clone()
    return out


def test_original_pth_layout_folder_file_and_decoder_option(family_dirs: dict, tmp_path: Path) -> None:
    _, vae = family_dirs["tiny"]
    torch.save(_original_layout(vae, "encoder"), tmp_path / "toy_encoder.pth")
    torch.save(_original_layout(vae, "decoder"), tmp_path / "elsewhere.pth")
    x = torch.rand(1, 3, 32, 48)
    ref_mean, _ = _reference("tiny", vae, x)
    for spec in (str(tmp_path), str(tmp_path / "toy_encoder.pth")):
        enc = load_encoder(spec, device="cpu")
        assert (enc.latent_channels, enc.downsample_factor, enc.posterior_type) == (4, 8, "deterministic")
        assert torch.allclose(enc(x)[0], ref_mean, rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="--decoder"):  # no toy_decoder.pth beside it
        load_decoder(str(tmp_path / "toy_encoder.pth"), device="cpu")
    dec = load_decoder(str(tmp_path / "toy_encoder.pth"), device="cpu", decoder=str(tmp_path / "elsewhere.pth"))
    with torch.no_grad():
        assert torch.allclose(dec(ref_mean), ((vae.decode(ref_mean).sample + 1) / 2).clamp(0, 1), atol=1e-5)
