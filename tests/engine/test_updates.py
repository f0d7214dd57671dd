"""PGD update rules: the default normalised-gradient step, the reference sign step and per-pixel sign-Rprop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pca_attack import REFERENCE_CONFIG, AttackConfig, ConfigError, Protector, load_encoder
from pca_attack.attack.updates import L2Update, RpropUpdate, SignUpdate, make_update, step_size


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
    assert isinstance(make_update(AttackConfig(update="rprop"), grad), RpropUpdate)


def test_l2_rule_moves_along_the_gradient_with_the_scheduled_root_mean_square() -> None:
    config = AttackConfig(steps=11)  # the default rule: l2, cosine from 3 x step = 6/255 down to step / 2 = 1/255
    assert isinstance(make_update(config, torch.zeros(1)), L2Update)
    rule = L2Update(config)
    grad = torch.zeros(2, 3, 4, 4)
    grad[0, 0, 0, 0], grad[0, 1, 2, 3] = 5.0, -1.0  # image 0: two sensitive pixels, one 5x the other
    grad[1] = 1e-9 * torch.randn(3, 4, 4)  # image 1: a tiny gradient everywhere
    for step, expected in ((0, 6.0), (10, 1.0)):
        move = rule.move(grad, step) * 255  # (2, 3, 4, 4) on the 0-255 scale
        rms = move.pow(2).mean(dim=(1, 2, 3)).sqrt()
        assert torch.allclose(rms, torch.full((2,), expected), rtol=1e-4)  # per image, whatever the gradient's scale
        assert torch.equal(move.sign(), grad.sign())  # along the gradient, zero where it is zero
        assert move[0, 0, 0, 0] == pytest.approx(-5.0 * move[0, 1, 2, 3])  # proportional, not one step for all
    assert torch.count_nonzero(rule.move(torch.zeros(1, 3, 2, 2), 0)) == 0  # a zero gradient does not move


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


def test_rprop_beats_the_reference_rule_at_equal_steps(demo_available: bool, tiny_vae_dir: Path) -> None:
    """On the demo model, 10 Rprop steps end at a lower collapse loss than 10 reference steps."""
    encoder = load_encoder("demo" if demo_available else str(tiny_vae_dir), device="cpu")
    torch.manual_seed(0)
    x = torch.round(torch.rand(2, 3, 64, 64) * 255) / 255
    ours = Protector(encoder, AttackConfig(steps=10, update="rprop")).protect(x)
    reference = Protector(encoder, REFERENCE_CONFIG.with_(steps=10)).protect(x)
    assert (ours.final_loss < reference.final_loss).all(), (ours.final_loss, reference.final_loss)
    assert ours.images.shape == x.shape
    assert ((ours.images - x).abs() * 255).max() <= 16 + 1e-4  # budget holds with per-pixel steps


TAEF2 = Path(__file__).resolve().parents[2] / ".." / "shared" / "models" / "taef2"


def test_default_rule_beats_rprop_and_the_reference_on_a_real_encoder() -> None:
    """On TAEF2 (FLUX.2's latent space), 10 default (l2) steps collapse two photo crops further than 10 Rprop
    or 10 reference steps and damage their round trip more than Rprop, the budget held on the grid."""
    if not TAEF2.is_dir():
        pytest.skip(f"{TAEF2.resolve()} is absent: the pretrained TAEF2 weights are not in this workspace")
    from skimage import data

    from pca_attack import load_decoder
    from pca_attack.certify.diagnostics import psnr, roundtrip

    encoder, decoder = load_encoder(str(TAEF2), device="cpu"), load_decoder(str(TAEF2), device="cpu")
    crops = [data.chelsea()[100:164, 150:246], data.coffee()[150:214, 200:296]]  # (64, 96, 3) uint8 each
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0  # (2, 3, 64, 96)
    runs = {
        label: Protector(encoder, config.with_(steps=10)).protect(x)
        for label, config in (("l2", AttackConfig()), ("rprop", AttackConfig(update="rprop")),
                              ("reference", REFERENCE_CONFIG))
    }
    assert (runs["l2"].final_loss < runs["rprop"].final_loss).all()
    assert (runs["l2"].final_loss < runs["reference"].final_loss).all()

    def damage(images: torch.Tensor) -> list[float]:
        clean, protected = roundtrip(encoder, decoder, x), roundtrip(encoder, decoder, images)
        return [psnr(clean[i], x[i]) - psnr(protected[i], x[i]) for i in range(len(x))]  # type: ignore[operator]

    ours, rprop = damage(runs["l2"].images), damage(runs["rprop"].images)
    assert all(a > b for a, b in zip(ours, rprop, strict=True)), (ours, rprop)
    assert ((runs["l2"].images - x).abs() * 255).max() <= 16 + 1e-4
