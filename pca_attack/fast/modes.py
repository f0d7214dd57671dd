"""The attack modes in the engine: ``pgd`` (today's loop), ``fast`` (the generator's output, quantised, budget
re-enforced: no PGD step), ``fast+N`` (N PGD steps starting from that image).

The generator's image is projected by the configuration's budget exactly as a PGD iterate is (colour-neutral
by default, the JND map when asked) and rounded onto the grid; the PGD loop takes it as its first iterate
unchanged, so ``fast+N``'s first loss is the ``fast`` image's loss.

``run_config`` is the configuration the PGD loop runs (its ``steps`` become 0 or N in fast modes, so the
certificate's ``steps`` says what ran); ``fast_start`` is the start image handed to ``Protector.protect``.

``fast+N`` has its own step schedule: the cosine decay over N steps starts at ``REFINE_PEAK_FACTOR`` times the
configured first step (12/255 instead of 6/255 by default). Measured with the demo generator c30631ffc373 on
the 4 held-out photos as 192-pixel crops (fast+5 mean collapse): first step 3/255 0.307, 6/255 (the cold start's)
0.338, 9/255 0.348, 12/255 0.356; smaller steps only polish the generator's image, bigger ones move it on.
"""

from __future__ import annotations

import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.fast.generator import generator_image
from pca_attack.fast.weights import resolve_generator

REFINE_PEAK_FACTOR = 2.0  # fast+N: first step = this x the configured first step (step * step_peak)
MAX_STEP_PEAK = 16.0  # AttackConfig's upper bound on step_peak


def run_config(config: AttackConfig) -> AttackConfig:
    """The configuration the PGD loop runs: unchanged for pgd, steps = 0 (fast) or N (fast+N) otherwise, and
    for fast+N the refinement's schedule (see the module docstring)."""
    steps = config.refine_steps
    if steps is None:
        return config
    peak = min(MAX_STEP_PEAK, config.step_peak * REFINE_PEAK_FACTOR) if steps else config.step_peak
    return config.with_(steps=steps, step_peak=peak)


def fast_start(
    config: AttackConfig, model_name: str, x: torch.Tensor, grayscale: torch.Tensor, levels: torch.Tensor
) -> tuple[torch.Tensor | None, str | None]:
    """(start image (B, 3, H, W) on the grid within eps, generator id), or (None, None) in pgd mode."""
    if config.refine_steps is None:
        return None, None
    loaded = resolve_generator(config.generator, model_name)
    return generator_image(loaded.net, x, grayscale, levels, config), loaded.generator_id
