"""The PSNR budget (issue 13): the eps box intersected with an L2 ball of a target pixel PSNR.

The projection is checked against an independent algorithm (Dykstra's alternating projections, which converge
to the projection onto an intersection of convex sets) and against the variational inequality that
characterises a projection; the rounding is checked on the integers; the attack on the demo VAE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pca_attack import AttackConfig, Protector, load_encoder
from pca_attack.attack.budget import (
    ColourNeutral,
    PsnrBudget,
    fit_ball_on_grid,
    make_budget,
    project_box_ball,
    quantize,
)
from pca_attack.certify.metrics import psnr_db
from pca_attack.errors import ConfigError
from pca_attack.options import ProtectOptions


def dykstra(v: np.ndarray, low: np.ndarray, high: np.ndarray, radius: float, rounds: int = 20000) -> np.ndarray:
    """Projection of v onto box ∩ ball by Dykstra's algorithm (float64 reference)."""
    x, p, q = v.copy(), np.zeros_like(v), np.zeros_like(v)
    for _ in range(rounds):
        y = np.clip(x + p, low, high)
        p = x + p - y
        z = y + q
        norm = np.linalg.norm(z)
        x_new = z if norm <= radius else z * (radius / norm)
        q = y + q - x_new
        x = x_new
    return x


def random_case(seed: int, n: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v (1, 3, 2, n/6 ... ) and an asymmetric box low <= 0 <= high, float64."""
    g = torch.Generator().manual_seed(seed)
    v = 2.0 * torch.randn(1, 3, 2, n // 6 * 1, generator=g, dtype=torch.float64)
    low = -torch.rand(v.shape, generator=g, dtype=torch.float64) * 1.5
    high = torch.rand(v.shape, generator=g, dtype=torch.float64) * 1.5
    return v, low, high


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("radius", [0.3, 1.0, 2.5, 100.0])
def test_projection_is_the_closest_point_of_both_sets(seed: int, radius: float) -> None:
    v, low, high = random_case(seed)
    e = project_box_ball(v, low, high, torch.tensor([radius], dtype=torch.float64))
    assert (e >= low - 1e-12).all() and (e <= high + 1e-12).all()  # in the box
    assert float(e.norm()) <= radius + 1e-9  # in the ball
    reference = dykstra(v.numpy().ravel(), low.numpy().ravel(), high.numpy().ravel(), radius)
    assert np.abs(e.numpy().ravel() - reference).max() < 1e-6, (e.numpy().ravel(), reference)
    # variational inequality of a projection: <v - e, y - e> <= 0 for every feasible y
    g = torch.Generator().manual_seed(100 + seed)
    for _ in range(200):
        y = low + (high - low) * torch.rand(v.shape, generator=g, dtype=torch.float64)
        y = y * min(1.0, radius / float(y.norm()))  # scaling toward 0 stays in the box (low <= 0 <= high)
        assert float(((v - e) * (y - e)).sum()) <= 1e-9


def test_projection_leaves_feasible_points_alone_and_works_per_image() -> None:
    v, low, high = random_case(0)
    small = 0.01 * v
    radius = torch.tensor([10.0, 0.5], dtype=torch.float64)
    both = project_box_ball(torch.cat([small, v]), torch.cat([low, low]), torch.cat([high, high]), radius)
    assert torch.equal(both[0], small[0])  # already inside: unchanged
    assert abs(float(both[1].norm()) - 0.5) < 1e-9  # outside: lands on the ball's surface


def photo_like(seed: int = 0, height: int = 24, width: int = 32) -> torch.Tensor:
    """(1, 3, H, W) on the uint8 grid, including saturated pixels (the [0, 1] clip is part of the box)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, height, width, generator=g)
    x[..., :4, :] = 1.0
    return torch.round(x * 255) / 255


def test_psnr_budget_projection_is_inside_box_range_and_ball() -> None:
    x = photo_like()
    budget = PsnrBudget(x, 16.0, torch.zeros(1, dtype=torch.bool), psnr_db=30.0)
    far = budget.project(x + 0.2 * torch.randn_like(x))
    assert float(((far - x).abs()).max()) <= 16 / 255 + 1e-6
    assert float(far.min()) >= 0 and float(far.max()) <= 1
    rms = float((far - x).pow(2).mean().sqrt())
    assert rms <= 10 ** (-30 / 20) * (1 + 1e-5) and rms > 0.99 * 10 ** (-30 / 20)  # on the ball's surface


