"""The collapse loss and the attack configuration."""

from __future__ import annotations

import math

import pytest
import torch

from pca_attack import PRESETS, AttackConfig, ConfigError, kl_to_gaussian, pca_loss


def test_loss_is_kl_minus_log_v_term() -> None:
    torch.manual_seed(0)
    mean, logvar = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    for v in (1e-8, 1.0, 1e4):
        d = mean[0].numel()
        kl = kl_to_gaussian(mean, logvar, v).flatten(1).sum(1)
        assert torch.allclose(pca_loss(mean, logvar, v), kl - 0.5 * d * math.log(v), rtol=1e-5)


def test_loss_matches_the_paper_formula_elementwise() -> None:
    mean, logvar, v = torch.tensor([[0.5]]), torch.tensor([[-1.0]]), 0.25
    expected = 0.5 * (1.0 - 1.0 + (0.25 + math.exp(-1.0)) / v)
    assert pca_loss(mean.view(1, 1, 1, 1), logvar.view(1, 1, 1, 1), v).item() == pytest.approx(expected)


def test_loss_is_fp32_and_finite_for_half_inputs() -> None:
    mean = torch.full((1, 4, 2, 2), 3.0, dtype=torch.float16)
    logvar = torch.zeros(1, 4, 2, 2, dtype=torch.float16)
    loss = pca_loss(mean, logvar, 1e-8)  # 1/v = 1e8 would overflow fp16
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()


def test_adaptive_target_is_per_element() -> None:
    mean, logvar = torch.zeros(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    # at mu = 0 and v = sigma^2 the KL is exactly zero
    assert torch.allclose(kl_to_gaussian(mean, logvar, logvar.exp()), torch.zeros(1, 4, 2, 2), atol=1e-6)


def test_presets_document_themselves() -> None:
    assert set(PRESETS) >= {"pca-", "pca+", "adaptive", "pca-var"}
    assert PRESETS["pca-"].target_variance == 1e-8 and PRESETS["pca-"].direction == "minimize"
    assert PRESETS["pca+"].target_variance == 1.0 and PRESETS["pca+"].direction == "maximize"
    assert all(len(p.summary) > 40 for p in PRESETS.values())


def test_defaults_follow_the_reference() -> None:
    c = AttackConfig()
    assert (c.eps, c.step, c.steps, c.preset, c.random_start, c.seed) == (16.0, 2.0, 40, "pca-", False, 3407)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": 0}, "eps"),
        ({"eps": 300}, "eps"),
        ({"step": -1}, "step"),
        ({"steps": -2}, "steps"),
        ({"preset": "nope"}, "unknown preset"),
        ({"preset": "custom"}, "target_variance"),
        ({"preset": "custom", "target_variance": 1.0, "direction": "sideways"}, "direction"),
    ],
)
def test_bad_config_says_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AttackConfig(**kwargs)


def test_custom_preset() -> None:
    c = AttackConfig(preset="custom", target_variance=0.5, direction="maximize")
    assert c.loss_preset.target_variance == 0.5 and c.loss_preset.direction == "maximize"
