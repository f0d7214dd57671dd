#!/usr/bin/env python
"""Which EoT preset or gradient smoothing keeps the most protection through which channel, at equal steps. Prints
one JSON object.

Each photo is protected once per ``--eot`` preset (``none`` = the plain attack) and ``--smoothing`` sigma (the
same ``AttackConfig`` and steps otherwise; ``none+smooth4`` = the plain attack with ``smoothing=4``) and every
protected image is red-teamed (``pca_attack.redteam``) on ``--channels``: the round-trip damage
PSNR(D(E(T(c))), T(c)) - PSNR(D(E(T(p))), T(c)) in dB after each channel T (``none`` = the lossless image), the
same against the original, PSNR(D(E(c)), c) - PSNR(D(E(T(p))), c) (the view of someone who
applies T to strip the protection), the excess damage (the round trip of T(p) against the nearer of T(c) and
T(p): what it loses beyond reproducing the change, ``pca_attack.redteam.report``), the pixel PSNR and SSIM of the
perturbation, the collapse, and the collapse kept after each channel (1 - target KL of T(p) / of T(c)). The
summary gives per variant their means, and per channel the mean damage over the photos and its ratio to the plain
attack's. Needs a model with a decoder.

    python benchmarks/eot_channels.py --model <taef2 folder> --out docs/eot_channels_taef2.json
    python benchmarks/eot_channels.py --model <taef2 folder> --photos chelsea,coffee --eot none \
        --smoothing 0,1,2,4,8 --out docs/smoothing_taef2.json
    python benchmarks/eot_channels.py --model <taef2 folder> --eot none --editor 0,256 \
        --channels editor-256,jpeg-75 --out docs/editor_default_taef2.json
    python benchmarks/eot_channels.py --model <taef2 folder> --eot none --editor 0,256,256~0.25 \
        --channels editor-224,editor-256,editor-296,editor-320,crop-4,crop-3 --out docs/editor_sizes_taef2.json
    python benchmarks/eot_channels.py --model demo --photos chelsea --crop 48x64 --steps 2 --eot none,cleaner  # smoke
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
from pca_attack.certify.diagnostics import psnr  # noqa: E402
from pca_attack.certify.metrics import ssim, tiled_mean  # noqa: E402
from pca_attack.models.encoder import Decoder, Encoder, load_decoder, load_encoder  # noqa: E402
from pca_attack.redteam.editor import collapse_kept  # noqa: E402
from pca_attack.redteam.report import redteam  # noqa: E402

CHANNELS = "jpeg-75,noise-8,cleaner,blur-1,resize-0.5,purify"


def variants(presets: list[str], smoothings: list[float], steps: int, eot_samples: int,
             editors: tuple[str, ...] = ("0",)) -> dict[str, AttackConfig]:
    """Name -> configuration for every EoT preset, gradient smoothing and editor resolution: 'none' is the plain
    attack, 'cleaner' an EoT preset, 'none+smooth4' the plain attack with ``smoothing=4``, 'none+editor256' the
    plain attack with ``editor_resolution=256`` (editor '0': off), 'none+editor256~0.25' with
    ``editor_spread=0.25`` too (editor '256~0.25')."""
    out = {}
    for preset in presets:
        for sigma in smoothings:
            for editor in editors:
                side, _, spread = editor.partition("~")
                name = preset + (f"+smooth{sigma:g}" if sigma else "") + (f"+editor{editor}" if int(side) else "")
                out[name] = AttackConfig(steps=steps, eot=None if preset == "none" else preset,
                                         eot_samples=eot_samples, smoothing=sigma, editor_resolution=int(side) or None,
                                         editor_spread=float(spread or 0))
    return out


def photo_rows(encoder: Encoder, decoder: Decoder, clean: torch.Tensor, configs: dict[str, AttackConfig],
               channels: list[str]) -> dict[str, Any]:
    """One photo (3, H, W): per variant, the damage after each channel, the pixel PSNR and SSIM of the change, the
    collapse and the attack's time."""
    rows = {}
    for name, config in configs.items():
        start = time.perf_counter()
        result = Protector(encoder, config).protect(clean[None])
        protected = result.images[0]  # (3, H, W)
        seconds = time.perf_counter() - start
        report = redteam(encoder, clean, protected, decoder=decoder, transforms=channels)
        rows[name] = {"attack_s": round(seconds, 1), "pixel_psnr_db": round(psnr(protected, clean), 2),
                      "pixel_ssim": round(tiled_mean(ssim, clean, protected), 4),
                      "collapse": round(1.0 - float(result.final_loss[0]) / float(result.clean_loss[0]), 4),
                      "damage_db": {row.transform: round(row.roundtrip_damage_db or 0.0, 3) for row in report.rows},
                      "damage_vs_original_db": {row.transform: round(row.roundtrip_damage_vs_original_db or 0.0, 3)
                                                for row in report.rows},
                      "excess_db": {row.transform: round(row.roundtrip_excess_db or 0.0, 3) for row in report.rows},
                      "collapse_after": {row.transform: round(collapse_kept(row) or 0.0, 4) for row in report.rows}}
    return {"size": list(clean.shape[-2:]), "presets": rows}


