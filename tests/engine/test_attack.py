"""The PGD loop: reference equivalence, budget on the bytes, direction of the loss, determinism."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pca_attack import PRESETS, REFERENCE_CONFIG, AttackConfig, Engine, Protector, load_encoder
from pca_attack.attack.budget import quantize


def naive_reference_loop(
    vae: torch.nn.Module, x: torch.Tensor, eps: float = 16 / 255, alpha: float = 2 / 255,
    iters: int = 40, v: float = 1e-8,
) -> tuple[list[float], torch.Tensor]:
    """The reference implementation's loop, written plainly: whole VAE, weights requiring grad, backward."""
    vae.requires_grad_(True)
    x_clean = x.clone()
    x_adv = x.clone()
    losses = []
    for _ in range(iters):
        x_adv.requires_grad_(True)
        dist = vae.encode(x_adv * 2 - 1).latent_dist
        loss = 0.5 * torch.sum(-dist.logvar - 1 + (dist.mean**2 + dist.var) / v)
        loss.backward()
        losses.append(loss.item())
        x_adv = x_adv - alpha * x_adv.grad.sign()
        eta = torch.clamp(x_adv - x_clean, min=-eps, max=eps)
        x_adv = torch.clamp(x_clean + eta, min=0, max=1).detach()
    return losses, x_adv


def test_per_step_losses_equal_the_naive_reference(tiny_vae_dir: Path) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    x = torch.round(torch.rand(1, 3, 32, 40) * 255) / 255
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    ref_losses, ref_last = naive_reference_loop(vae, x, iters=12)
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    result = Protector(encoder, REFERENCE_CONFIG.with_(steps=12)).protect(x)
    ours = result.loss_trace[0].tolist()
    assert np.allclose(ours, ref_losses, rtol=1e-6, atol=0), (ours, ref_losses)
    # the reference returns the last iterate; ours is that iterate rounded to the uint8 grid
    assert torch.equal(result.images, quantize(ref_last, x, 16, torch.tensor([255.0])))
    assert result.best_step.item() == 12


