"""Efficacy on a real pretrained model (issue 14): ``python benchmarks/efficacy.py --model PATH`` runs this.

Per photo (the 8 photos of ``efficacy.py``, natural size or a central ``--crop HxW``):

* the engine's default attack (pca-, eps 16, engine defaults) at each of ``--steps`` (e.g. 40 and 20), and
  the PhotoGuard-style encoder attack at the same number of steps: pixel PSNR/SSIM of the perturbation,
  round-trip PSNR/SSIM of clean and protected against the original and their difference (the *damage*),
  mean-energy reduction ``1 - mean(mu(p)^2) / mean(mu(x)^2)``, latent drift;
* on ``--eot-images`` photos: plain vs EoT (``--eot``) at equal steps, each red-teamed over every channel
  (``pca_attack.redteam``; retention of latent drift and of round-trip damage, e.g. after JPEG q75);
* for ``--figures`` photos, a figure in ``--fig-dir``: original, protected, perturbation (amplified), clean round
  trip, protected round trip, protected round trip after JPEG q75.

Writes ``--out-json`` (default ``docs/efficacy_<model name>.json``) and prints it. Sequential (one process).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from efficacy import PHOTOS, damage, load_photos, mean_dicts, photoguard  # noqa: E402
from public_paths import public  # noqa: E402


def crop(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Central crop of (3, H, W) to size (h, w) (no resampling); the photo itself when size is None or larger."""
    if size is None:
        return x
    h, w = min(size[0], x.shape[1]), min(size[1], x.shape[2])
    top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
    return x[:, top : top + h, left : left + w].contiguous()


def metrics(encoder: Any, decoder: Any, x: torch.Tensor, p: torch.Tensor, seconds: float) -> dict[str, float]:
    """damage() of efficacy.py plus pixel SSIM and the mean-energy reduction. x, p: (3, H, W)."""
    from skimage.metrics import structural_similarity

    from pca_attack.attack.losses import mean_energy
    from pca_attack.certify.diagnostics import posterior

    row = damage(encoder, decoder, x, p)
    e_x = float(mean_energy(posterior(encoder, x[None])[0])[0])
    e_p = float(mean_energy(posterior(encoder, p[None])[0])[0])
    a, b = x.permute(1, 2, 0).numpy(), p.permute(1, 2, 0).numpy()
    return row | {
        "pixel_ssim": float(structural_similarity(a, b, channel_axis=2, data_range=1.0)),
        "mean_energy_clean": e_x, "mean_energy_protected": e_p, "mean_energy_reduction": 1.0 - e_p / e_x,
        "seconds": seconds,
    }


