"""Plots of ``benchmarks/efficacy.py`` (demo model): loss curves, damage per method, red-team retention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_loss_curves(result: dict[str, Any], img_dir: Path) -> str:
    """efficacy_loss_curves.png: mean relative loss per step, engine defaults vs the reference loop."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, curve in result["loss_curves"].items():
        ax.plot(range(len(curve)), curve, label=f"{name} (loss / clean loss)")
    reach = result["steps_to_reference_summary"]
    if reach["median"] is not None:
        ax.axvline(reach["median"], color="gray", ls="--", lw=0.8, label="median steps (defaults) to reference")
    ax.set_yscale("log")
    ax.set_xlabel("PGD step")
    ax.set_ylabel("collapse loss (relative)")
    ax.set_title(f"Loss vs steps, {result['model']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = img_dir / "efficacy_loss_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plots(result: dict[str, Any], img_dir: Path) -> list[str]:
    """efficacy_loss_curves.png, efficacy_methods.png, efficacy_redteam.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_loss_curves(result, img_dir)]
    methods = list(result["per_method"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].bar(methods, [result["per_method"][m]["psnr_damage_db"] for m in methods])
    axes[0].set_ylabel("round-trip PSNR damage (dB)")
    axes[1].bar(methods, [result["per_method"][m]["latent_drift"] for m in methods])
    axes[1].set_ylabel("latent drift")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"Protection per method (eps 16/255, {result['steps']} steps), {result['model']}", fontsize=9)
    fig.tight_layout()
    path = img_dir / "efficacy_methods.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

    fig, ax = plt.subplots(figsize=(8, 3.6))
    rows = result["redteam_plain"]["rows"]
    names = [r["transform"] for r in rows]
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, [r["retention"] for r in rows], width=0.4, label="plain pca-")
    if "redteam_eot" in result:
        eot_rows = {r["transform"]: r["retention"] for r in result["redteam_eot"]["rows"]}
        ax.bar(xs + 0.2, [eot_rows.get(n, 0.0) for n in names], width=0.4,
               label=f"EoT {result['redteam_eot']['eot_preset']}")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(xs, names, rotation=30, ha="right")
    ax.set_ylabel("latent-drift retention")
    ax.set_title("What collapse survives publishing (1 = all kept)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = img_dir / "efficacy_redteam.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))
    return written