@pytest.mark.parametrize("target", [28.0, 30.0, 33.0])
def test_rounding_keeps_the_psnr_target_and_the_box_on_the_bytes(target: float) -> None:
    x = photo_like(1, 48, 64)
    budget = PsnrBudget(x, 16.0, torch.zeros(1, dtype=torch.bool), psnr_db=target)
    levels = torch.full((1,), 255.0)
    found = 0
    for seed in range(5):  # iterates on the ball's surface: plain rounding overshoots about half of the time
        g = torch.Generator().manual_seed(seed)
        x_adv = budget.project(x + 0.1 * torch.randn(x.shape, generator=g))
        plain = quantize(x_adv, x, 16.0, levels)
        q = budget.to_grid(x_adv, levels)
        q_int, x_int = torch.round(q * 255), torch.round(x * 255)
        assert torch.equal(q, q_int / 255)  # on the grid
        assert ((q_int - x_int).abs() <= 16).all()  # the box on the integers
        measured = psnr_db(x[0], q[0])
        assert measured is not None and measured >= target - 1e-9, (measured, target)
        assert (torch.round(q * 255) - torch.round(plain * 255)).abs().max() <= 1  # at most one step moved
        found += int(psnr_db(x[0], plain[0]) < target)  # type: ignore[operator]
    assert found >= 1  # the re-projection was needed at least once


def test_rounding_moves_grayscale_channels_together() -> None:
    gray_x = photo_like(2)[:, :1].expand(1, 3, -1, -1).contiguous()
    budget = PsnrBudget(gray_x, 16.0, torch.ones(1, dtype=torch.bool), psnr_db=31.0)
    step = budget.tie(0.1 * torch.randn_like(gray_x))
    x_adv = budget.project(gray_x + step)
    q = fit_ball_on_grid(quantize(x_adv, gray_x, 16.0, torch.full((1,), 255.0)), gray_x, x_adv, budget.radius,
                         torch.full((1,), 255.0), torch.ones(1, dtype=torch.bool))
    assert torch.equal(q[:, 0], q[:, 1]) and torch.equal(q[:, 1], q[:, 2])
    assert psnr_db(gray_x[0], q[0]) >= 31.0  # type: ignore[operator]


def test_psnr_budget_is_built_from_the_config_and_validated() -> None:
    x, gray = photo_like(), torch.zeros(1, dtype=torch.bool)
    budget = make_budget(AttackConfig(budget="psnr", target_psnr=32.0), x, gray)
    assert isinstance(budget, ColourNeutral) and isinstance(budget.inner, PsnrBudget)
    assert math.isclose(float(budget.inner.radius[0]), 10 ** (-32 / 20) * math.sqrt(x[0].numel()), rel_tol=1e-6)
    for bad in (10.0, 80.0):
        with pytest.raises(ConfigError, match="target_psnr"):
            AttackConfig(budget="psnr", target_psnr=bad)


def test_target_psnr_reaches_the_options_and_leaves_old_fingerprints_alone() -> None:
    options = ProtectOptions(budget="psnr", target_psnr=31.0)
    assert options.to_attack_config() == AttackConfig(budget="psnr", target_psnr=31.0)
    assert ProtectOptions.model_validate(options.settings()).to_attack_config() == options.to_attack_config()
    assert "target_psnr" not in ProtectOptions().settings()  # no effect without the psnr budget


def test_attack_with_the_psnr_budget_collapses_within_the_target(demo_available: bool, photo) -> None:  # type: ignore[no-untyped-def]
    if not demo_available:
        pytest.skip("bundled demo VAE not present")
    encoder = load_encoder("demo", device="cpu")
    x = torch.from_numpy(photo(48, 64)).permute(2, 0, 1).float()[None] / 255
    result = Protector(encoder, AttackConfig(budget="psnr", target_psnr=32.0, steps=6)).protect(x)
    assert float(result.final_loss[0]) < float(result.clean_loss[0])  # the loss decreased
    assert result.loss_trace[0, -1] < result.loss_trace[0, 0]
    p = result.images[0]
    assert torch.equal(p, torch.round(p * 255) / 255)
    assert float((p - x[0]).abs().max()) * 255 <= 16 + 1e-4
    assert psnr_db(x[0], p) >= 32.0  # type: ignore[operator]


def test_psnr_budget_holds_on_the_written_file_and_in_the_certificate(demo_available: bool, photo) -> None:  # type: ignore[no-untyped-def]
    if not demo_available:
        pytest.skip("bundled demo VAE not present")
    import io

    from PIL import Image

    from pca_attack import Engine
    from pca_attack.io.images import decode_image

    rgb = photo(40, 56)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    engine = Engine(load_encoder("demo", device="cpu"), None)
    out = engine.protect_bytes(buffer.getvalue(), AttackConfig(budget="psnr", target_psnr=33.0, steps=3))
    written = decode_image(out.data).rgb.astype(np.float64)  # (H, W, 3)
    mse = float(np.mean(((written - rgb) / 255.0) ** 2))
    assert mse > 0 and 10 * math.log10(1 / mse) >= 33.0
    assert np.abs(written - rgb).max() <= 16
    cert = out.certificate
    assert cert.budget == "psnr" and cert.target_psnr == 33.0 and cert.budget_ok
    assert cert.psnr_db is not None and cert.psnr_db >= 33.0
    assert Engine(load_encoder("demo", device="cpu"), None).protect_bytes(
        buffer.getvalue(), AttackConfig(steps=1)).certificate.target_psnr is None  # other budgets: no floor