def attack_rows(name: str, x: torch.Tensor, encoder: Any, decoder: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """pca- (engine defaults) and PhotoGuard at every step count; returns rows and the main protected image."""
    from pca_attack import AttackConfig, Protector

    rows: dict[str, Any] = {}
    protected = x
    for steps in opts["steps"]:
        res = Protector(encoder, AttackConfig(steps=steps)).protect(x[None])
        rows[f"pca-@{steps}"] = metrics(encoder, decoder, x, res.images[0], res.elapsed_s)
        if steps == opts["steps"][0]:
            protected = res.images[0]
        if steps in opts["baseline_steps"]:
            t0 = time.perf_counter()
            pg = photoguard(encoder, x[None], 16.0, 2.0, steps)[0]
            rows[f"photoguard@{steps}"] = metrics(encoder, decoder, x, pg, time.perf_counter() - t0)
        print(f"[efficacy-real] {name} {tuple(x.shape[1:])} steps={steps} done", file=sys.stderr, flush=True)
    return {"rows": rows, "protected": protected}


def eot_rows(x: torch.Tensor, encoder: Any, decoder: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """Plain vs EoT at equal steps, each red-teamed over every channel (round trips included)."""
    from pca_attack import AttackConfig, Protector
    from pca_attack.redteam.report import redteam, transform_names

    names = [t for t in transform_names() if t != "purify" or opts["purify_steps"] > 0]
    out: dict[str, Any] = {}
    for label, eot in (("plain", None), ("eot", opts["eot"])):
        res = Protector(encoder, AttackConfig(steps=opts["eot_steps"], eot=eot)).protect(x[None])
        report = redteam(encoder, x, res.images[0], decoder=decoder, transforms=names, seed=0,
                         with_roundtrip=True, purify_steps=max(1, opts["purify_steps"]))
        out[label] = {"seconds": res.elapsed_s, "report": report}
    return out


def figure(name: str, x: torch.Tensor, p: torch.Tensor, encoder: Any, decoder: Any, fig_dir: Path) -> str:
    """Six panels for one photo; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pca_attack.certify.diagnostics import psnr, roundtrip
    from pca_attack.redteam.channels import jpeg

    rt_x, rt_p = roundtrip(encoder, decoder, x[None])[0], roundtrip(encoder, decoder, p[None])[0]
    rt_j = roundtrip(encoder, decoder, jpeg(p[None], 75))[0]
    delta = p - x
    amplified = (0.5 + delta / (2 * max(float(delta.abs().max()), 1e-6))).clamp(0, 1)
    panels = [
        ("original", x), (f"protected ({psnr(p, x):.1f} dB)", p), ("perturbation (amplified)", amplified),
        (f"clean round trip ({psnr(rt_x, x):.1f} dB)", rt_x), (f"protected round trip ({psnr(rt_p, x):.1f} dB)", rt_p),
        (f"protected, JPEG q75, round trip ({psnr(rt_j, x):.1f} dB)", rt_j),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(11, 11 * 2 * x.shape[1] / (3 * x.shape[2]) + 0.8))
    for ax, (title, img) in zip(axes.flat, panels, strict=True):
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig_dir.mkdir(parents=True, exist_ok=True)
    path = fig_dir / f"{opts_slug(encoder)}_{name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def opts_slug(encoder: Any) -> str:
    return Path(str(encoder.name)).name.removesuffix("_encoder.pth").lower() or "model"


def summarise(per_photo: dict[str, dict[str, Any]], eot: dict[str, Any], main_steps: int) -> dict[str, Any]:
    """Means per method, the issue's targets met or missed, EoT vs plain retained damage after JPEG q75."""
    methods = sorted({m for rows in per_photo.values() for m in rows})
    summary: dict[str, Any] = {
        "per_method": {m: mean_dicts([rows[m] for rows in per_photo.values() if m in rows]) for m in methods}
    }
    main, base = f"pca-@{main_steps}", f"photoguard@{main_steps}"
    dmg = summary["per_method"][main]["psnr_damage_db"]
    wins = [rows[main]["psnr_damage_db"] >= rows[base]["psnr_damage_db"] for rows in per_photo.values() if base in rows]
    summary["targets"] = {
        "mean_damage_db": dmg, "mean_damage_target_db": 6.0, "mean_damage_met": dmg >= 6.0,
        "beats_photoguard_on": f"{sum(wins)}/{len(wins)}", "beats_photoguard_met": bool(wins) and all(wins),
    } | summarise_eot(eot)
    return summary


def summarise_eot(eot: dict[str, Any]) -> dict[str, Any]:
    """Round-trip damage left after a real JPEG q75, plain vs EoT (mean over the EoT photos)."""
    if not eot:
        return {}

    def after_jpeg(label: str) -> float:
        return float(np.mean([_row(e[label]["report"], "jpeg-75")["roundtrip_damage_db"] for e in eot.values()]))

    plain, with_eot = after_jpeg("plain"), after_jpeg("eot")
    return {
        "plain_damage_after_jpeg75_db": plain, "eot_damage_after_jpeg75_db": with_eot,
        "eot_gain": with_eot / plain if plain > 0 else None, "eot_gain_met": plain > 0 and with_eot >= 1.5 * plain,
    }


def _row(report: Any, transform: str) -> dict[str, Any]:
    return next(r for r in report.to_dict()["rows"] if r["transform"] == transform)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pca_attack import load_decoder, load_encoder
    from pca_attack.redteam.report import merge_reports

    torch.set_num_threads(args.threads)
    encoder = load_encoder(args.model, device="cpu")
    decoder = load_decoder(args.model, device="cpu", decoder=args.decoder)
    photos = {n: crop(x, args.crop) for n, x in load_photos(False).items() if n in args.photos}
    opts = {"steps": args.steps, "baseline_steps": args.baseline_steps or args.steps, "eot": args.eot,
            "eot_steps": args.eot_steps, "purify_steps": args.purify_steps}
    per_photo: dict[str, Any] = {}
    eot: dict[str, Any] = {}
    figures: list[str] = []
    for name, x in photos.items():
        if not args.only_eot:
            done = attack_rows(name, x, encoder, decoder, opts)
            per_photo[name] = done["rows"]
            if name in args.figures:
                figures.append(figure(name, x, done["protected"], encoder, decoder, args.fig_dir))
        if name in args.eot_images:
            eot[name] = eot_rows(x, encoder, decoder, opts)
            print(f"[efficacy-real] {name} EoT vs plain done", file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "model": encoder.name, "posterior": encoder.posterior_type, "latent_channels": encoder.latent_channels,
        "downsample_factor": encoder.downsample_factor, "eps": 16, "steps": args.steps,
        "baseline": "PhotoGuard-style encoder attack: sign-PGD step 2/255 pulling mu toward mu(gray), last iterate",
        "crop": args.crop, "photos": {n: list(x.shape[1:]) for n, x in photos.items()},
        "threads": args.threads, "machine": platform.platform(), "torch": torch.__version__,
        "per_photo": per_photo, "figures": figures,
    }
    result |= summarise(per_photo, eot, args.steps[0]) if per_photo else {"targets": summarise_eot(eot)}
    if eot:
        result["eot_vs_plain"] = {
            "eot_preset": args.eot, "steps": args.eot_steps, "photos": list(eot),
            "seconds": {lab: float(np.mean([e[lab]["seconds"] for e in eot.values()])) for lab in ("plain", "eot")},
        }
        for label in ("plain", "eot"):
            merged = merge_reports([e[label]["report"] for e in eot.values()])
            result[f"redteam_{label}"] = merged.to_dict() | {"markdown": merged.to_markdown()}
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v]

    def names(text: str) -> list[str]:
        return [v for v in text.split(",") if v]

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model spec: a folder, an encoder file, a registry name")
    parser.add_argument("--decoder", default=None, help="decoder weights file (default: found beside the encoder)")
    parser.add_argument("--steps", type=ints, default=[40, 20], help="step counts, main first (default 40,20)")
    parser.add_argument("--baseline-steps", type=ints, default=None, help="PhotoGuard step counts (default: --steps)")
    parser.add_argument("--crop", default=None, help="central crop HxW of every photo (default: natural size)")
    parser.add_argument("--photos", type=names, default=list(PHOTOS))
    parser.add_argument("--eot", default="jpeg-75")
    parser.add_argument("--eot-steps", type=int, default=40)
    parser.add_argument("--eot-images", type=names, default=["chelsea", "coffee"])
    parser.add_argument("--purify-steps", type=int, default=0, help="0 leaves the purification channel out")
    parser.add_argument("--figures", type=names, default=["chelsea", "astronaut"])
    parser.add_argument("--only-eot", action="store_true", help="only the EoT-vs-plain red team (a second process)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-json", type=Path, default=None)
    parser.add_argument("--fig-dir", type=Path, default=ROOT / "docs" / "figures")
    args = parser.parse_args(argv)
    if args.crop:
        h, w = args.crop.lower().split("x")
        args.crop = (int(h), int(w))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()
    result = run(args)
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    result["command"] = "python benchmarks/efficacy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = args.out_json or ROOT / "docs" / f"efficacy_{Path(str(result['model'])).name.lower()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(public(result), indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "per_photo"}, indent=2))
    return result


if __name__ == "__main__":
    main()
