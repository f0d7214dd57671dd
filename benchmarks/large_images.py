"""Large images within a memory budget (issue 12): peak RSS, time per step, tiled vs untiled, seams, editor resize.

Prints one JSON object (and writes it with --out). Parts (``--parts``, comma-separated):

* ``memory``: each ``--sizes`` photo (scikit-image's astronaut, upscaled) protected for ``--steps`` steps in a
  fresh child process, with the default budget and with ``--max-memory``: the plan, the estimate, the child's
  peak RSS (``ru_maxrss``: model, attack, encode and certificate together), seconds per step; and the ratio of
  seconds per step between the largest and the smallest size against the ratio of their pixels.
* ``seams``: ``--seam-size`` (fits untiled) protected untiled and in tiles: final loss of both measured
  untiled, and the mean |perturbation| within 8 px of tile borders vs elsewhere (both runs, same masks).
* ``agreement``: one step at ``--agree-size`` in tiles of ``--agree-core``: loss / untiled loss and the cosine
  (and sign agreement) of the input gradient with the untiled one, with whole-image statistics and with
  each tile's own (the diffusers tiled-VAE approximation).
* ``metrics``: the certificate's MS-SSIM and VIF-P on one ``METRIC_TILE`` tile (a random pair), each in a fresh
  child process after a warm-up call: growth of the peak RSS and seconds, for the engine's separable filters and
  for torchmetrics' functions (float64 ``conv2d``), with the values of both.
* ``ratio``: time per step of the largest and the smallest ``--sizes`` photo in ONE process under the same
  load, run small, large, small (the large run bracketed): each the engine's plan for the default budget (or
  ``--max-memory``) and the attack's steps alone (no certificate); the ratio of the last steps' seconds, large
  over the mean of the two small runs, against the ratio of pixels.
* ``editor``: ``--editor-size`` protected plainly and with ``editor_resolution=--editor-long``; both outputs
  (and the clean photo) downscaled to that long side with PIL's Lanczos, as an editor would
  (``pca_attack.redteam.editor``); collapse kept = 1 - KL_target(protected small) / KL_target(clean small);
  reported with the ratio editor / plain and the red team's editor-N rows.

Run: ``nice -n 10 prlimit --as=16000000000 python benchmarks/large_images.py --model demo``.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.public_paths import public  # noqa: E402


def photo_bytes(width: int, height: int) -> bytes:
    """scikit-image's astronaut, resized (Lanczos) to width x height, as PNG bytes."""
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((width, height), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [(int(w), int(h)) for w, h in (item.split("x") for item in text.split(",") if item)]


# -- child: one protect run, reporting its own peak RSS ------------------------------------------------


def child(args: argparse.Namespace) -> None:
    from pca_attack.attack.config import AttackConfig
    from pca_attack.attack.memory import memory_free, parse_size
    from pca_attack.io.images import decode_image
    from pca_attack.pipeline import Engine

    torch.set_num_threads(args.threads)
    width, height = parse_sizes(args.child)[0]
    data = photo_bytes(width, height)
    budget = parse_size(args.max_memory) if args.max_memory else None
    free_ram = memory_free(torch.device("cpu"))
    engine = Engine.from_spec(args.model, device="cpu", max_memory=budget)
    image = decode_image(data, max_pixels=width * height)
    plans: list[Any] = []
    ends: list[float] = []
    t0 = time.perf_counter()
    def on_step(event: Any) -> None:  # also to stderr as it happens: a run stopped early still has its steps
        ends.append(event.elapsed_s)
        print(json.dumps({"step": event.step, "elapsed_s": round(event.elapsed_s, 1), "peak_rss_bytes": _peak_rss()}),
              file=sys.stderr, flush=True)

    out = engine.protect(
        [image], AttackConfig(steps=args.steps), on_plan=lambda i, p: plans.append(p) or print(
            json.dumps({"plan": p.describe()}), file=sys.stderr, flush=True),
        progress=lambda i, e: on_step(e) if e.end_of_step else None,
    )
    total = time.perf_counter() - t0
    steps = np.diff([0.0, *ends]).tolist()
    plan = plans[0]
    print(json.dumps({
        "size": f"{width}x{height}", "budget": args.max_memory or "default",
        "free_ram_bytes_at_start": free_ram, "threads": torch.get_num_threads(),
        "budget_bytes_for_attack": plan.budget_bytes, "plan": plan.describe(), "tiles": plan.tiles,
        "tile_side": plan.tile_side, "estimated_attack_bytes": plan.estimated_bytes,
        "baseline_rss_bytes": engine.baseline_memory,
        "peak_rss_bytes": _peak_rss(),
        "seconds_per_step": steps, "seconds_total": total, "budget_ok": out[0].certificate.budget_ok,
    }))


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(model: str, size: tuple[int, int], steps: int, budget: str | None, threads: int = 1) -> dict[str, Any]:
    command = [sys.executable, __file__, "--model", model, "--steps", str(steps), "--child", f"{size[0]}x{size[1]}",
               "--threads", str(threads)]
    if budget:
        command += ["--max-memory", budget]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        return {"size": f"{size[0]}x{size[1]}", "budget": budget or "default", "error": done.stderr[-800:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


METRIC_CHILD = """
import json, resource, sys, time, torch
torch.set_num_threads(1)
from pca_attack.certify import metrics
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure, visual_information_fidelity
name, side = sys.argv[1], metrics.METRIC_TILE
g = torch.Generator().manual_seed(0)
a = torch.rand(3, side, side, generator=g)
b = (a + 0.02 * torch.randn(a.shape, generator=g)).clamp(0, 1)
fns = {"ms_ssim": metrics.ms_ssim, "vif": metrics.vif,
       "ms_ssim_torchmetrics": lambda r, t: float(multiscale_structural_similarity_index_measure(
           t[None].double(), r[None].double(), data_range=1.0, kernel_size=11)),
       "vif_torchmetrics": lambda r, t: float(visual_information_fidelity(metrics._luma_255(t), metrics._luma_255(r)))}
small = a[None, :, :64, :64].double(), b[None, :, :64, :64].double()  # warm-up on 64 px: imports, small buffers
multiscale_structural_similarity_index_measure(*small, data_range=1.0, betas=(0.3, 0.3, 0.4))
metrics.vif(a[:, :64, :64], b[:, :64, :64]), metrics.ms_ssim(a[:, :64, :64], b[:, :64, :64])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
value = fns[name](a, b)
seconds = time.perf_counter() - t0
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"value": value, "seconds": seconds, "peak_rss_growth_bytes": grown, "tile": side}))
"""


def part_metrics(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("ms_ssim", "ms_ssim_torchmetrics", "vif", "vif_torchmetrics"):
        done = subprocess.run([sys.executable, "-c", METRIC_CHILD, name], cwd=ROOT, capture_output=True, text=True)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else done.stderr[-800:]
    return out


def part_memory(args: argparse.Namespace) -> dict[str, Any]:
    sizes = parse_sizes(args.sizes)
    budgets = [None if b == "default" else b for b in args.budgets.split(",")]
    runs = [run_child(args.model, size, args.steps, budget, args.threads) for size in sizes for budget in budgets]
    ok = [r for r in runs if "error" not in r and r["budget"] == (budgets[0] or "default")]
    result: dict[str, Any] = {"runs": runs}
    if len(ok) >= 2:
        big, small = max(ok, key=_pixels), min(ok, key=_pixels)
        per_step = {r["size"]: float(np.mean(r["seconds_per_step"][-1:])) for r in (big, small)}
        result["time_ratio"] = {
            "sizes": [big["size"], small["size"]], "seconds_per_step": per_step,
            "ratio": per_step[big["size"]] / per_step[small["size"]], "pixel_ratio": _pixels(big) / _pixels(small),
        }
    return result


def _pixels(run: dict[str, Any]) -> int:
    w, h = run["size"].split("x")
    return int(w) * int(h)


# -- seams and tiled vs untiled ------------------------------------------------------------------------


def border_mask(grid: Any, width: int = 8) -> torch.Tensor:
    """(H, W) bool: pixels within ``width`` of a core boundary inside the image."""
    mask = torch.zeros(grid.height, grid.width, dtype=torch.bool)
    f = grid.factor
    for tile in grid.tiles():
        for edge in (tile.latent_rows.start * f, tile.latent_rows.stop * f):
            if 0 < edge < grid.height:
                mask[max(0, edge - width) : edge + width, :] = True
        for edge in (tile.latent_cols.start * f, tile.latent_cols.stop * f):
            if 0 < edge < grid.width:
                mask[:, max(0, edge - width) : edge + width] = True
    return mask


def part_seams(args: argparse.Namespace) -> dict[str, Any]:
    from pca_attack.attack.config import AttackConfig
    from pca_attack.attack.memory import memory_model
    from pca_attack.attack.pgd import Protector
    from pca_attack.attack.tiling import TileGrid
    from pca_attack.io.images import decode_image
    from pca_attack.models.encoder import load_encoder

    width, height = parse_sizes(args.seam_size)[0]
    encoder = load_encoder(args.model, device="cpu")
    model = memory_model(encoder)
    x = decode_image(photo_bytes(width, height)).to_tensor()[None]  # (1, 3, H, W)
    halo = args.seam_halo or model.halo  # --seam-halo: compare another halo with the measured one
    grid = TileGrid(height, width, model.factor, args.seam_core, halo)
    cfg = AttackConfig(steps=args.seam_steps)
    plain = Protector(encoder, cfg).protect(x)
    tiled = Protector(encoder, cfg).protect(x, tiles=grid)
    judge = Protector(encoder, cfg)  # untiled loss of both outputs
    target = judge.target_variance(x)
    loss = {name: float(judge.loss(r.images, target)[0]) for name, r in (("untiled", plain), ("tiled", tiled))}
    mask = border_mask(grid)
    stats = {}
    for name, result in (("untiled", plain), ("tiled", tiled)):
        delta = (result.images - x)[0].abs().mean(dim=0) * 255  # (H, W) on the 0-255 scale
        stats[name] = {"border_mean_abs_255": float(delta[mask].mean()),
                       "inside_mean_abs_255": float(delta[~mask].mean())}
    return {
        "size": f"{width}x{height}", "steps": args.seam_steps, "tiles": len(grid), "tile_side": grid.tile_side,
        "halo": halo, "final_loss_untiled_measure": loss, "clean_loss": float(judge.loss(x, target)[0]),
        "tiled_over_untiled_final_loss": loss["tiled"] / loss["untiled"], "perturbation": stats,
        "whole_image_statistics": "GroupNorm statistics and attention context of the whole image (streamed)",
        "elapsed_s": {"untiled": plain.elapsed_s, "tiled": tiled.elapsed_s},
    }


# -- one step's loss and gradient: untiled, tiles with whole-image statistics, tiles with their own ----------


def part_agreement(args: argparse.Namespace) -> dict[str, Any]:
    from pca_attack.attack.memory import memory_model
    from pca_attack.attack.tiling import TiledObjective, TileGrid
    from pca_attack.io.images import decode_image
    from pca_attack.models.encoder import load_encoder

    width, height = parse_sizes(args.agree_size)[0]
    encoder = load_encoder(args.model, device="cpu")
    model = memory_model(encoder)
    x = decode_image(photo_bytes(width, height)).to_tensor()[None]  # (1, 3, H, W)
    grid = TileGrid(height, width, model.factor, args.agree_core, model.halo)
    loss, grad = TiledObjective(encoder).loss_and_grad(x, 1e-8, torch.Generator(), 1.0)
    out: dict[str, Any] = {"size": f"{width}x{height}", "tiles": len(grid), "tile_side": grid.tile_side,
                           "halo": model.halo, "memory_model_bytes_per_pixel": {
                               "step": model.step.per_pixel, "checkpointed_step": model.step_per_pixel(True),
                               "loop_state": model.state_per_pixel, "forward_no_grad": model.forward.per_pixel},
                           "checkpoint_time_ratio": model.checkpoint_time}
    for name in ("whole_image_statistics", "tile_local_statistics"):
        objective = TiledObjective(encoder, grid=grid)
        if name == "tile_local_statistics":
            objective.norm = None
        t0 = time.perf_counter()
        loss_t, grad_t = objective.loss_and_grad(x, 1e-8, torch.Generator(), 1.0)
        cosine = float((grad_t * grad).sum() / (grad_t.norm() * grad.norm()))
        out[name] = {"loss_over_untiled": float(loss_t[0] / loss[0]), "gradient_cosine": cosine,
                     "gradient_sign_agreement": float((grad_t.sign() == grad.sign()).float().mean()),
                     "seconds": time.perf_counter() - t0}
    return out


# -- time per step, bracketed in one process ----------------------------------------------------------


def part_ratio(args: argparse.Namespace) -> dict[str, Any]:
    from pca_attack.attack.config import AttackConfig
    from pca_attack.attack.memory import parse_size
    from pca_attack.attack.pgd import Protector
    from pca_attack.io.images import decode_image
    from pca_attack.pipeline import Engine

    torch.set_num_threads(args.threads)
    sizes = sorted(parse_sizes(args.sizes), key=lambda s: s[0] * s[1])
    small, large = sizes[0], sizes[-1]
    budget = parse_size(args.max_memory) if args.max_memory else None
    engine = Engine.from_spec(args.model, device="cpu", with_decoder=False, max_memory=budget)
    config = AttackConfig(steps=args.steps)
    runs: list[dict[str, Any]] = []
    for width, height in (small, large, small):
        image = decode_image(photo_bytes(width, height), max_pixels=width * height)
        [(_, plan)] = engine.plan([image], config)
        ends: list[float] = []

        def on_step(event: Any, ends: list[float] = ends) -> None:
            if event.end_of_step:
                ends.append(event.elapsed_s)

        x = image.to_tensor()[None]  # (1, 3, H, W)
        Protector(engine.encoder, config).protect(x, tiles=plan.run_grid, progress=on_step)
        steps = np.diff([0.0, *ends]).tolist()
        runs.append({"size": f"{width}x{height}", "plan": plan.describe(), "seconds_per_step": steps,
                     "pixels_read_per_step": plan.grid.pixels_read() if plan.grid else width * height})
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    last = [r["seconds_per_step"][-1] for r in runs]
    ratio = last[1] / ((last[0] + last[2]) / 2)
    return {"runs": runs, "threads": args.threads, "time_ratio_last_step": ratio,
            "pixel_ratio": (large[0] * large[1]) / (small[0] * small[1]),
            "read_ratio": runs[1]["pixels_read_per_step"] / runs[0]["pixels_read_per_step"]}


# -- editor resolution ---------------------------------------------------------------------------------


def part_editor(args: argparse.Namespace) -> dict[str, Any]:
    from pca_attack.attack.config import AttackConfig
    from pca_attack.attack.memory import parse_size
    from pca_attack.io.images import decode_image
    from pca_attack.pipeline import Engine
    from pca_attack.redteam.editor import editor_retention

    width, height = parse_sizes(args.editor_size)[0]
    budget = parse_size(args.max_memory) if args.max_memory else None  # the editor pass is untiled: it may need more
    engine = Engine.from_spec(args.model, device="cpu", with_decoder=False, max_memory=budget)
    clean = decode_image(photo_bytes(width, height), max_pixels=width * height)
    result = editor_retention(engine, [clean], AttackConfig(steps=args.steps_editor), args.editor_long).to_dict()
    kept = {mode: result["modes"][mode]["collapse_kept"] for mode in ("plain", "editor")}
    return {"size": f"{width}x{height}", "editor_long_side": args.editor_long, "steps": args.steps_editor,
            "collapse_kept_after_downscale": kept,  # the ratio: None where the plain attack kept none
            "ratio_editor_over_plain": kept["editor"] / kept["plain"] if kept["plain"] > 0 else None,
            "redteam": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--parts", default="memory,seams,editor")
    parser.add_argument("--sizes", default="4000x3000,1155x866")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--budgets", default="default,1.5GB", help="memory part: 'default' and/or sizes")
    parser.add_argument("--max-memory", help="editor part: the engine's budget (default: the default budget)")
    parser.add_argument("--seam-size", default="1024x768")
    parser.add_argument("--seam-core", type=int, default=384)
    parser.add_argument("--seam-halo", type=int, default=0, help="seams: this halo in px (0: the measured one)")
    parser.add_argument("--seam-steps", type=int, default=10)
    parser.add_argument("--agree-size", default="256x192")
    parser.add_argument("--agree-core", type=int, default=128)
    parser.add_argument("--editor-size", default="2048x1536")
    parser.add_argument("--editor-long", type=int, default=1024)
    parser.add_argument("--steps-editor", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every child and part")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    parts = {"memory": part_memory, "seams": part_seams, "editor": part_editor, "agreement": part_agreement,
             "metrics": part_metrics, "ratio": part_ratio}
    result: dict[str, Any] = {"model": args.model, "command": " ".join(sys.argv)}
    for name in args.parts.split(","):
        t0 = time.perf_counter()
        result[name] = parts[name](args)
        result[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)
    text = json.dumps(public(result), indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
