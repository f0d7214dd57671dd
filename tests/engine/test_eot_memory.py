"""EoT's memory: each draw's graph is freed before the next draw is encoded (``TiledObjective._tile``), so a step
holds one encoder pass whatever ``eot_samples`` is, which is what the memory planner budgets."""

from __future__ import annotations

from pathlib import Path

import torch

from pca_attack.attack.config import AttackConfig
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
