#!/usr/bin/env python
"""How much of the protection an IMPRESS-style purification undoes, over its strength. Prints one JSON object.

The red team's ``purify`` channel (``pca_attack.redteam.channels.purify``: Adam on x' minimising
mean((D(E(x')) - x')^2) + weight * mean((x' - p)^2), x' within 16/255 of the protected p) runs with 20 steps
and weight 10 by default. This sweeps its steps and weight on central crops of the efficacy photos, each
protected once with the engine's defaults, and reports per setting the round-trip damage
PSNR(D(E(c)), c) - PSNR(D(E(x')), c) left after purification over the damage before it (1 = all kept), the
latent drift's retention, and how far the purifier moved the pixels (PSNR of x' against p). Needs a model
with a decoder (TAEF2's folder, or the demo VAE).

    python benchmarks/purify_sweep.py --model <taef2 folder> --out docs/purify_sweep_taef2.json
    python benchmarks/purify_sweep.py --model demo --photos chelsea --crop 64x96 --steps 5 --weights 10  # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from efficacy import load_photos  # noqa: E402
from efficacy_real import crop  # noqa: E402
from public_paths import publish  # noqa: E402

from pca_attack.attack.config import AttackConfig  # noqa: E402
from pca_attack.attack.pgd import Protector  # noqa: E402
from pca_attack.certify.diagnostics import latent_drift, psnr, roundtrip  # noqa: E402
from pca_attack.models.encoder import Decoder, Encoder, load_decoder, load_encoder  # noqa: E402
from pca_attack.redteam.channels import purify  # noqa: E402

PURIFIER = "Adam lr 0.01 on x' within 16/255 of p, loss mean((D(E(x'))-x')^2) + weight*mean((x'-p)^2)"


def roundtrip_psnr(encoder: Encoder, decoder: Decoder, image: torch.Tensor, clean: torch.Tensor) -> float:
    """PSNR in dB of (1, 3, H, W) ``image``'s round trip D(E(image)) against the clean photo."""
    return psnr(roundtrip(encoder, decoder, image)[0], clean[0].cpu())  # type: ignore[return-value]


def sweep_photo(encoder: Encoder, decoder: Decoder, clean: torch.Tensor, settings: list[tuple[int, float]],
                steps: int) -> dict[str, Any]:
    """One photo: protect it, then purify it with each (steps, weight)."""
    protected = Protector(encoder, AttackConfig(steps=steps)).protect(clean).images  # (1, 3, H, W)
    clean_db = roundtrip_psnr(encoder, decoder, clean, clean)  # the damage of an image: clean_db minus its own
    before = clean_db - roundtrip_psnr(encoder, decoder, protected, clean)
    drift = latent_drift(encoder, clean[0], protected[0])
    rows = {}
    for purify_steps, weight in settings:
        start = time.perf_counter()
        purified = purify(protected, encoder, decoder, steps=purify_steps, weight=weight)  # (1, 3, H, W)
        after = clean_db - roundtrip_psnr(encoder, decoder, purified, clean)
        rows[f"steps={purify_steps},weight={weight:g}"] = {
            "damage_db": round(after, 3), "damage_retention": round(after / before, 3),
            "drift_retention": round(latent_drift(encoder, clean[0], purified[0]) / drift, 3),
            "psnr_vs_protected_db": round(psnr(purified[0], protected[0]), 2),
            "seconds": round(time.perf_counter() - start, 1)}
    return {"size": list(clean.shape[-2:]), "damage_db": round(before, 3), "drift": round(drift, 3), "purified": rows}


def summary(photos: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per setting: the mean damage after purification over the mean damage before (ratio of means)."""
    before = sum(p["damage_db"] for p in photos.values())
    settings = next(iter(photos.values()))["purified"]
    return {name: {"damage_retention": round(sum(p["purified"][name]["damage_db"] for p in photos.values()) / before,
                                             3),
                   "mean_psnr_vs_protected_db": round(sum(p["purified"][name]["psnr_vs_protected_db"]
                                                          for p in photos.values()) / len(photos), 2)}
            for name in settings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model with a decoder: folder, file or registry name")
    parser.add_argument("--photos", default="chelsea,coffee,astronaut,flower")
    parser.add_argument("--crop", default="192x256", help="central crop HxW of each photo ('': natural size)")
    parser.add_argument("--steps", default="20,100,300", help="purification step counts")
    parser.add_argument("--weights", default="10,1,0.1", help="purification fidelity weights")
    parser.add_argument("--attack-steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder = load_encoder(args.model, device="cpu", dtype="fp32", offline=True)
    decoder = load_decoder(args.model, device="cpu", dtype="fp32", offline=True)
    size = tuple(int(v) for v in args.crop.split("x")) if args.crop else None
    settings = [(int(s), float(w)) for s in args.steps.split(",") for w in args.weights.split(",")]
    photos = {name: sweep_photo(encoder, decoder, crop(x, size)[None], settings, args.attack_steps)  # type: ignore[arg-type]
              for name, x in load_photos(False).items() if name in args.photos.split(",")}
    publish({"model": args.model, "crop": args.crop or "natural size",
             "attack": f"engine defaults, {args.attack_steps} steps", "purifier": PURIFIER,
             "summary": summary(photos), "photos": photos}, args.out)


if __name__ == "__main__":
    main()
