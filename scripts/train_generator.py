"""Train a fast-mode generator (issue 18) against one model or several (comma list: the ensemble objective).

Deterministic from --seed on the CPU. Writes the weights (safetensors, id = SHA-256 prefix), a JSON summary
with the loss curve, and the loss curve figure. The demo model's shipped generator was made with (one thread;
the same seed and thread count give the same bytes):

    OMP_NUM_THREADS=1 nice -n 10 prlimit --as=8000000000 python scripts/train_generator.py --model demo \
        --steps 1200 --out pca_attack/assets/generators/demo.safetensors \
        --figure docs/figures/generator_demo_loss.png

and TAEF2's (not committed, as TAEF2 itself is not; trained through the attack's own projection, 2x2 windows
per crop as a natural-size photo gets; 32 min on one shared thread):

    OMP_NUM_THREADS=1 nice -n 10 prlimit --as=8000000000 python scripts/train_generator.py \
        --model ../shared/models/taef2 --steps 850 --batch 4 --crop 128 --width 32 --neutral-window 64 \
        --exact-projection --out .cache/generators/taef2.safetensors --figure docs/figures/generator_taef2_loss.png

(weights written in fp16; CPU convolutions may differ in the last bits with another thread count).

Smoke run (the test suite): python scripts/train_generator.py --steps 20 --crop 32 --out /tmp/g.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pca_attack.fast.generator import parameter_count
from pca_attack.fast.train import TrainSettings, train_generator
from pca_attack.fast.weights import model_metadata, save_generator
from pca_attack.models.encoder import load_encoder


def parse() -> argparse.Namespace:
    defaults = TrainSettings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=defaults.model, help="model spec, or a comma list for the ensemble objective")
    for name in ("steps", "batch", "crop", "seed", "width", "blocks", "pattern", "neutral_window"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    p.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate of the network")
    p.add_argument("--pattern-lr", type=float, default=defaults.pattern_lr, help="Adam learning rate of the pattern")
    p.add_argument("--centred", action=argparse.BooleanOptionalAction, default=defaults.centred,
                   help="mean-free logits per channel (the training image is colour-neutral either way)")
    p.add_argument("--exact-projection", action=argparse.BooleanOptionalAction, default=defaults.exact_projection,
                   help="train through the attack's own budget projection (box + 3 alternating mean removals)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (results are bit-exact for one count)")
    p.add_argument("--eps", type=float, default=defaults.eps, help="L-inf budget, 0-255 scale")
    p.add_argument("--out", type=Path, required=True, help="weights file (.safetensors)")
    p.add_argument("--figure", default="", help="loss-curve PNG ('' = none)")
    return p.parse_args()


def plot(curve: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(curve) + 1), curve, lw=0.5, alpha=0.5, label="per step (4 crops)")
    window = max(1, len(curve) // 40)
    smooth = [sum(curve[max(0, i - window + 1) : i + 1]) / len(curve[max(0, i - window + 1) : i + 1])
              for i in range(len(curve))]
    ax.plot(range(1, len(curve) + 1), smooth, lw=1.2, label=f"mean of {window} steps")
    ax.legend()
    ax.set(xlabel="training step", ylabel="collapse loss / clean loss (train crops)", yscale="log", title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    settings = TrainSettings(args.model, args.steps, args.batch, args.crop, args.lr, args.pattern_lr, args.eps,
                             args.seed, args.width, args.blocks, args.centred, args.pattern,
                             args.neutral_window, args.exact_projection)
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss ratio {task.fields[ratio]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(f"training vs {settings.model}", total=settings.steps, ratio=1.0)
        net, curve = train_generator(settings, lambda step, ratio: bar.update(task, completed=step + 1, ratio=ratio))
    first = load_encoder(settings.model.split(",")[0], device="cpu", dtype="float32")  # its probe: check_generator
    meta = {**model_metadata(settings.model, first), "eps": f"{settings.eps:g}", "seed": str(settings.seed),
            "steps": str(settings.steps), "crop": str(settings.crop), "threads": str(args.threads)}
    generator_id = save_generator(net, args.out, meta)
    summary = {"command": "python scripts/train_generator.py " + " ".join(sys.argv[1:]), "generator_id": generator_id,
               "parameters": parameter_count(net), "settings": vars(settings),
               "threads": args.threads,
               "train_seconds": round(time.perf_counter() - start, 1), "loss_ratio_curve": [round(v, 5) for v in curve]}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.figure:
        shown = ",".join(Path(part).name for part in settings.model.split(","))  # folder names, not paths
        plot(curve, Path(args.figure), f"generator vs {shown} ({generator_id})")
    print(json.dumps({k: v for k, v in summary.items() if k != "loss_ratio_curve"}))


if __name__ == "__main__":
    main()
