#!/usr/bin/env python
"""Transfer matrix (issue 15): does a perturbation computed on some VAE encoders protect against the others?

Rows: the attack computed on each single model, each pair, all models (aggregation 'mean'), the first pair
with aggregation 'worst', and a random +-eps sign pattern (no attack) at the same budget. Columns: each
model measured. Cells, averaged over the photos:

* ``energy_reduction`` = 1 - E(protected) / E(clean), E = mean of mu^2 over the latent (the mean energy the
  collapse drives to 0; defined for every posterior type);
* ``drift`` = ||mu(protected) - mu(clean)|| / ||mu(clean)||;
* ``roundtrip_damage_db`` = PSNR(D(E(clean)), clean) - PSNR(D(E(protected)), clean), where a decoder exists.

Photos: the efficacy benchmark's 8 (scikit-image / scikit-learn samples), resized to ``--side`` on the long
side and rounded to 8 bits. Engine defaults otherwise (pca- preset, sign-Rprop, best iterate).

    python benchmarks/transfer.py                        # taef2, taesana, demo; writes docs/transfer.json + figure
    python benchmarks/transfer.py --photos 2 --side 64 --steps 2 --out /tmp/t.json --figure ''   # smoke
    python benchmarks/transfer.py --figure-only          # redraw the figure from docs/transfer.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from public_paths import public  # noqa: E402

SHARED = ROOT / ".." / "shared" / "models"
DEFAULT_MODELS = {
    "taef2": str(SHARED / "taef2" / "taef2_encoder.pth"),
    "taesana": str(SHARED / "taesana" / "taesana_encoder.pth"),
    "demo": "demo",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="NAME=SPEC to add (default: taef2, taesana, demo)")
    p.add_argument("--photos", type=int, default=8)
    p.add_argument("--first", type=int, default=0, help="skip the first photos (split a run over processes)")
    p.add_argument("--merge", nargs="+", default=None, help="merge the JSON of split runs into --out")
    p.add_argument("--side", type=int, default=160, help="long side the photos are resized to")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eps", type=float, default=16.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", default=None, help="run only these rows (labels, ';'-separated); --merge joins them")
    p.add_argument("--out", default=str(ROOT / "docs" / "transfer.json"))
    p.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "transfer.png"))
    p.add_argument("--figure-only", action="store_true", help="draw the figure from --out (a partial run too)")
    p.add_argument("--markdown", action="store_true", help="print the README table of --out and exit")
    p.add_argument("--worst-temperature", type=float, default=None,
                   help="override the 'worst' soft-max temperature (0: hard switching; default: the engine's)")
    return p.parse_args(argv)


def load_photos(count: int, side: int, first: int = 0) -> dict[str, torch.Tensor]:
    """Name -> (1, 3, h, w) float on the 8-bit grid, long side ``side``."""
    from efficacy import load_photos as efficacy_photos

    out = {}
    for name, x in list(efficacy_photos(False).items())[first:count]:
        scale = side / max(x.shape[-2:])
        size = (max(8, round(x.shape[-2] * scale)), max(8, round(x.shape[-1] * scale)))
        small = F.interpolate(x[None], size=size, mode="bicubic", antialias=True, align_corners=False)
        out[name] = (small.clamp(0, 1) * 255).round() / 255
    return out


def load_models(specs: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    from pca_attack.errors import ModelLoadError, ModelNotFoundError
    from pca_attack.models.encoder import load_decoder, load_encoder

    encoders, decoders = {}, {}
    for name, spec in specs.items():
        encoders[name] = load_encoder(spec, device="cpu", dtype="fp32")
        try:
            decoders[name] = load_decoder(spec, device="cpu", dtype="fp32")
        except (ModelLoadError, ModelNotFoundError):
            decoders[name] = None
    return encoders, decoders


def rows_of(names: list[str]) -> list[tuple[str, tuple[str, ...], str]]:
    """(label, members, aggregation): singles, pairs, all, the first pair with 'worst', random."""
    rows = [("+".join(c), c, "mean") for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]
    if len(names) >= 2:
        rows.append(("+".join(names[:2]) + " (worst)", tuple(names[:2]), "worst"))
    rows.append(("random signs", (), "none"))
    return rows


def attack(
    row: tuple[str, tuple[str, ...], str], encoders: dict[str, Any], x: torch.Tensor, args: argparse.Namespace
) -> torch.Tensor:
    from pca_attack.attack.config import AttackConfig
    from pca_attack.attack.pgd import Protector

    _, members, aggregation = row
    if not members:  # the random-sign baseline at the same budget
        g = torch.Generator().manual_seed(0)
        signs = torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1
        return ((x + signs * args.eps / 255).clamp(0, 1) * 255).round() / 255
    config = AttackConfig(eps=args.eps, steps=args.steps, aggregation=aggregation)  # type: ignore[arg-type]
    return Protector([encoders[m] for m in members], config).protect(x).images


@torch.no_grad()
def measure(encoder: Any, decoder: Any, x: torch.Tensor, p: torch.Tensor) -> dict[str, float]:
    from pca_attack.certify.diagnostics import decode_mean, drift, psnr

    mu_c, _ = encoder.posterior(x)
    mu_p, _ = encoder.posterior(p)
    cell = {
        "energy_reduction": 1.0 - float(mu_p.float().pow(2).mean() / mu_c.float().pow(2).mean()),
        "drift": drift(mu_c.float(), mu_p.float()),
    }
    if decoder is not None:
        h, w = x.shape[-2:]
        clean_db = psnr(decode_mean(decoder, mu_c, h, w)[0], x[0]) or math.inf
        prot_db = psnr(decode_mean(decoder, mu_p, h, w)[0], x[0]) or math.inf
        cell["roundtrip_damage_db"] = clean_db - prot_db
    return cell


def average(cells: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(sum(c[k] for c in cells) / len(cells), 4) for k in cells[0]}


def targets(matrix: dict[str, dict[str, dict[str, float]]], names: list[str]) -> dict[str, Any]:
    """Issue 15's targets on the first pair: ensemble keeps >= 85% of each single effect; worst >= 90% of the
    weaker member's single-model effect."""
    a, b = (names + ["", ""])[:2]
    if len(names) < 2 or not {a, b, f"{a}+{b}", f"{a}+{b} (worst)"} <= set(matrix):
        return {}  # a partial run (--rows): the targets are computed once the rows are joined
    pair, worst = matrix[f"{a}+{b}"], matrix[f"{a}+{b} (worst)"]
    kept = {m: round(pair[m]["energy_reduction"] / matrix[m][m]["energy_reduction"], 3) for m in (a, b)}
    weaker = min((a, b), key=lambda m: matrix[m][m]["energy_reduction"])
    worst_kept = {m: round(worst[m]["energy_reduction"] / matrix[m][m]["energy_reduction"], 3) for m in (a, b)}
    return {
        "pair": [a, b],
        "mean_keeps_share_of_single": kept,
        "mean_target_0.85_met": all(v >= 0.85 for v in kept.values()),
        "worst_keeps_share_of_single": worst_kept,
        "weaker_member": weaker,
        "worst_target_0.90_met": worst_kept[weaker] >= 0.90,
    }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs over disjoint photo sets (cells averaged with each run's photo count as weight),
    or from runs over the same photos and disjoint rows (rows joined, in ``rows_of`` order)."""
    if all(p["photos"] == parts[0]["photos"] for p in parts) and len(parts) > 1:
        return join_rows(parts)
    merged = dict(parts[0])
    counts = [len(p["photos"]) for p in parts]
    total = sum(counts)
    merged["photos"] = {name: size for p in parts for name, size in p["photos"].items()}
    merged["command"] = [p["command"] for p in parts]
    merged["matrix"] = {
        row: {m: {k: round(sum(n * p["matrix"][row][m][k] for n, p in zip(counts, parts, strict=True)) / total, 4)
                  for k in cells} for m, cells in columns.items()}
        for row, columns in parts[0]["matrix"].items()
    }
    merged["attack_seconds_per_photo"] = {
        row: round(sum(n * p["attack_seconds_per_photo"][row] for n, p in zip(counts, parts, strict=True)) / total, 2)
        for row in parts[0]["attack_seconds_per_photo"]
    }
    merged["targets"] = targets(merged["matrix"], merged["models"])
    return merged


def join_rows(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs over the same photos with different ``--rows``: one matrix holding every row."""
    merged = dict(parts[0])
    found = {row: (p["matrix"][row], p["attack_seconds_per_photo"][row]) for p in parts for row in p["matrix"]}
    order = [label for label, _, _ in rows_of(merged["models"]) if label in found]
    merged["command"] = [c for p in parts for c in ([p["command"]] if isinstance(p["command"], str) else p["command"])]
    merged["matrix"] = {row: found[row][0] for row in order}
    merged["attack_seconds_per_photo"] = {row: found[row][1] for row in order}
    merged["targets"] = targets(merged["matrix"], merged["models"])
    return merged


def markdown(result: dict[str, Any]) -> str:
    """The matrix as a Markdown table: energy reduction / drift / round-trip damage per cell."""
    names = result["models"]
    lines = ["| attack computed on | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row, columns in result["matrix"].items():
        cells = []
        for m in names:
            c = columns[m]
            text = f"{c['energy_reduction'] * 100:+.0f}% / {c['drift']:.2f}"
            cells.append(text + (f" / {c['roundtrip_damage_db']:.1f} dB" if "roundtrip_damage_db" in c else ""))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, rows = result["models"], list(result["matrix"])
    values = [[result["matrix"][r][m]["energy_reduction"] * 100 for m in names] for r in rows]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 0.9 + 0.45 * len(rows)))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.0f}%", ha="center", va="center", color="white" if v < 60 else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("model measured")
    ax.set_ylabel("attack computed on")
    ax.set_title(f"Mean-energy reduction, eps {result['eps']:g}/255, {result['steps']} steps, "
                 f"{len(result['photos'])} photos")
    fig.colorbar(image, ax=ax, label="%")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.merge:
        result = merge([json.loads(Path(path).read_text()) for path in args.merge])
        Path(args.out).write_text(json.dumps(public(result), indent=2) + "\n")
        print(json.dumps(result, indent=2))
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return {}
    if args.worst_temperature is not None:
        import pca_attack.attack.objective as objective

        objective.WORST_TEMPERATURE = args.worst_temperature
    if args.figure_only or args.merge:
        result = json.loads(Path(args.out).read_text())
        figure(result, Path(args.figure))
        return result
    torch.set_num_threads(args.threads)
    specs = dict(DEFAULT_MODELS)
    specs.update(dict(item.split("=", 1) for item in args.model))
    encoders, decoders = load_models(specs)
    names = list(specs)
    photos = load_photos(args.photos, args.side, args.first)
    rows = [r for r in rows_of(names) if args.rows is None or r[0] in args.rows.split(";")]
    cells: dict[str, dict[str, list[dict[str, float]]]] = {r[0]: {m: [] for m in names} for r in rows}
    seconds: dict[str, float] = {r[0]: 0.0 for r in rows}
    result: dict[str, Any] = {}
    for photo, x in photos.items():
        for row in rows:
            t0 = time.perf_counter()
            protected = attack(row, encoders, x, args)
            seconds[row[0]] += time.perf_counter() - t0
            for m in names:
                cells[row[0]][m].append(measure(encoders[m], decoders[m], x, protected))
        done = len(next(iter(cells.values()))[names[0]])
        matrix = {r: {m: average(c[m]) for m in names} for r, c in cells.items()}
        result = {
            "command": "python " + " ".join(["benchmarks/transfer.py", *(argv if argv is not None else sys.argv[1:])]),
            "models": names, "eps": args.eps, "steps": args.steps, "side": args.side,
            "photos": {n: list(photos[n].shape[-2:]) for n in list(photos)[:done]},
            "defaults": "pca- preset, sign-Rprop, best iterate kept (AttackConfig defaults)",
            "matrix": matrix,
            "attack_seconds_per_photo": {r: round(s / done, 2) for r, s in seconds.items()},
            "targets": targets(matrix, names),
            "machine": f"{platform.machine()}, {args.threads} torch threads, CPU fp32",
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        # after every photo: partial runs survive
        Path(args.out).write_text(json.dumps(public(result), indent=2) + "\n")
        print(f"# {photo} done ({done}/{len(photos)})", file=sys.stderr, flush=True)
    if args.figure:
        figure(result, Path(args.figure))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
