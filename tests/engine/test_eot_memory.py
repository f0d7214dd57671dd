"""EoT's memory: each draw's graph is freed before the next draw is encoded (``TiledObjective._tile``), so a step
holds one encoder pass whatever ``eot_samples`` is, which is what the memory planner budgets; and the planner adds
the transform's own graph (``loop_memory.for_config``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.eot_cost import transform_bytes_per_pixel, transform_seconds_per_pixel
from pca_attack.attack.loop_memory import for_config
from pca_attack.attack.memory import measure_peak, memory_model
from pca_attack.attack.pgd import Protector
from pca_attack.models.encoder import load_encoder


class _LiveSaved:
    """Bytes of tensors saved for backward that are still held by a graph, and the peak of that."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor) -> object:
        nbytes = t.numel() * t.element_size()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        tracker = self

        class Held:
            tensor = t

            def __del__(self) -> None:
                tracker.live -= nbytes

        return Held()

    @staticmethod
    def unpack(held: object) -> torch.Tensor:
        return held.tensor  # type: ignore[attr-defined, no-any-return]


def test_eot_samples_do_not_multiply_the_graph_memory_of_a_step(tiny_vae_dir: Path) -> None:
    """The planner budgets one encoder pass per step: each draw's graph is freed before the next is encoded."""
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    x = torch.randint(0, 256, (1, 3, 64, 64), generator=torch.Generator().manual_seed(0)) / 255
    peaks = {}
    for samples in (1, 4):
        saved = _LiveSaved()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            Protector(encoder, AttackConfig(steps=2, eot="noise", eot_samples=samples, seed=0)).protect(x)
        peaks[samples] = saved.peak
    assert peaks[1] > 0
    assert peaks[4] < 1.2 * peaks[1]  # all four graphs alive at once: about 4x


def test_transform_bytes_are_measured_per_preset() -> None:
    assert transform_bytes_per_pixel(None) == 0.0
    assert 0 < transform_bytes_per_pixel("noise") < transform_bytes_per_pixel("jpeg-75")
    assert transform_bytes_per_pixel("cleaner") > 5 * transform_bytes_per_pixel("jpeg-75")  # 219 vs 20 measured
    assert transform_seconds_per_pixel(None) == 0.0
    assert transform_seconds_per_pixel("cleaner") > 3 * transform_seconds_per_pixel("jpeg-75") > 0  # ~30x measured


def test_the_plan_counts_the_transform_graph_and_stays_within_30_percent(tiny_vae_dir: Path) -> None:
    encoder = load_encoder(str(tiny_vae_dir), device="cpu")
    config = AttackConfig(steps=2, eot="cleaner", eot_samples=2)
    base = memory_model(encoder)
    planned = for_config(base, config, encoder.latent_channels)
    extra = transform_bytes_per_pixel("cleaner")
    assert planned.step.per_pixel == pytest.approx(base.step.per_pixel + extra)
    assert planned.loop.per_pixel == pytest.approx(base.loop.per_pixel + extra)
    assert planned.seconds_per_pixel == pytest.approx(base.seconds_per_pixel
                                                          + transform_seconds_per_pixel("cleaner", "cpu"))
    height, width = 264, 328
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    attack = Protector(encoder, config)
    measured = measure_peak(lambda: attack.protect(x), encoder.device)
    estimate = planned.estimate(height, width)
    assert abs(estimate - measured) <= 0.3 * measured, (estimate, measured)


def test_the_planned_time_counts_every_eot_draw(tiny_vae_dir: Path) -> None:
    """Each draw is one encoder pass: four draws per step take about four times a step's encoder time."""
    from pca_attack.io.images import decode_image
    from pca_attack.pipeline import Engine
    from tests.service.conftest import png_bytes

    engine = Engine.from_spec(str(tiny_vae_dir), device="cpu", with_decoder=False)
    image = decode_image(png_bytes(64, 48), max_pixels=10**6)
    seconds = {samples: engine.plan([image], AttackConfig(steps=10, eot="noise", eot_samples=samples))[0][1].estimated_s
               for samples in (1, 4)}
    assert seconds[4] == pytest.approx(4 * seconds[1], rel=0.01)
