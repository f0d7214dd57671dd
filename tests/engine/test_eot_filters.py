"""The ``cleaner`` EoT stand-in: torch versions of the red team's bilateral + guided filter cleaner that match
it, give the attack a gradient through it, and keep the transform's graph small (activation checkpointing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.eot import EOT_PRESETS, build_eot
from pca_attack.attack.eot_filters import RandomCleaner, bilateral, cleaner, spatial_weights
from pca_attack.attack.pgd import Protector
from pca_attack.certify.diagnostics import psnr
from pca_attack.models.encoder import load_encoder
from pca_attack.redteam.channels import cleaner as real_cleaner


def _photo() -> torch.Tensor:
    from skimage import data

    crop = data.chelsea()[80:144, 120:216].copy()  # (64, 96, 3)
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255  # (1, 3, 64, 96)


def test_bilateral_matches_skimage() -> None:
    from skimage.restoration import denoise_bilateral

    x = _photo()
    image = x[0].permute(1, 2, 0).double().numpy()  # (H, W, 3)
    expected = denoise_bilateral(image, win_size=5, sigma_color=0.05, sigma_spatial=2.0, channel_axis=-1)
    got = bilateral(x, 0.05)[0].permute(1, 2, 0).double().numpy()
    assert np.abs(got - expected).max() < 1e-3  # skimage's colour lookup table has 10000 bins


def test_spatial_weights_are_skimage_table_read_with_the_window_stride() -> None:
    w = spatial_weights(2, 2.0)
    assert len(w) == 5 and all(len(row) == 5 for row in w)
    assert w[0][0] == pytest.approx(np.exp(-18 / 8))  # table entry (0, 0) on the grid -3..2: (-3, -3)
    assert w[0][1] != w[0][3]  # not the symmetric Gaussian: skimage's quirk reproduced


def test_cleaner_matches_the_red_team_channel() -> None:
    x = _photo()
    ours = torch.round(cleaner(x) * 255) / 255
    theirs = real_cleaner(x)
    assert psnr(ours[0], theirs[0]) > 50.0  # the real one filters in float64, rounds once
    assert psnr(theirs[0], x[0]) < 40.0  # and it does change the image: the match is not trivial


def test_cleaner_gradient_is_the_same_with_and_without_checkpointing() -> None:
    x = _photo().requires_grad_()
    (g_checkpointed,) = torch.autograd.grad(cleaner(x).square().sum(), x)
    y = x
    for _ in range(4):  # the same passes without checkpoint
        y = bilateral(y, 0.05)
    from pca_attack.attack.eot_filters import GRAY, guided_filter

    gray = (x * x.new_tensor(GRAY).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    plain = guided_filter(gray, y, radius=4, eps=16.0 / 255.0**2).clamp(0, 1)
    (g_plain,) = torch.autograd.grad(plain.square().sum(), x)
    assert torch.allclose(g_checkpointed, g_plain, atol=1e-5)
    assert float(g_plain.abs().mean()) > 0


def test_checkpointing_keeps_the_transform_graph_to_a_few_image_sizes() -> None:
    x = _photo().requires_grad_()
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        cleaner(x)
    image_bytes = x.numel() * x.element_size()
    # measured: 23 image sizes (the checkpoints' inputs and the guided filter's graph); without checkpointing 291
    assert sum(saved) < 40 * image_bytes


def test_random_cleaner_draws_from_the_generator() -> None:
    x = _photo()
    a = RandomCleaner()(x, torch.Generator().manual_seed(3))
    b = RandomCleaner()(x, torch.Generator().manual_seed(3))
    c = RandomCleaner()(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_cleaner_presets_are_listed_and_attack_within_budget(tiny_vae_dir: Path) -> None:
    tiny_encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    assert "cleaner" in EOT_PRESETS
    assert isinstance(build_eot("cleaner"), RandomCleaner)
    x = torch.randint(0, 256, (1, 3, 32, 48), generator=torch.Generator().manual_seed(0)) / 255  # on the uint8 grid
    result = Protector(tiny_encoder, AttackConfig(steps=3, eot="cleaner", seed=0)).protect(x)
    assert float((result.images - x).abs().max()) <= 16 / 255 + 1e-6
    assert not torch.equal(result.images, x)



def test_every_named_preset_has_a_transformation_and_no_other() -> None:
    from pca_attack.attack.eot import _FACTORIES
    from pca_attack.attack.eot_names import EOT_DESCRIPTIONS

    assert list(_FACTORIES) == list(EOT_DESCRIPTIONS) == list(EOT_PRESETS)
    assert all(callable(build_eot(name)) for name in EOT_DESCRIPTIONS)