def summary(photos: dict[str, dict[str, Any]], presets: list[str]) -> dict[str, Any]:
    """Per variant: the mean change PSNR, SSIM and collapse, and per channel the mean damage over the photos and its
    ratio to the plain attack's ('none')."""
    def mean(preset: str, channel: str, key: str = "damage_db") -> float:
        return sum(p["presets"][preset][key][channel] for p in photos.values()) / len(photos)

    def average(preset: str, key: str) -> float:
        return round(sum(p["presets"][preset][key] for p in photos.values()) / len(photos), 4)

    channels = list(next(iter(photos.values()))["presets"][presets[0]]["damage_db"])
    out: dict[str, Any] = {}
    for preset in presets:
        out[preset] = {**{key: average(preset, key) for key in ("pixel_psnr_db", "pixel_ssim", "collapse")},
                       "mean_damage_db": {c: round(mean(preset, c), 3) for c in channels},
                       "mean_damage_vs_original_db": {c: round(mean(preset, c, "damage_vs_original_db"), 3)
                                                      for c in channels},
                       "mean_excess_db": {c: round(mean(preset, c, "excess_db"), 3) for c in channels},
                       "mean_collapse_after": {c: round(mean(preset, c, "collapse_after"), 4) for c in channels}}
        if "none" in presets and preset != "none":
            for key, name in (("damage_db", "vs_plain"), ("damage_vs_original_db", "vs_plain_vs_original"),
                              ("excess_db", "vs_plain_excess")):
                out[preset][name] = {c: round(mean(preset, c, key) / mean("none", c, key), 3)
                                     if mean("none", c, key) > 0 else None for c in channels}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model with a decoder: folder, file or registry name")
    parser.add_argument("--photos", default="chelsea,coffee,astronaut,flower")
    parser.add_argument("--crop", default="", help="central crop HxW of each photo (default: natural size)")
    parser.add_argument("--eot", default="none,noise,cleaner,noise-cleaner", help="EoT presets ('none' = plain)")
    parser.add_argument("--smoothing", default="0", help="gradient smoothing sigmas in pixels (0 = off)")
    parser.add_argument("--eot-samples", type=int, default=1, help="EoT draws per step")
    parser.add_argument("--editor", default="0",
                        help="editor resolutions attacked too (long sides; 0 = off; N~S: with editor_spread S)")
    parser.add_argument("--channels", default=CHANNELS, help="red-team channels measured after")
    parser.add_argument("--steps", type=int, default=40, help="attack steps (equal for every preset)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder = load_encoder(args.model, device="cpu", dtype="fp32", offline=True)
    decoder = load_decoder(args.model, device="cpu", dtype="fp32", offline=True)
    size = tuple(int(v) for v in args.crop.split("x")) if args.crop else None
    configs = variants(args.eot.split(","), [float(s) for s in args.smoothing.split(",")], args.steps, args.eot_samples,
                       tuple(args.editor.split(",")))
    channels = args.channels.split(",")
    presets = list(configs)
    photos = {name: photo_rows(encoder, decoder, crop(x, size), configs, channels)  # type: ignore[arg-type]
              for name, x in load_photos(False).items() if name in args.photos.split(",")}
    publish({"model": args.model, "crop": args.crop or "natural size", "steps": args.steps,
             "eot_samples": args.eot_samples,
             "attack": "AttackConfig(steps, eot, smoothing, editor_resolution, editor_spread) defaults otherwise",
             "summary": summary(photos, presets), "photos": photos}, args.out)


if __name__ == "__main__":
    main()
