"""Training the generator against one or several encoders with the attack's own collapse objective.

Each step: augmented crops x, the generator's perturbation delta(x), x_adv = the default attack's feasible
image (``training_image``: colour-neutral, so a constant darkening or colour cast, the trivial universal answer,
is no longer available) with windows of half a crop: the attack removes the mean over 128-pixel windows of
images >= 256 pixels, which erased most of a generator trained on 96-pixel crops (global mean only) at natural
size (china: collapse 0.095 with global removal, 0.010 with the windows), so the generator must learn locally
mean-free perturbations (a quarter of the crop: measured better at natural size than half a crop or none);
the attack's objective (``Protector.loss_and_grad``: the single-model objective, or
the ensemble's when several models are given) gives d(sign * loss)/d(x_adv), which is back-propagated through
the generator (chain rule), each image weighted by 1 / its current loss: the generator minimises the mean
log-loss, so every crop counts alike whatever its clean loss. Deterministic from the seed on the CPU.

``exact_projection`` trains through the attack's own projection (box + three alternating mean removals) instead
of one removal and a clip: TAEF2's generator trained so over 64-px windows of 128-px crops keeps nearly all its
effect through the natural-size projection (fast share of pgd40 0.56 -> 0.68; docs/fast_mode.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.losses import objective_sign
from pca_attack.attack.pgd import Protector
from pca_attack.fast.generator import PerturbationNet, training_image
from pca_attack.fast.photos import TRAIN, crop_batch, load_photo
from pca_attack.models.ensemble import load_model


@dataclass(frozen=True)
class TrainSettings:
    model: str = "demo"  # one model, or a comma list (the ensemble objective)
    steps: int = 600
    batch: int = 4
    crop: int = 128  # (the first shipped generator: 96; see the module docstring)
    lr: float = 5e-4  # the network's (2e-3 diverged under the colour-neutral constraint)
    pattern_lr: float = 2e-2  # the tiled pattern's (a few hundred parameters, one shared answer)
    eps: float = 16.0
    seed: int = 0
    width: int = 16  # 4x fewer operations than 32: the time target (see README, fast mode)
    blocks: int = 3
    centred: bool = True  # mean-free logits per channel (see PerturbationNet)
    pattern: int = 32  # period of the learnt image-independent pattern, pixels (0 = none)
    neutral_window: int = 32  # colour-neutral windows of the training image (see the module docstring)
    exact_projection: bool = False  # train through the attack's own budget projection (``training_image``)


def train_generator(
    settings: TrainSettings, on_step: Callable[[int, float], None] | None = None
) -> tuple[PerturbationNet, list[float]]:
    """Train from the seed; returns the network and the loss curve (mean loss / clean loss per step)."""
    torch.manual_seed(settings.seed)
    draws = torch.Generator().manual_seed(settings.seed)
    net = PerturbationNet(settings.width, settings.blocks, settings.centred, settings.pattern)
    protector = Protector(load_model(settings.model, device="cpu", dtype="float32"), AttackConfig(eps=settings.eps))
    feasible = protector.config.with_(neutral_window=settings.neutral_window)  # the training image's budget
    sign = objective_sign(protector.config.loss_preset.direction)
    pattern = [p for name, p in net.named_parameters() if name == "pattern"]
    groups = [{"params": [p for name, p in net.named_parameters() if name != "pattern"], "lr": settings.lr}]
    optimiser = torch.optim.Adam(groups + ([{"params": pattern, "lr": settings.pattern_lr}] if pattern else []))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, settings.steps))
    photos = [load_photo(name) for name in TRAIN]
    gray = torch.zeros(settings.batch, dtype=torch.bool)
    curve: list[float] = []
    for step in range(settings.steps):
        x = crop_batch(photos, settings.batch, settings.crop, draws)  # (B, 3, c, c)
        target = protector.target_variance(x)
        protector.tiled.prepare(x, target)
        clean = protector.loss(x, target).clamp(min=1e-12)  # (B,)
        x_adv = training_image(net, x, gray, feasible, settings.exact_projection)  # (B, 3, c, c)
        loss, grad = protector.loss_and_grad(x_adv.detach(), target, draws, sign)  # (B,), (B, 3, c, c)
        optimiser.zero_grad()
        x_adv.backward(grad / loss.detach().clamp(min=1e-12).view(-1, 1, 1, 1) / settings.batch)  # d mean log-loss
        optimiser.step()
        schedule.step()
        curve.append(float((loss / clean).mean()))
        if on_step is not None:
            on_step(step, curve[-1])
    return net.eval(), curve
