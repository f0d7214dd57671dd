"""The attack modes in the engine: ``pgd`` (today's loop), ``fast`` (the generator's output, quantised, budget
re-enforced: no PGD step), ``fast+N`` (N PGD steps starting from that image).

The generator's image is projected by the configuration's budget exactly as a PGD iterate is (colour-neutral
by default, the JND map when asked) and rounded onto the grid; the PGD loop takes it as its first iterate
unchanged, so ``fast+N``'s first loss is the ``fast`` image's loss.

``run_config`` is the configuration the PGD loop runs (its ``steps`` become 0 or N in fast modes, so the
certificate's ``steps`` says what ran); ``fast_start`` is the start image handed to ``Protector.protect``.

``fast+N`` has its own step schedule: the cosine decay over N steps starts at ``REFINE_FIRST_STEP`` x eps
(32/255 at eps 16, the largest ``step_peak`` allows with step 2) instead of the cold start's 6/255, and ends
at the same step / 2. Measured on the 4 held-out photos as 192-pixel crops, fast+5 mean collapse (demo model,
generator f6be0fc73549; the 20-step default reaches 0.392): first step 6/255 0.335, 12/255 0.356, 18/255
0.367, 24/255 0.375, 32/255 0.381. A 5-step run from the clean image with the same schedule reached 0.385:
on the demo model the big first steps, not the generator's start, make that gain.
"""

from __future__ import annotations

import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.fast.generator import generator_image
from pca_attack.fast.weights import resolve_generator

REFINE_FIRST_STEP = 2.0  # fast+N: first step = this x eps (every pixel can cross the whole box)
MAX_STEP_PEAK = 16.0  # AttackConfig's upper bound on step_peak


def run_config(config: AttackConfig) -> AttackConfig:
    """The configuration the PGD loop runs: unchanged for pgd, steps = 0 (fast) or N (fast+N) otherwise, and
    for fast+N the refinement's schedule (see the module docstring)."""
    steps = config.refine_steps
    if steps is None:
        return config
    peak = min(MAX_STEP_PEAK, REFINE_FIRST_STEP * config.eps / config.step) if steps else config.step_peak
    return config.with_(steps=steps, step_peak=max(peak, config.step_peak))


def fast_start(
    config: AttackConfig, model_name: str, x: torch.Tensor, grayscale: torch.Tensor, levels: torch.Tensor
) -> tuple[torch.Tensor | None, str | None]:
    """(start image (B, 3, H, W) on the grid within eps, generator id), or (None, None) in pgd mode."""
    if config.refine_steps is None:
        return None, None
    loaded = resolve_generator(config.generator, model_name)
    return generator_image(loaded.net, x, grayscale, levels, config), loaded.generator_id
