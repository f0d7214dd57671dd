"""The attack modes in the engine: ``pgd`` (today's loop), ``fast`` (the generator's output, quantised, budget
re-enforced: no PGD step), ``fast+N`` (N PGD steps starting from that image).

The generator's image is projected by the configuration's budget exactly as a PGD iterate is (colour-neutral
by default, the JND map when asked) and rounded onto the grid; the PGD loop takes it as its first iterate
unchanged, so ``fast+N``'s first loss is the ``fast`` image's loss.

``run_config`` is the configuration the PGD loop runs (its ``steps`` become 0 or N in fast modes, so the
certificate's ``steps`` says what ran); ``fast_start`` is the start image handed to ``Protector.protect``.

``fast+N`` runs the configured (cold-start) schedule over N steps. A schedule of its own, starting at 2 eps
(32/255) instead of 6/255, was measured and not kept: on the demo model it raised fast+5 on the 192-pixel
held-out crops from 0.335 to 0.381 (but a 5-step run from the clean image with it reached 0.385), while on
TAEF2 it lowered it (chelsea at natural size: 0.798 with the cold-start schedule, 0.776 at 12/255, 0.713 at
32/255). Other first steps of the cosine schedule, fast+5 at natural size (docs/fast_mode.md): demo 0.254 (3/255),
0.264 (6/255, default), 0.275 (12/255); TAEF2 0.695, 0.695, 0.677: no schedule wins on both models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.fast.generator import generator_image
from pca_attack.fast.weights import resolve_generator

if TYPE_CHECKING:
    from pca_attack.models.encoder import Encoder


def run_config(config: AttackConfig) -> AttackConfig:
    """The configuration the PGD loop runs: unchanged for pgd, steps = 0 (fast) or N (fast+N) otherwise."""
    steps = config.refine_steps
    return config if steps is None else config.with_(steps=steps)


def fast_start(
    config: AttackConfig, encoder: Encoder, x: torch.Tensor, grayscale: torch.Tensor, levels: torch.Tensor
) -> tuple[torch.Tensor | None, str | None]:
    """(start image (B, 3, H, W) on the grid within eps, generator id), or (None, None) in pgd mode. Without
    ``config.generator``: the generator shipped for the encoder's model (by name, else by its probe)."""
    if config.refine_steps is None:
        return None, None
    loaded = resolve_generator(config.generator, encoder.name, encoder=encoder)
    return generator_image(loaded.net, x, grayscale, levels, config), loaded.generator_id
