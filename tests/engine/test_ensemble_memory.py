"""Memory of an ensemble attack: planned by its members (the largest member's step, not the first's)."""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.memory import HEADROOM, measure_peak, memory_model
from pca_attack.attack.objective import ensemble_memory_model
from pca_attack.attack.pgd import Protector
from pca_attack.io.images import decode_image
from pca_attack.models.encoder import load_encoder
from pca_attack.models.ensemble import Ensemble
from pca_attack.pipeline import Engine


def _vae(folder: Path, *, blocks: int, width: int, seed: int) -> str:
    """A random AutoencoderKL of spatial factor 2**(blocks-1) and ``width`` channels per block."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(
        block_out_channels=(width,) * blocks, down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks, norm_num_groups=4, layers_per_block=1, latent_channels=4,
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def small_then_large(tmp_path_factory: pytest.TempPathFactory) -> Ensemble:
    """The smaller member FIRST (factor 4, 8 channels), the larger second (factor 8, 24 channels)."""
    small = _vae(tmp_path_factory.mktemp("small"), blocks=3, width=8, seed=1)
    large = _vae(tmp_path_factory.mktemp("large"), blocks=4, width=24, seed=2)
    return Ensemble((load_encoder(small, device="cpu"), load_encoder(large, device="cpu")))


def test_estimate_matches_the_measured_peak_of_a_two_member_attack(small_then_large: Ensemble) -> None:
    model = ensemble_memory_model(small_then_large)
    first, second = (memory_model(m) for m in small_then_large.members)
    assert second.step.per_pixel > first.step.per_pixel  # the fixture's premise: the larger member is second
    assert model.factor == 8 and model.halo % 8 == 0
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    measured = measure_peak(partial(Protector(small_then_large, AttackConfig(steps=2)).protect, x), x.device)
    estimate = model.estimate(96, 128)
    assert 0.7 <= estimate / measured <= 1.3, (estimate, measured)
    assert estimate < first.estimate(96, 128) + second.estimate(96, 128)  # members one after another


def test_plan_sizes_an_ensemble_by_its_largest_member(small_then_large: Ensemble) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (384, 512, 3), dtype=np.uint8)).save(buffer, "PNG")
    image = decode_image(buffer.getvalue())
    first = memory_model(small_then_large.members[0]).estimate(384, 512)
    whole = ensemble_memory_model(small_then_large).estimate(384, 512)
    assert whole > first
    engine = Engine(small_then_large.members[0], ensemble=small_then_large, max_memory=1 << 40)
    [(_, untiled)] = engine.plan([image], AttackConfig(steps=2))
    assert untiled.grid is None and untiled.estimated_bytes == int(whole)
    # a budget the first member alone would fit untiled, the ensemble only in tiles aligned to lcm(4, 8)
    engine.max_memory = int(engine.baseline_memory + HEADROOM * (first + whole) / 2)
    [(_, tiled)] = engine.plan([image], AttackConfig(steps=2))
    assert tiled.grid is not None and tiled.grid.core % 8 == 0 and tiled.grid.halo % 8 == 0
    assert tiled.estimated_bytes * HEADROOM <= tiled.budget_bytes
