"""What the speed benchmarks measure on: VAE configs with random weights, the full VAE, the test image."""

from __future__ import annotations

import copy
import gc
from pathlib import Path
from typing import Any

import torch

SD1_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "latent_channels": 4,
    "sample_size": 512,
}
QUICK_CONFIG: dict[str, Any] = {
    **SD1_CONFIG,
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}


def build_random_vae_folder(config: dict[str, Any], folder: Path, seed: int = 0) -> Path:
    """Save an AutoencoderKL with random (seeded) weights as a diffusers folder; returns the folder."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**config)
    vae.save_pretrained(str(folder))
    del vae
    gc.collect()
    return folder


def load_full_vae(spec: str, device: torch.device) -> torch.nn.Module:
    """The whole diffusers AutoencoderKL (decoder included) for the same spec ``load_encoder`` takes."""
    from diffusers import AutoencoderKL

    from pca_attack.models.weights import resolve_source

    source = resolve_source(spec)
    if source.kind == "file":
        vae = AutoencoderKL.from_single_file(source.location)
    elif source.kind == "folder" or source.subfolder is not None:
        vae = AutoencoderKL.from_pretrained(source.location, subfolder=source.subfolder)
    else:  # a hub id with the VAE at the top level or in vae/
        try:
            vae = AutoencoderKL.from_pretrained(source.location)
        except Exception:
            vae = AutoencoderKL.from_pretrained(source.location, subfolder="vae")
    return vae.to(device=device, dtype=torch.float32).eval()


def test_image(size: int, batch: int = 1) -> tuple[torch.Tensor, str]:
    """(batch, 3, size, size) in [0, 1] on the uint8 grid: scikit-image's astronaut photo (public domain,
    NASA) resized, with flips for further batch members; a seeded synthetic image without scikit-image."""
    try:
        from skimage import data

        arr = torch.from_numpy(data.astronaut().copy()).permute(2, 0, 1)[None].float() / 255.0
        name = "skimage.data.astronaut"
    except Exception:
        gen = torch.Generator().manual_seed(0)
        yy, xx = torch.meshgrid(torch.linspace(0, 1, 512), torch.linspace(0, 1, 512), indexing="ij")
        base = torch.stack([xx, yy, (xx + yy) / 2])[None]
        arr = (0.7 * base + 0.3 * torch.rand(1, 3, 512, 512, generator=gen)).clamp(0, 1)
        name = "synthetic (seeded gradient + noise)"
    img = torch.nn.functional.interpolate(arr, size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)
    img = (img.clamp(0, 1) * 255).round() / 255  # (1, 3, size, size) on the uint8 grid
    variants = [img, img.flip(-1), img.flip(-2), img.flip(-1, -2)]
    return torch.cat([variants[i % 4] for i in range(batch)]), f"{name} resized to {size}x{size}"


def nchw_copy(encoder: Any) -> Any:
    """A copy of a loaded ``Encoder`` whose convolutions run NCHW (contiguous), whatever the device."""
    twin = copy.deepcopy(encoder)
    twin.to(memory_format=torch.contiguous_format)
    twin.memory_format = torch.contiguous_format
    return twin


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return int(sum(t.numel() * t.element_size() for t in tensors))
