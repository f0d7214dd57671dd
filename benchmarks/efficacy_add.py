"""Add step counts and figures to an earlier real-model efficacy JSON without rerunning what it holds (issue 14).

``efficacy_real.py`` measures every requested step count of every photo in one run; when a run measured some
photos at one step count only, this script adds the missing rows in place:

* ``--steps N``: for each of ``--photos`` (at the size the JSON recorded) lacking ``pca-@N``, the strongest
  setting at N steps (the JSON's ``attack_config`` with ``steps=N``) and the PhotoGuard-style attack at N
  steps, with the same metrics (``efficacy_real.metrics``: damage, SSIM, mean energy, drift, damage after
  JPEG q75). The red team stays that of the main (first) step count, as in ``efficacy_real.py``.
* ``--figures NAMES``: the main step count's protection of each photo is recomputed (its damage is recorded
  beside the stored row's, a determinism check) and its six-panel figure written (``efficacy_plots``).

The means and targets are recomputed from the merged rows (``efficacy_real.summarise``); each addition is
logged under ``added`` with its command. The JSON is rewritten after each photo, so a run cut short keeps
what is done.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/efficacy_add.py --model PATH/taef2 \\
        --into docs/efficacy_taef2.json --steps 20 --photos astronaut,rocket --figures chelsea,coffee
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from efficacy import photoguard  # noqa: E402
from efficacy_real import jpeg_reference, log, metrics, scope, summarise  # noqa: E402
from public_paths import public  # noqa: E402


def photos_as_measured(result: dict[str, Any], names: list[str]) -> dict[str, torch.Tensor]:
    """Name -> (3, H, W) of each photo as the JSON's run scoped it (``efficacy_real.scope``: its ``crop`` and
    ``natural``); refused when the size differs from the one it recorded."""
    size = tuple(result["crop"]) if result.get("crop") else None
    out = scope(names, size, result.get("natural") or [])  # type: ignore[arg-type]
    for name, x in out.items():
        if list(x.shape[1:]) != result["photos"][name]:
            raise SystemExit(f"{name}: measured at {result['photos'][name]}, scoped now to {list(x.shape[1:])}")
    return out


def step_rows(x: torch.Tensor, models: tuple[Any, Any], config: dict[str, Any], steps: int) -> dict[str, Any]:
    """``pca-@N`` and ``photoguard@N`` rows of one photo x (3, H, W) at N = steps."""
    from pca_attack import AttackConfig, Protector

    encoder, decoder = models
    ref = jpeg_reference(encoder, decoder, x)
    res = Protector(encoder, AttackConfig(steps=steps, shrink=config["shrink"])).protect(x[None])
    rows = {f"pca-@{steps}": metrics(encoder, decoder, x, res.images[0], res.elapsed_s, ref)}
    t0 = time.perf_counter()
    pg = photoguard(encoder, x[None], 16.0, 2.0, steps)[0]
    rows[f"photoguard@{steps}"] = metrics(encoder, decoder, x, pg, time.perf_counter() - t0, ref)
    return rows


def figure(name: str, x: torch.Tensor, models: tuple[Any, Any], result: dict[str, Any],
           fig_dir: Path) -> dict[str, Any]:
    """The main step count's protection of x (3, H, W) recomputed, its figure written; the recomputed damage
    beside the stored row's."""
    from efficacy_plots import real_figure

    from pca_attack import AttackConfig, Protector

    encoder, decoder = models
    steps = result["steps"][0]
    res = Protector(encoder, AttackConfig(steps=steps, shrink=result["attack_config"]["shrink"])).protect(x[None])
    row = metrics(encoder, decoder, x, res.images[0], res.elapsed_s, jpeg_reference(encoder, decoder, x))
    path = real_figure(name, x, res.images[0], models, fig_dir, ROOT)
    stored = result["per_photo"][name][f"pca-@{steps}"]["psnr_damage_db"]
    return {"path": path, "photo": name, "steps": steps, "damage_db_recomputed": row["psnr_damage_db"],
            "damage_db_stored": stored}


def resummarise(result: dict[str, Any]) -> dict[str, Any]:
    """Means and targets of the merged rows (the EoT entries as stored)."""
    eot = result.get("eot_vs_plain", {}).get("per_photo", {})
    presets = list(result.get("targets", {}).get("eot_presets", {}))
    return result | summarise(result["per_photo"], eot, result["steps"][0], presets)


def add(args: argparse.Namespace) -> dict[str, Any]:
    from pca_attack import load_decoder, load_encoder

    torch.set_num_threads(args.threads)
    result = json.loads(args.into.read_text())
    models = (load_encoder(args.model, device="cpu"), load_decoder(args.model, device="cpu"))
    command = "python benchmarks/efficacy_add.py " + " ".join(args.argv)
    entry: dict[str, Any] = {"command": command, "steps": args.steps, "photos": [], "figures": []}
    result.setdefault("added", []).append(entry)
    start = time.perf_counter()
    for name, x in photos_as_measured(result, args.figures).items():
        entry["figures"].append(figure(name, x, models, result, args.fig_dir))
        result["figures"] = sorted({*result.get("figures", []), entry["figures"][-1]["path"]})
        log(f"{name} figure done")
        save(args.into, result, entry, start)
    for name, x in photos_as_measured(result, args.photos).items():
        for steps in [s for s in args.steps if f"pca-@{s}" not in result["per_photo"][name]]:
            result["per_photo"][name] |= step_rows(x, models, result["attack_config"], steps)
            result["steps"] = [*result["steps"], steps] if steps not in result["steps"] else result["steps"]
            log(f"{name} {tuple(x.shape[1:])} steps={steps} done")
        entry["photos"].append(name)
        save(args.into, resummarise(result), entry, start)
    return resummarise(result)


def save(path: Path, result: dict[str, Any], entry: dict[str, Any], start: float) -> None:
    """Rewrite the merged JSON (what is done so far)."""
    entry["seconds"] = round(time.perf_counter() - start, 1)
    path.write_text(json.dumps(public(result), indent=2))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def names(text: str) -> list[str]:
        return [v for v in text.split(",") if v]

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model the JSON was measured on (folder or file)")
    parser.add_argument("--into", type=Path, required=True, help="the efficacy JSON to extend, rewritten in place")
    parser.add_argument("--steps", type=lambda t: [int(v) for v in t.split(",") if v], default=[])
    parser.add_argument("--photos", type=names, default=[])
    parser.add_argument("--figures", type=names, default=[])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fig-dir", type=Path, default=ROOT / "docs" / "figures")
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    result = add(args)
    print(json.dumps(public(result["targets"]), indent=2))
    return result


if __name__ == "__main__":
    main()
