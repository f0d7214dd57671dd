"""Efficacy on a real pretrained model (issue 14): ``python benchmarks/efficacy.py --model PATH`` runs this.

Per photo (the 8 photos of ``efficacy.py``: natural size, or a central ``--crop HxW`` for those not named in
``--natural``):

* the strongest setting (pca-, eps 16 L-inf, ``--shrink`` explicitly, 0 = no shrink pass) at each of
  ``--steps`` (e.g. 40 and 20), and the PhotoGuard-style encoder attack at the same number of steps: pixel
  PSNR/SSIM of the perturbation, round-trip PSNR/SSIM of clean and protected against the original and their
  difference (the *damage*), the damage left after a real JPEG q75 (red-team definition: both round trips
  against JPEG(clean)), mean-energy reduction ``1 - mean(mu(p)^2) / mean(mu(x)^2)``, latent drift;
* the red team (``pca_attack.redteam``, every channel, round trips included) of the main protected image;
* on ``--eot-images``: each EoT attack (``--eot``) at equal budget and steps, red-teamed on ``--eot-channels``;
  the plain attack it is compared with is the main row (same config, same steps);
* for ``--figures`` photos, a figure in ``--fig-dir`` (``efficacy_plots.real_figure``);
* ``--only-default``: only the rows of ``AttackConfig(steps=N)`` as it is at run time (the default intensity),
  written beside the strongest rows (default ``docs/efficacy_<model name>_default.json``).

Writes ``--out-json`` (default ``docs/efficacy_<model name>.json``) and prints it. Sequential (one process).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from efficacy import PHOTOS, damage, load_photos, mean_dicts, photoguard  # noqa: E402
from efficacy_reuse import load_reused, pool_channels, reused_eot_tables  # noqa: E402
from public_paths import public  # noqa: E402

REUSE_NOTE = ("rows, red-team retention per channel and EoT entries of these photos are copied from the earlier run "
              "named in 'from' (same sizes, attack configuration and steps); '--extra' rows were run on them here")

CODEC_CHANNELS = "jpeg-95,jpeg-75,jpeg-50,webp-80"


def crop(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Central crop of (3, H, W) to size (h, w) (no resampling); the photo itself when size is None or larger."""
    if size is None:
        return x
    h, w = min(size[0], x.shape[1]), min(size[1], x.shape[2])
    top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
    return x[:, top : top + h, left : left + w].contiguous()


def scope(names: list[str], size: tuple[int, int] | None, natural: list[str]) -> dict[str, torch.Tensor]:
    """Name -> (3, H, W): the photos in ``natural`` at natural size, the others cropped to ``size``."""
    return {n: x if n in natural else crop(x, size) for n, x in load_photos(False).items() if n in names}


def jpeg_reference(encoder: Any, decoder: Any, x: torch.Tensor) -> dict[str, Any]:
    """JPEG q75 of the clean photo x (3, H, W) and the PSNR of its round trip against itself (computed once)."""
    from pca_attack.certify.diagnostics import psnr, roundtrip
    from pca_attack.redteam.channels import jpeg

    jc = jpeg(x[None], 75)  # (1, 3, H, W)
    return {"clean": jc, "psnr": psnr(roundtrip(encoder, decoder, jc)[0], jc[0]) or 99.0}


def damage_after_jpeg75(encoder: Any, decoder: Any, ref: dict[str, Any], p: torch.Tensor) -> float:
    """Round-trip damage left after a real JPEG q75 of p (3, H, W), as the red team defines it."""
    from pca_attack.certify.diagnostics import psnr, roundtrip
    from pca_attack.redteam.channels import jpeg

    jp = jpeg(p[None], 75)
    return float(ref["psnr"] - (psnr(roundtrip(encoder, decoder, jp)[0], ref["clean"][0]) or 99.0))


def metrics(encoder: Any, decoder: Any, x: torch.Tensor, p: torch.Tensor, seconds: float,
            ref: dict[str, Any]) -> dict[str, float]:
    """damage() of efficacy.py plus pixel SSIM, mean-energy reduction and damage after JPEG q75. x, p: (3, H, W)."""
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
        "damage_after_jpeg75_db": damage_after_jpeg75(encoder, decoder, ref, p),
        "linf_255": float(((p - x).abs().max() * 255).round()), "seconds": seconds,
    }


