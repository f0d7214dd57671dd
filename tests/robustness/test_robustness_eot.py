"""EoT presets: shapes, ranges, determinism, gradients, the differentiable JPEG, and (demo model) the
retention EoT buys after a real JPEG q75 over the plain attack at equal budget."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pca_attack import AttackConfig, ConfigError, Encoder, Protector, load_encoder
from pca_attack.attack.eot import EOT_PRESETS, build_eot, diff_jpeg
from pca_attack.models.registry import DEMO_MODEL_DIR

EOT_TEST_STEPS = 10  # equal budget for plain and EoT in the demo-model comparison


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small models on a shared 2-core box: one intra-op thread avoids OpenMP oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _image(h: int = 40, w: int = 52, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, h // 4, w // 4, generator=g), size=(h, w),
                                             mode="bilinear", align_corners=False)
    return smooth.clamp(0, 1)  # (1, 3, H, W)


@pytest.mark.parametrize("name", list(EOT_PRESETS))
def test_preset_keeps_shape_range_and_is_deterministic(name: str) -> None:
    x = _image().requires_grad_(True)  # odd size: not a multiple of 8 or 16
    t = build_eot(name)
    y1 = t(x, torch.Generator().manual_seed(5))
    y2 = t(x, torch.Generator().manual_seed(5))
    assert y1.shape == x.shape
    assert float(y1.detach().min()) >= 0.0 and float(y1.detach().max()) <= 1.0
    assert torch.equal(y1, y2)
    (grad,) = torch.autograd.grad(y1.sum(), x)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0


def test_presets_are_random_across_draws() -> None:
    x = _image()
    t = build_eot("social-resize")
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(t(x, g), t(x, g))


def test_unknown_preset_lists_the_known_names() -> None:
    with pytest.raises(ConfigError, match="web-jpeg-85"):
        build_eot("instagram")


def test_diff_jpeg_tracks_the_real_codec() -> None:
    from skimage import data

    img = data.astronaut()[:96, :120]
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    for q in (90, 75, 50):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=q)
        real = torch.from_numpy(np.asarray(Image.open(buf)).astype(np.float32) / 255).permute(2, 0, 1)[None]
        approx = diff_jpeg(x, q)
        assert float((approx - real).abs().mean()) < 0.6 * float((x - real).abs().mean())


def test_eot_changes_the_gradient(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    x = _image(32, 32).requires_grad_(True)
    plain = Protector(encoder, AttackConfig(steps=2))
    eot = Protector(encoder, AttackConfig(steps=2, eot="jpeg-75", eot_samples=2))
    g_plain = plain.loss_and_grad(x, 1e-8, torch.Generator().manual_seed(0), 1.0)[1]
    g_eot = eot.loss_and_grad(x, 1e-8, torch.Generator().manual_seed(0), 1.0)[1]
    assert float(g_eot.abs().sum()) > 0
    agreement = float((g_plain.sign() == g_eot.sign()).float().mean())
    assert agreement < 0.95  # a different direction, not a rescaled copy
    r1 = eot.protect(x.detach())
    r2 = eot.protect(x.detach())
    assert torch.equal(r1.images, r2.images)  # deterministic for the seed
    assert not torch.equal(r1.images, plain.protect(x.detach()).images)


def _drift_after_jpeg(encoder: Encoder, clean: torch.Tensor, protected: torch.Tensor, q: int) -> float:
    """Latent drift between JPEG(clean) and JPEG(protected), both (1, 3, H, W)."""
    from pca_attack.certify.diagnostics import latent_drift
    from pca_attack.redteam.channels import jpeg

    return latent_drift(encoder, jpeg(clean, q)[0], jpeg(protected, q)[0])


@pytest.mark.skipif(not (DEMO_MODEL_DIR / "config.json").is_file(), reason="demo VAE not bundled yet")
def test_eot_vs_plain_after_jpeg75_on_the_demo_model() -> None:
    """At equal budget (same eps, steps, last iterate), the EoT jpeg-75 attack keeps more of its latent
    drift through a real JPEG q75 than the plain attack, on a real photo at its natural size (chelsea,
    held out from the demo VAE's training). The margin is small on this VAE (plain already keeps ~97%;
    measured 0.973 -> 0.992 here, see docs/robustness.md), but it is a real gain, deterministic on CPU."""
    from skimage import data

    from pca_attack.certify.diagnostics import latent_drift

    encoder = load_encoder("demo", device="cpu")
    clean = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255  # (1, 3, 300, 451)
    budget = {"steps": EOT_TEST_STEPS, "keep_best": False}
    retention, after = {}, {}
    for label, eot in (("plain", None), ("eot", "jpeg-75")):
        protected = Protector(encoder, AttackConfig(**budget, eot=eot)).protect(clean).images
        before = latent_drift(encoder, clean[0], protected[0])
        after[label] = _drift_after_jpeg(encoder, clean, protected, 75)
        retention[label] = after[label] / before
    assert retention["plain"] > 0.9
    assert retention["eot"] > retention["plain"] + 0.005
    assert after["eot"] > after["plain"]
