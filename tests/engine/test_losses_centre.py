"""A centred latent for deterministic encoders (``pca_attack.attack.losses.centred_encoder``, ``gray_centre``):
the collapse loss then pulls the latent toward the latent of a flat gray image instead of toward 0."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.losses import centred_encoder, gray_centre
from pca_attack.attack.pgd import Protector
from pca_attack.errors import ConfigError
from pca_attack.models.encoder import Encoder


def tiny_deterministic(posterior_type: str = "deterministic") -> Encoder:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 4, 8, stride=8))
    return Encoder(body, None, name="tiny-det", config={}, device=torch.device("cpu"), dtype=torch.float32,
                   posterior_type=posterior_type, signed_input=False, latent_channels=4,  # type: ignore[arg-type]
                   downsample_factor=8)


def test_centred_encoder_returns_the_latent_minus_the_centre() -> None:
    encoder = tiny_deterministic()
    centre = gray_centre(encoder)  # (1, 4, 1, 1)
    assert centre.shape == (1, 4, 1, 1) and centre.abs().sum() > 0
    x = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        mu, _ = encoder.posterior(x)
        shifted, logvar = centred_encoder(encoder, centre).posterior(x)
    assert logvar is None and torch.allclose(shifted, mu - centre, atol=1e-6)
    with torch.no_grad():
        gray_latent, _ = centred_encoder(encoder, centre).posterior(torch.full((1, 3, 64, 64), 0.5))
    # a flat gray image has nearly constant latents (borders aside): centred, they are near 0
    assert gray_latent.pow(2).mean() < 0.1 * centre.pow(2).mean()


def test_attack_on_the_centred_encoder_pulls_toward_the_centre_within_budget() -> None:
    encoder = tiny_deterministic()
    centre = gray_centre(encoder)
    x = (torch.rand(1, 3, 32, 48) * 255).round() / 255  # on the 8-bit grid, as decoded images are
    res = Protector(centred_encoder(encoder, centre), AttackConfig(steps=8)).protect(x)
    assert ((res.images - x).abs() * 255).max() <= 16 + 1e-3
    with torch.no_grad():
        before = (encoder.posterior(x)[0] - centre).pow(2).mean()
        after = (encoder.posterior(res.images)[0] - centre).pow(2).mean()
    assert after < 0.9 * before


def test_a_gaussian_encoder_refuses_a_centre() -> None:
    encoder = tiny_deterministic("gaussian")
    with pytest.raises(ConfigError, match="deterministic encoders only"):
        centred_encoder(encoder, torch.zeros(1, 4, 1, 1))


def test_gray_interior_centre_is_the_flat_latent_away_from_the_borders() -> None:
    from pca_attack.attack.losses import gray_interior_centre

    encoder = tiny_deterministic()
    centre = gray_interior_centre(encoder, latent_side=12)  # (1, 4, 1, 1)
    with torch.no_grad():
        big, _ = encoder.posterior(torch.full((1, 3, 256, 256), 0.5))  # (1, 4, 32, 32)
    assert centre.shape == (1, 4, 1, 1)
    assert torch.allclose(big[:, :, 4:-4, 4:-4], centre.expand(1, 4, 24, 24), atol=1e-6)  # uniform inside
    assert not torch.allclose(big[:, :, :1, :1], centre, atol=1e-4)  # the zero padding shifts the border
