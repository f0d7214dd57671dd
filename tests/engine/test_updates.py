"""PGD update rules: the reference sign step and the default per-pixel sign-Rprop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pca_attack import REFERENCE_CONFIG, AttackConfig, ConfigError, Protector, load_encoder
from pca_attack.attack.updates import RpropUpdate, SignUpdate, make_update, step_size


def test_rprop_grows_while_the_sign_holds_and_shrinks_when_it_flips() -> None:
    config = AttackConfig(step=2.0, rprop_init=2.0, rprop_etas=(0.5, 1.5), rprop_range=(0.25, 4.0))
    like = torch.zeros(1, 3, 1, 2)  # pixel 0 keeps its gradient sign, pixel 1 alternates
    rule = RpropUpdate(config, like)
    sizes = []
    for step, flip in enumerate([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0]):
        grad = torch.tensor([1.0, flip]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
        move = rule.move(grad, step) * 255  # (1, 3, 1, 2) on the 0-255 scale
        assert torch.equal(move.sign(), grad.sign())  # always along the gradient's sign
        sizes.append(move.abs()[0, 0, 0].tolist())
    held = [s[0] for s in sizes]
    flipped = [s[1] for s in sizes]
    assert held == pytest.approx([4.0, 6.0, 8.0, 8.0, 8.0, 8.0, 8.0])  # x1.5 per step, capped at 4 * step
    assert flipped == pytest.approx([4.0, 2.0, 1.0, 0.5, 0.5, 0.5, 0.5])  # x0.5 per flip, floored at step / 8


def test_a_zero_gradient_keeps_the_step_and_does_not_move() -> None:
    rule = RpropUpdate(AttackConfig(), torch.zeros(1, 3, 2, 2))
    rule.move(torch.ones(1, 3, 2, 2), 0)
    move = rule.move(torch.zeros(1, 3, 2, 2), 1)
    assert torch.count_nonzero(move) == 0
    assert torch.allclose(rule.size * 255, torch.full((1, 3, 2, 2), 4.0))


def test_sign_rule_follows_its_schedule() -> None:
    constant = SignUpdate(REFERENCE_CONFIG)
    grad = torch.tensor([-3.0, 0.0, 2.0])
    assert torch.allclose(constant.move(grad, 7) * 255, torch.tensor([-2.0, 0.0, 2.0]))
    cosine = AttackConfig(update="sign", steps=11)
    assert step_size(cosine, 0) == pytest.approx(6.0) and step_size(cosine, 10) == pytest.approx(1.0)
    assert isinstance(make_update(cosine, grad), SignUpdate)
    assert isinstance(make_update(AttackConfig(), grad), RpropUpdate)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"update": "adam"}, "update="),
        ({"rprop_etas": (1.2, 0.7)}, "rprop_etas"),
        ({"rprop_range": (0.5, 1.0)}, "rprop_range"),
    ],
)
def test_bad_update_settings_are_rejected(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AttackConfig(**changes)  # type: ignore[arg-type]


def test_default_rule_beats_the_reference_rule_at_equal_steps(demo_available: bool, tiny_vae_dir: Path) -> None:
    """On the demo model, 10 Rprop steps end at a lower collapse loss than 10 reference steps."""
    encoder = load_encoder("demo" if demo_available else str(tiny_vae_dir), device="cpu")
    torch.manual_seed(0)
    x = torch.round(torch.rand(2, 3, 64, 64) * 255) / 255
    ours = Protector(encoder, AttackConfig(steps=10)).protect(x)
    reference = Protector(encoder, REFERENCE_CONFIG.with_(steps=10)).protect(x)
    assert (ours.final_loss < reference.final_loss).all(), (ours.final_loss, reference.final_loss)
    assert ours.images.shape == x.shape
    assert ((ours.images - x).abs() * 255).max() <= 16 + 1e-4  # budget holds with per-pixel steps
