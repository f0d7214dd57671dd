"""What survives an editor's first resize, for a plain attack and for one made with ``--editor-resolution N``.

Editors work at about 1 MP: a large photo is first downscaled to N px on the long side (``editor-N`` in
``pca_attack.redteam.channels``). ``editor_retention`` protects the same images twice — plainly at full
resolution, and with the downscale inside the attack (``AttackConfig.editor_resolution = N``) — and runs the
red team's ``editor-N`` row on both outputs as written (bytes decoded again). Per mode it reports the row
(latent drift after the downscale, its retention against no transformation, the collapse-loss gap) and the
**collapse kept** after the downscale, ``1 - KL_target(protected small) / KL_target(clean small)``; the ratio
editor / plain of the drift after the downscale says what the option buys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.io.images import DecodedImage, decode_image
from pca_attack.redteam.channels import EDITOR_PREFIX
from pca_attack.redteam.report import RedteamRow, redteam

MODES = ("plain", "editor")


def collapse_kept(row: RedteamRow) -> float | None:
    """1 - target-KL of the protected / of the clean image after the row's transformation (None: no KL)."""
    if row.target_kl_clean == 0:
        return None
    return 1.0 - row.target_kl_protected / row.target_kl_clean


@dataclass
class EditorRetention:
    """Red-team rows after the editor's downscale for both attacks, and what the option changes."""

    long_side: int
    images: int
    rows: dict[str, RedteamRow] = field(default_factory=dict)  # "plain", "editor"

    @property
    def drift_ratio(self) -> float | None:
        """Latent drift after the downscale, editor-resolution attack / plain attack."""
        plain, editor = self.rows["plain"].latent_drift, self.rows["editor"].latent_drift
        return None if plain <= 0 else editor / plain

    def to_markdown(self) -> str:
        """Both attacks after the downscale: drift, retention, collapse kept; and the drift ratio."""
        lines = [f"## After an editor's downscale to {self.long_side} px: plain vs --editor-resolution "
                 f"{self.long_side}\n", "| attack | latent drift | retention | collapse kept |", "|---|---|---|---|"]
        for mode, row in self.rows.items():
            kept = collapse_kept(row)
            lines.append(f"| {mode} | {row.latent_drift:.4f} | {row.retention:.3f} | "
                         f"{'–' if kept is None else f'{kept:.4f}'} |")
        ratio = self.drift_ratio
        lines.append(f"\ndrift after the downscale, editor / plain: {'–' if ratio is None else f'{ratio:.2f}'}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "transform": f"{EDITOR_PREFIX}{self.long_side}", "long_side": self.long_side, "images": self.images,
            "modes": {m: {**asdict(r), "collapse_kept": collapse_kept(r)} for m, r in self.rows.items()},
            "drift_ratio_editor_over_plain": self.drift_ratio,
        }


def compare(
    encoder: Any, cleans: Sequence[torch.Tensor], written: Mapping[str, Sequence[torch.Tensor]], long_side: int, *,
    seed: int = 0, preset: str = "pca-",
) -> EditorRetention:
    """The ``editor-N`` row of each mode's outputs as written (``written[mode]``: (3, H, W) each, decoded
    again), against the clean images (3, H, W); ``encoder``: an ``Encoder`` or an ``Engine``."""
    name = f"{EDITOR_PREFIX}{long_side}"
    result = EditorRetention(long_side, len(cleans))
    for mode in MODES:
        report = redteam(encoder, list(cleans), list(written[mode]), transforms=[name], seed=seed, preset=preset,
                         with_roundtrip=False)
        result.rows[mode] = report.row(name)
    return result


def editor_retention(
    engine: Any, images: Sequence[DecodedImage], config: AttackConfig, long_side: int, *, seed: int = 0,
) -> EditorRetention:
    """Protect ``images`` with ``engine`` (a ``pca_attack.pipeline.Engine``) plainly and with
    ``editor_resolution=long_side``, and measure both after the downscale to ``long_side``."""
    cleans = [image.to_tensor() for image in images]  # (3, H, W) each
    written: dict[str, list[torch.Tensor]] = {}
    for mode in MODES:
        cfg = replace(config, editor_resolution=None if mode == "plain" else long_side)
        outputs = engine.protect(list(images), cfg)
        written[mode] = [decode_image(o.data, max_pixels=i.width * i.height).to_tensor()
                         for o, i in zip(outputs, images, strict=True)]
    return compare(engine.encoder, cleans, written, long_side, seed=seed, preset=config.preset)