def log(message: str) -> None:
    print(f"[efficacy-real {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def attack_rows(name: str, x: torch.Tensor, models: tuple[Any, Any], opts: dict[str, Any]) -> dict[str, Any]:
    """pca- (strongest setting) and PhotoGuard at every step count; returns rows and the main protected image."""
    from pca_attack import AttackConfig, Protector

    encoder, decoder = models
    ref = jpeg_reference(encoder, decoder, x)
    rows: dict[str, Any] = {}
    protected = x
    for steps in opts["steps"]:
        res = Protector(encoder, AttackConfig(steps=steps, shrink=opts["shrink"])).protect(x[None])
        rows[f"pca-@{steps}"] = metrics(encoder, decoder, x, res.images[0], res.elapsed_s, ref)
        if steps == opts["steps"][0]:
            protected = res.images[0]
        if steps in opts["baseline_steps"]:
            t0 = time.perf_counter()
            pg = photoguard(encoder, x[None], 16.0, 2.0, steps)[0]
            rows[f"photoguard@{steps}"] = metrics(encoder, decoder, x, pg, time.perf_counter() - t0, ref)
        log(f"{name} {tuple(x.shape[1:])} steps={steps} done")
    rows |= extra_rows(name, x, models, opts, ref)
    return {"rows": rows, "protected": protected, "ref": ref}


def extra_rows(name: str, x: torch.Tensor, models: tuple[Any, Any], opts: dict[str, Any],
               ref: dict[str, Any] | None = None) -> dict[str, Any]:
    """``--extra`` candidates (``efficacy_candidates.CANDIDATES``: overrides of the strongest setting) at the
    main step count, as rows ``<candidate>@<steps>``."""
    from efficacy_candidates import attacker

    encoder, decoder = models
    steps, rows = opts["steps"][0], {}
    for extra in opts["extra"] if opts["extra_photos"] is None or name in opts["extra_photos"] else []:
        ref = ref or jpeg_reference(encoder, decoder, x)
        res = attacker(encoder, extra, steps, opts["shrink"]).protect(x[None])
        rows[f"{extra}@{steps}"] = metrics(encoder, decoder, x, res.images[0], res.elapsed_s, ref)
        log(f"{name} {tuple(x.shape[1:])} {extra}@{steps} done")
    return rows


def default_rows(name: str, x: torch.Tensor, models: tuple[Any, Any], opts: dict[str, Any]) -> dict[str, Any]:
    """The default intensity: ``AttackConfig(steps=N)`` as the engine defines it now, at the main step count."""
    from pca_attack import AttackConfig, Protector

    encoder, decoder = models
    steps = opts["steps"][0]
    res = Protector(encoder, AttackConfig(steps=steps)).protect(x[None])
    row = metrics(encoder, decoder, x, res.images[0], res.elapsed_s, jpeg_reference(encoder, decoder, x))
    log(f"{name} {tuple(x.shape[1:])} default@{steps} done")
    return {f"default@{steps}": row}


def per_channel(report: Any) -> dict[str, dict[str, float | None]]:
    """A red-team report of one photo as transform -> the retention numbers."""
    keys = ("latent_drift", "retention", "roundtrip_damage_db", "retention_roundtrip", "pixel_psnr_db")
    return {r["transform"]: {k: r[k] for k in keys} for r in report.to_dict()["rows"]}


def redteam_photo(x: torch.Tensor, p: torch.Tensor, models: tuple[Any, Any], channels: list[str],
                  purify_steps: int) -> Any:
    """The red team of one clean/protected pair (3, H, W), round trips included."""
    from pca_attack.redteam.report import redteam

    encoder, decoder = models
    return redteam(encoder, x, p, decoder=decoder, transforms=channels, seed=0, with_roundtrip=True,
                   purify_steps=max(1, purify_steps))


def eot_photo(x: torch.Tensor, plain: dict[str, Any], models: tuple[Any, Any], opts: dict[str, Any]) -> dict[str, Any]:
    """Each EoT preset at equal budget and steps as the main row (``plain``: its metrics); label -> numbers,
    and ``reports``: preset -> its red team on the codec channels."""
    from pca_attack import AttackConfig, Protector

    encoder, decoder = models
    keys = {"psnr_damage_db": "damage_db", "damage_after_jpeg75_db": "damage_after_jpeg75_db",
            "pixel_psnr_db": "pixel_psnr_db", "seconds": "seconds"}
    main = plain["rows"][f"pca-@{opts['steps'][0]}"]
    out: dict[str, Any] = {"plain": {v: main[k] for k, v in keys.items()}, "reports": {}}
    for preset in opts["eot"]:
        cfg = AttackConfig(steps=opts["steps"][0], shrink=opts["shrink"], eot=preset, eot_samples=opts["eot_samples"])
        res = Protector(encoder, cfg).protect(x[None])
        row = metrics(encoder, decoder, x, res.images[0], res.elapsed_s, plain["ref"])
        out[preset] = {v: row[k] for k, v in keys.items()}
        out["reports"][preset] = redteam_photo(x, res.images[0], models, opts["eot_channels"], 0)
    return out


def run_photo(name: str, x: torch.Tensor, models: tuple[Any, Any], args: argparse.Namespace,
              opts: dict[str, Any]) -> dict[str, Any]:
    """Everything measured on one photo (3, H, W)."""
    from efficacy_plots import real_figure

    out: dict[str, Any] = {}
    done = attack_rows(name, x, models, opts)
    out["rows"] = done["rows"]
    out["report"] = redteam_photo(x, done["protected"], models, opts["channels"], opts["purify_steps"])
    log(f"{name} red team done")
    if name in args.figures:
        out["figure"] = real_figure(name, x, done["protected"], models, args.fig_dir, ROOT)
    if name in args.eot_images:
        out["eot"] = eot_photo(x, done, models, opts)
        log(f"{name} EoT done")
    return out


def summarise(per_photo: dict[str, dict[str, Any]], eot: dict[str, Any], main_steps: int,
              presets: list[str]) -> dict[str, Any]:
    """Means per method, the issue's targets met or missed, EoT vs plain retained damage after JPEG q75."""
    methods = sorted({m for rows in per_photo.values() for m in rows})
    summary: dict[str, Any] = {
        "per_method": {m: mean_dicts([rows[m] for rows in per_photo.values() if m in rows]) for m in methods}
    }
    main, base = f"pca-@{main_steps}", f"photoguard@{main_steps}"
    if main not in summary["per_method"]:  # --only-default
        return summary
    dmg = summary["per_method"][main]["psnr_damage_db"]
    summary["targets"] = {"mean_damage_db": dmg, "mean_damage_target_db": 6.0, "mean_damage_met": dmg >= 6.0}
    for steps in sorted({int(m.split("@")[1]) for m in methods}, reverse=True):
        ours, theirs = f"pca-@{steps}", f"photoguard@{steps}"
        wins = [r[ours]["psnr_damage_db"] >= r[theirs]["psnr_damage_db"] for r in per_photo.values() if theirs in r]
        summary["targets"][f"beats_photoguard_on@{steps}"] = f"{sum(wins)}/{len(wins)}"
        if ours == main and theirs == base:
            summary["targets"]["beats_photoguard_met"] = bool(wins) and all(wins)
    for extra in [m for m in methods if not m.startswith(("pca-@", "photoguard@")) and m.endswith(f"@{main_steps}")]:
        wins = [r[extra]["psnr_damage_db"] >= r[base]["psnr_damage_db"] for r in per_photo.values() if base in r]
        summary["targets"][f"{extra}_beats_photoguard_on"] = f"{sum(wins)}/{len(wins)}"
    summary["targets"] |= summarise_eot(eot, presets)
    return summary


def summarise_eot(eot: dict[str, Any], presets: list[str]) -> dict[str, Any]:
    """Round-trip damage left after a real JPEG q75, plain vs each EoT preset (mean over the EoT photos); the
    target fields are those of the first preset (the issue's ``jpeg-75``)."""
    if not eot:
        return {}
    after = {lab: [e[lab]["damage_after_jpeg75_db"] for e in eot.values()] for lab in ("plain", *presets)}
    plain = float(np.mean(after["plain"]))
    variants: dict[str, dict[str, Any]] = {}
    for preset in presets:
        with_eot = float(np.mean(after[preset]))
        wins = sum(a > b for a, b in zip(after[preset], after["plain"], strict=True))
        variants[preset] = {"damage_after_jpeg75_db": with_eot, "gain": with_eot / plain if plain > 0 else None,
                            "beats_plain_on": f"{wins}/{len(eot)}"}
    first = variants[presets[0]]
    return {
        "plain_damage_after_jpeg75_db": plain, "eot_damage_after_jpeg75_db": first["damage_after_jpeg75_db"],
        "eot_gain": first["gain"], "eot_gain_target": 1.5,
        "eot_gain_met": plain > 0 and first["damage_after_jpeg75_db"] >= 1.5 * plain, "eot_presets": variants,
    }


def redteam_tables(done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-photo retention per channel and the pooled tables (plain; EoT where run)."""
    from pca_attack.redteam.report import merge_reports

    out: dict[str, Any] = {"redteam_per_photo": {n: per_channel(d["report"]) for n, d in done.items()}}
    merged = merge_reports([d["report"] for d in done.values()])
    out["redteam_plain"] = merged.to_dict() | {"markdown": merged.to_markdown()}
    eot = [d["eot"]["reports"] for d in done.values() if d.get("eot")]
    if eot:
        out["redteam_eot"] = {}
        for preset in eot[0]:
            merged = merge_reports([r[preset] for r in eot])
            out["redteam_eot"][preset] = merged.to_dict() | {"markdown": merged.to_markdown()}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pca_attack import AttackConfig, load_decoder, load_encoder
    from pca_attack.redteam.channels import transform_names

    torch.set_num_threads(args.threads)
    encoder = load_encoder(args.model, device="cpu")
    models = (encoder, load_decoder(args.model, device="cpu", decoder=args.decoder))
    photos = scope(args.photos, args.crop, args.natural)
    opts = {"steps": args.steps, "baseline_steps": args.baseline_steps or args.steps, "eot": args.eot,
            "eot_samples": args.eot_samples, "shrink": args.shrink, "purify_steps": args.purify_steps,
            "channels": [t for t in transform_names() if t != "purify" or args.purify_steps > 0],
            "eot_channels": args.eot_channels, "extra": args.extra, "extra_photos": args.extra_photos}
    result: dict[str, Any] = {
        "model": encoder.name, "posterior": encoder.posterior_type, "latent_channels": encoder.latent_channels,
        "downsample_factor": encoder.downsample_factor, "eps": 16, "steps": args.steps,
        "crop": args.crop, "natural": args.natural, "photos": {n: list(x.shape[1:]) for n, x in photos.items()},
        "threads": args.threads, "machine": platform.platform(), "torch": torch.__version__,
    }
    if args.only_default:
        cfg = asdict(AttackConfig(steps=args.steps[0]))
        per_photo = {n: default_rows(n, x, models, opts) for n, x in photos.items()}
        return result | {"attack_config": cfg, "per_photo": per_photo} | summarise(per_photo, {}, args.steps[0], [])
    result["attack_config"] = asdict(AttackConfig(steps=args.steps[0], shrink=args.shrink))
    result["baseline"] = "PhotoGuard-style encoder attack: sign-PGD step 2/255 pulling mu toward mu(gray), last iterate"
    reused = load_reused(args.reuse, args.reuse_photos, result["photos"], result["attack_config"], args.steps) \
        if args.reuse and args.reuse_photos else {}
    done: dict[str, dict[str, Any]] = {}
    for n, x in photos.items():
        if n in reused:
            done[n] = reused[n] | {"rows": reused[n]["rows"] | extra_rows(n, x, models, opts)}
        else:
            done[n] = run_photo(n, x, models, args, opts)
            done[n]["redteam"] = per_channel(done[n]["report"])
        if args.partial:  # what is done so far, as --reuse reads it, in case the run is cut short
            args.partial.write_text(json.dumps(result | {
                "per_photo": {k: d["rows"] for k, d in done.items()},
                "redteam_per_photo": {k: d["redteam"] for k, d in done.items()},
                "eot_vs_plain": {"per_photo": {k: {m: v for m, v in d["eot"].items() if m != "reports"}
                                               for k, d in done.items() if d.get("eot")}}}
                | (reused_eot_tables(args.reuse) if args.reuse else {}), indent=1))
    return result | collect(done, args, reused)


def collect(done: dict[str, dict[str, Any]], args: argparse.Namespace, reused: dict[str, Any]) -> dict[str, Any]:
    """Rows, targets, red-team tables and EoT of every photo, fresh or reused (``efficacy_reuse``)."""
    per_photo = {n: d["rows"] for n, d in done.items()}
    eot = {n: {k: v for k, v in d["eot"].items() if k != "reports"} for n, d in done.items() if d.get("eot")}
    result: dict[str, Any] = {"per_photo": per_photo,
                              "figures": [d["figure"] for d in done.values() if "figure" in d]}
    result |= summarise(per_photo, eot, args.steps[0], args.eot)
    if reused:
        result |= {"reused": {"from": str(args.reuse.name), "photos": list(reused), "note": REUSE_NOTE}}
        result["redteam_per_photo"] = {n: d["redteam"] for n, d in done.items()}
        result["redteam_plain"] = pool_channels(result["redteam_per_photo"])
        fresh_eot = {n: d for n, d in done.items() if d.get("eot") and "reports" in d["eot"]}
        tables = redteam_tables(fresh_eot) if fresh_eot else reused_eot_tables(args.reuse)
        result |= {k: v for k, v in tables.items() if k == "redteam_eot"}
    else:
        result |= redteam_tables(done)
    if eot:
        result["eot_vs_plain"] = {"eot_preset": args.eot, "eot_samples": args.eot_samples, "steps": args.steps[0],
                                  "channels": args.eot_channels, "per_photo": eot}
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
    parser.add_argument("--shrink", type=float, default=0.0, help="shrink pass of the strongest rows (0 = off)")
    parser.add_argument("--crop", default=None, help="central crop HxW of the photos not in --natural")
    parser.add_argument("--natural", type=names, default=[], help="photos kept at natural size despite --crop")
    parser.add_argument("--photos", type=names, default=list(PHOTOS))
    parser.add_argument("--eot", type=names, default=["jpeg-75", "jpeg-75-cubic"],
                        help="EoT presets compared with the plain attack, the issue's first")
    parser.add_argument("--eot-samples", type=int, default=1)
    parser.add_argument("--eot-images", type=names, default=["chelsea", "coffee"])
    parser.add_argument("--eot-channels", type=names, default=names(CODEC_CHANNELS),
                        help="red-team channels of the EoT images (the plain image meets every channel)")
    parser.add_argument("--purify-steps", type=int, default=0, help="0 leaves the purification channel out")
    parser.add_argument("--figures", type=names, default=["chelsea", "coffee"])
    parser.add_argument("--only-default", action="store_true", help="only the default intensity's rows")
    parser.add_argument("--extra", type=names, default=[],
                        help="candidate rows at the main step count (names in efficacy_candidates.CANDIDATES)")
    parser.add_argument("--extra-photos", type=names, default=None, help="photos of the --extra rows (default all)")
    parser.add_argument("--reuse", type=Path, default=None, help="an earlier efficacy JSON of the same model")
    parser.add_argument("--reuse-photos", type=names, default=[],
                        help="photos copied from --reuse instead of rerun (same size, config and steps)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--partial", type=Path, default=None, help="rewrite the rows done so far here per photo")
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
    suffix = "_default" if args.only_default else ""
    out = args.out_json or ROOT / "docs" / f"efficacy_{Path(str(result['model'])).name.lower()}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(public(result), indent=2))
    print(json.dumps({k: v for k, v in result.items() if not k.startswith(("per_photo", "redteam_"))}, indent=2))
    return result


if __name__ == "__main__":
    main()