def test_best_iterate_is_never_worse_than_the_last(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    x = torch.round(torch.rand(2, 3, 24, 24) * 255) / 255
    best = Protector(encoder, AttackConfig(steps=8)).protect(x)
    last = Protector(encoder, AttackConfig(steps=8, keep_best=False)).protect(x)
    assert (best.final_loss <= last.final_loss * (1 + 1e-4)).all()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_budget_holds_on_returned_bytes_at_odd_size(
    tiny_vae_dir: Path, photo: Callable[..., np.ndarray], preset: str
) -> None:
    engine = Engine.from_spec(str(tiny_vae_dir), device="cpu")
    source = photo(250, 333) if preset == "pca-" else photo(37, 53)
    buffer = io.BytesIO()
    Image.fromarray(source).save(buffer, format="PNG")
    out = engine.protect_bytes(buffer.getvalue(), AttackConfig(preset=preset, steps=4, eps=8, step=3))
    written = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB")).astype(int)
    assert written.shape == source.shape  # output size = input size
    assert np.abs(written - source.astype(int)).max() <= 8
    assert out.certificate.budget_ok and out.certificate.linf_255 <= 8
    assert (out.certificate.height, out.certificate.width) == source.shape[:2]


def test_fractional_eps_is_floored_on_the_grid(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    x = torch.round(torch.rand(1, 3, 16, 16) * 255) / 255
    out = Protector(encoder, AttackConfig(eps=4.5, step=4.5, steps=3)).protect(x)
    assert ((out.images - x).abs() * 255).max() <= 4.5


def _demo_or_tiny(demo_available: bool, tiny_vae_dir: Path) -> str:
    return "demo" if demo_available else str(tiny_vae_dir)


def test_loss_decreases_for_pca_minus(demo_available: bool, tiny_vae_dir: Path) -> None:
    encoder = load_encoder(_demo_or_tiny(demo_available, tiny_vae_dir), device="cpu")
    x = torch.round(torch.rand(1, 3, 64, 64) * 255) / 255
    out = Protector(encoder, AttackConfig(preset="pca-", steps=10)).protect(x)
    assert out.final_loss.item() < out.clean_loss.item()
    assert out.loss_trace[0, -1] < out.loss_trace[0, 0]


def test_loss_increases_for_pca_plus(demo_available: bool, tiny_vae_dir: Path) -> None:
    encoder = load_encoder(_demo_or_tiny(demo_available, tiny_vae_dir), device="cpu")
    x = torch.round(torch.rand(1, 3, 64, 64) * 255) / 255
    out = Protector(encoder, AttackConfig(preset="pca+", steps=10)).protect(x)
    assert out.final_loss.item() > out.clean_loss.item()


def test_same_seed_same_bytes(tiny_vae_dir: Path, photo: Callable[..., np.ndarray]) -> None:
    engine = Engine.from_spec(str(tiny_vae_dir), device="cpu")
    buffer = io.BytesIO()
    Image.fromarray(photo(40, 56)).save(buffer, format="PNG")
    config = AttackConfig(steps=3, random_start=True, seed=11)
    a = engine.protect_bytes(buffer.getvalue(), config).data
    b = engine.protect_bytes(buffer.getvalue(), config).data
    c = engine.protect_bytes(buffer.getvalue(), config.with_(seed=12)).data
    assert a == b and a != c


def test_batch_equals_one_by_one(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    x = torch.round(torch.rand(3, 3, 16, 24) * 255) / 255
    batched = Protector(encoder, AttackConfig(steps=3)).protect(x).images
    single = torch.cat([Protector(encoder, AttackConfig(steps=3)).protect(x[i : i + 1]).images for i in range(3)])
    assert ((batched - single).abs() * 255).max() <= 1.0  # conv batching may flip a rounding


def test_grayscale_perturbation_is_channel_tied(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    gray = torch.round(torch.rand(1, 1, 24, 24) * 255).expand(1, 3, 24, 24) / 255
    out = Protector(encoder, AttackConfig(steps=4, random_start=True)).protect(gray, grayscale=torch.tensor([True]))
    assert torch.equal(out.images[:, 0], out.images[:, 1]) and torch.equal(out.images[:, 1], out.images[:, 2])


def test_early_stop_stops_when_stalled(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    x = torch.round(torch.rand(1, 3, 16, 16) * 255) / 255
    out = Protector(encoder, AttackConfig(steps=200, early_stop_patience=2, early_stop_tol=0.5)).protect(x)
    assert out.steps_run < 200 and out.loss_trace.shape == (1, out.steps_run)


def test_sixteen_channel_model_is_attacked(tiny_vae16_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae16_dir), device="cpu")
    x = torch.round(torch.rand(1, 3, 20, 28) * 255) / 255
    out = Protector(encoder, AttackConfig(steps=5)).protect(x)
    assert out.images.shape == x.shape and out.final_loss.item() < out.clean_loss.item()


def test_gradient_never_reaches_the_weights(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    Protector(encoder, AttackConfig(steps=2)).protect(torch.rand(1, 3, 16, 16))
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())


def test_repr_prints_the_config(tiny_vae_dir: Path) -> None:
    text = repr(Protector(load_encoder(str(tiny_vae_dir), device="cpu"), AttackConfig(eps=8)))
    assert "eps=8/255" in text and "preset='pca-'" in text


def test_rejects_bad_tensors(tiny_vae_dir: Path) -> None:
    from pca_attack import ConfigError

    protector = Protector(load_encoder(str(tiny_vae_dir), device="cpu"))
    with pytest.raises(ConfigError, match="shape"):
        protector.protect(torch.rand(3, 16, 16))
    with pytest.raises(ConfigError, match="inside"):
        protector.protect(torch.rand(1, 3, 16, 16) * 2)
