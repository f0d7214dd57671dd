"""Candidate attack settings against the PhotoGuard-style baseline on a real model (issue 14, brief s4/B).

The engine (pca-, mean energy of a deterministic posterior) lost to the PhotoGuard-style encoder attack (sign
PGD pulling mu toward mu(gray), last iterate) on some photos at equal steps. This screen runs named candidate
configurations (``CANDIDATES``: AttackConfig overrides, the defaults untouched) and the baseline on central
crops (or natural sizes) of a few photos and reports per photo and candidate: round-trip damage (dB), pixel
PSNR, mean-energy reduction, latent drift, damage after JPEG q75, and whether it beats the baseline.

    python benchmarks/efficacy_candidates.py --model PATH --photos astronaut,chelsea,coffee,rocket,camera \\
        --crop 128x192 --steps 40 --candidates default,no-neutral,sign --out-json docs/efficacy_taef2_candidates.json

Sequential, one process; prints the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from efficacy import PHOTOS, mean_dicts, photoguard  # noqa: E402
from efficacy_real import jpeg_reference, metrics, scope  # noqa: E402
from public_paths import public  # noqa: E402

CANDIDATES: dict[str, dict[str, Any]] = {
    "default": {},
    "no-neutral": {"colour_neutral": False},
    "sign": {"update": "sign"},
    "reference-loop": {"update": "sign", "step_schedule": "constant", "colour_neutral": False, "keep_best": False},
    "last-iterate": {"keep_best": False},
    "peak5": {"step_peak": 5.0},
    "step3": {"step": 3.0},
    "pca+": {"preset": "pca+"},
    "gray-centre": {},  # the default attack on centred_encoder(encoder, gray_centre(encoder)): see attacker()
    "half-gray-centre": {},  # the same toward half of that centre (between 0 and the gray image's latent)
    "global-neutral": {"neutral_window": 4096},  # only the global mean colour shift removed, no 128-px windows
    "gray-centre-free": {"colour_neutral": False},  # gray-centre without the colour-neutral projection
    "gray-centre-global": {"neutral_window": 4096},  # gray-centre, only the global mean colour shift removed
    "gray-interior": {},  # the default attack toward the gray image's interior latent (gray_interior_centre)
    "gray-interior-free": {"colour_neutral": False},  # the same without the colour-neutral projection
}
# candidate -> share of the gray latent as the centre
CENTRED = {"gray-centre": 1.0, "half-gray-centre": 0.5, "gray-centre-free": 1.0, "gray-centre-global": 1.0}
INTERIOR = ("gray-interior", "gray-interior-free")  # centred on gray_interior_centre instead


def attacker(encoder: Any, name: str, steps: int, shrink: float = 0.0) -> Any:
    """The Protector of candidate ``name``: its AttackConfig overrides, on the centred encoder where named."""
    from pca_attack import AttackConfig, Protector
    from pca_attack.attack.losses import centred_encoder, gray_centre, gray_interior_centre

    model = centred_encoder(encoder, CENTRED[name] * gray_centre(encoder)) if name in CENTRED else encoder
    model = centred_encoder(encoder, gray_interior_centre(encoder)) if name in INTERIOR else model
    return Protector(model, AttackConfig(steps=steps, shrink=shrink, **CANDIDATES[name]))


def candidate_rows(x: torch.Tensor, models: tuple[Any, Any], names: list[str], steps: int) -> dict[str, Any]:
    """Rows of each candidate and of the baseline on one photo x (3, H, W)."""
    encoder, decoder = models
    ref = jpeg_reference(encoder, decoder, x)
    rows: dict[str, Any] = {}
    t0 = time.perf_counter()
    pg = photoguard(encoder, x[None], 16.0, 2.0, steps)[0]
    rows["photoguard"] = metrics(encoder, decoder, x, pg, time.perf_counter() - t0, ref)
    for name in names:
        res = attacker(encoder, name, steps).protect(x[None])
        rows[name] = metrics(encoder, decoder, x, res.images[0], res.elapsed_s, ref)
    return rows


def summarise(per_photo: dict[str, dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per candidate: mean row, wins against the baseline, the worst margin (dB) over the photos."""
    out = {}
    for name in ["photoguard", *names]:
        mean = mean_dicts([rows[name] for rows in per_photo.values()])
        photos = list(per_photo.values())
        margins = [rows[name]["psnr_damage_db"] - rows["photoguard"]["psnr_damage_db"] for rows in photos]
        excess = [rows[name]["excess_damage_db"] - rows["photoguard"]["excess_damage_db"] for rows in photos]
        out[name] = {"damage_db": mean["psnr_damage_db"], "excess_damage_db": mean["excess_damage_db"],
                     "pixel_psnr_db": mean["pixel_psnr_db"], "pixel_ssim": mean["pixel_ssim"],
                     "damage_after_jpeg75_db": mean["damage_after_jpeg75_db"],
                     "mean_energy_reduction": mean["mean_energy_reduction"], "latent_drift": mean["latent_drift"],
                     "beats_photoguard_on": f"{sum(m >= 0 for m in margins)}/{len(margins)}",
                     "beats_photoguard_on_excess": f"{sum(m >= 0 for m in excess)}/{len(excess)}",
                     "worst_margin_db": float(np.min(margins))}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--photos", default="astronaut,chelsea,coffee,rocket,camera")
    parser.add_argument("--crop", default="128x192", help="central crop HxW ('' = natural size)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-json", type=Path, default=None)
    args = parser.parse_args(argv)
    from pca_attack import load_decoder, load_encoder

    torch.set_num_threads(args.threads)
    models = (load_encoder(args.model, device="cpu"), load_decoder(args.model, device="cpu"))
    names = [n for n in args.candidates.split(",") if n]
    size = tuple(int(v) for v in args.crop.lower().split("x")) if args.crop else None
    wanted = [p for p in args.photos.split(",") if p in PHOTOS]
    photos = scope(wanted, size, [] if size else wanted)  # type: ignore[arg-type]
    start = time.perf_counter()
    per_photo = {}
    for n, x in photos.items():
        per_photo[n] = candidate_rows(x, models, names, args.steps)
        print(f"[candidates] {n} {tuple(x.shape[1:])} done {time.perf_counter() - start:.0f}s", file=sys.stderr,
              flush=True)
    result = {
        "model": args.model, "steps": args.steps, "eps": 16, "crop": args.crop or "natural",
        "photos": {n: list(x.shape[1:]) for n, x in photos.items()},
        "candidates": {n: CANDIDATES[n] for n in names}, "summary": summarise(per_photo, names),
        "per_photo": per_photo, "seconds": round(time.perf_counter() - start, 1),
        "command": "python benchmarks/efficacy_candidates.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.out_json:
        args.out_json.write_text(json.dumps(public(result), indent=2))
    print(json.dumps(public({k: result[k] for k in ("photos", "summary", "seconds")}), indent=2))
    return result


if __name__ == "__main__":
    main()
