"""Plots of ``benchmarks/efficacy.py``: loss curves, damage per method, red-team retention (demo model), and the
six-panel figure of one photo on a real model (``real_figure``)."""

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


def real_figure(name: str, x: Any, p: Any, models: tuple[Any, Any], fig_dir: Path, root: Path) -> str:
    """Six panels for one photo x, protected p (3, H, W): original, protected, perturbation (amplified), clean
    round trip, protected round trip, protected round trip after JPEG q75. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pca_attack.certify.diagnostics import psnr, roundtrip
    from pca_attack.redteam.channels import jpeg

    encoder, decoder = models
    rt_x, rt_p = roundtrip(encoder, decoder, x[None])[0], roundtrip(encoder, decoder, p[None])[0]  # (3, H, W)
    jx, jp = jpeg(x[None], 75), jpeg(p[None], 75)  # (1, 3, H, W)
    rt_j = roundtrip(encoder, decoder, jp)[0]
    delta = p - x
    amplified = (0.5 + delta / (2 * max(float(delta.abs().max()), 1e-6))).clamp(0, 1)
    panels = [
        ("original", x), (f"protected ({psnr(p, x):.1f} dB vs original)", p), ("perturbation (amplified)", amplified),
        (f"clean round trip ({psnr(rt_x, x):.1f} dB)", rt_x), (f"protected round trip ({psnr(rt_p, x):.1f} dB)", rt_p),
        (f"protected, JPEG q75, round trip ({psnr(rt_j, jx[0]):.1f} dB vs JPEG(original))", rt_j),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(11, 11 * 2 * x.shape[1] / (3 * x.shape[2]) + 0.8))
    for ax, (title, img) in zip(axes.flat, panels, strict=True):
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig_dir.mkdir(parents=True, exist_ok=True)
    slug = Path(str(encoder.name)).name.removesuffix("_encoder.pth").lower() or "model"
    path = fig_dir / f"{slug}_{name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return str(path.relative_to(root) if path.is_relative_to(root) else path)
