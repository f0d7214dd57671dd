"""Reusing photos of an earlier real-model efficacy run (``efficacy_real.py --reuse PATH --reuse-photos a,b``).

A photo is reused only when the earlier run measured it at the same size, with the same attack configuration
(an option added to ``AttackConfig`` since is absent from the earlier JSON and counts as equal), at every
requested step count: its attack rows, its red-team retention per channel and its EoT entry are
copied, and nothing of it is recomputed (extra method rows, ``--extra``, are still run on it). The pooled
red-team table of a run with reused photos is formed from the per-photo retention numbers both runs store
(``pool_channels``): drift, round-trip damage and pixel PSNR averaged over the photos, the retentions as
ratios of those means to the ``none`` row, as ``pca_attack.redteam.report.merge_reports`` forms them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

POOLED = ("latent_drift", "roundtrip_damage_db", "pixel_psnr_db")


class ReuseError(ValueError):
    """The earlier run cannot stand in for this one on a photo (size, configuration or steps differ)."""


def load_reused(path: Path, names: list[str], shapes: dict[str, list[int]], config: dict[str, Any],
                steps: list[int]) -> dict[str, dict[str, Any]]:
    """Name -> {"rows", "redteam", "eot" (or None)} of each photo in ``names``, checked against this run."""
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(config))  # as JSON: tuples are lists there
    differs = sorted(k for k in new if old.get("attack_config", {}).get(k, new[k]) != new[k])  # options added
    if differs or "attack_config" not in old:  # since the earlier run are absent there: their defaults held then
        raise ReuseError(f"{path}: its attack_config differs from this run's in {differs}; rerun those photos instead")
    out = {}
    for name in names:
        if old["photos"].get(name) != shapes[name]:
            raise ReuseError(f"{path}: {name} was measured at {old['photos'].get(name)}, this run needs {shapes[name]}")
        rows = old["per_photo"][name]
        missing = [s for s in steps if f"pca-@{s}" not in rows]
        if missing:
            raise ReuseError(f"{path}: {name} has no rows at steps {missing}")
        eot = old.get("eot_vs_plain", {}).get("per_photo", {}).get(name)
        out[name] = {"rows": rows, "redteam": old["redteam_per_photo"][name], "eot": eot}
    return out


def pool_channels(per_photo: dict[str, dict[str, dict[str, float | None]]]) -> dict[str, Any]:
    """Pooled red-team rows over photos, from each photo's channel -> numbers (``efficacy_real.per_channel``)."""
    channels = list(dict.fromkeys(c for table in per_photo.values() for c in table))

    def mean(channel: str, key: str) -> float | None:
        values = [float(v) for t in per_photo.values() if channel in t and (v := t[channel][key]) is not None]
        return float(np.mean(values)) if values else None

    base = {k: mean("none", k) for k in POOLED}
    rows = []
    for channel in channels:
        row: dict[str, Any] = {"transform": channel} | {k: mean(channel, k) for k in POOLED}
        row["retention"] = _ratio(row["latent_drift"], base["latent_drift"])
        row["retention_roundtrip"] = _ratio(row["roundtrip_damage_db"], base["roundtrip_damage_db"])
        rows.append(row)
    return {"images": len(per_photo), "rows": rows, "markdown": markdown(rows),
            "note": "pooled from the per-photo tables (photos reused from an earlier run included)"}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or abs(b) < 1e-12 else a / b


def markdown(rows: list[dict[str, Any]]) -> str:
    """The pooled table as markdown."""
    def f(v: float | None, nd: int) -> str:
        return "-" if v is None else f"{v:.{nd}f}"

    lines = ["| transformation | latent drift | retention | round-trip damage dB | round-trip retention "
             "| PSNR T(p) vs T(c) |", "|" + "---|" * 6]
    for r in rows:
        lines.append(f"| {r['transform']} | {f(r['latent_drift'], 3)} | {f(r['retention'], 2)} "
                     f"| {f(r['roundtrip_damage_db'], 2)} | {f(r['retention_roundtrip'], 2)} "
                     f"| {f(r['pixel_psnr_db'], 1)} |")
    return "\n".join(lines) + "\n"


def reused_eot_tables(path: Path) -> dict[str, Any]:
    """The earlier run's pooled EoT red-team tables (when every EoT photo of this run is reused)."""
    old = json.loads(path.read_text())
    return {"redteam_eot": old["redteam_eot"]} if "redteam_eot" in old else {}
