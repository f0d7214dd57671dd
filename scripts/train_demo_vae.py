"""Train the bundled *demo* KL-VAE (a small diffusers ``AutoencoderKL``).

The demo model exists so that the Posterior Collapse Attack can be exercised and measured
offline: its posterior is real (trained with a small KL weight, like Stable Diffusion's VAE) and
its decoder reconstructs photos.  It is NOT a substitute for a real latent-diffusion VAE and
protecting an image against it does not protect against real diffusion models.

Layout: Stable-Diffusion style f8 autoencoder (4 ``DownEncoderBlock2D`` / ``UpDecoderBlock2D``
blocks -> 3 downsamplings), 4 latent channels, a mid-block with self-attention, but much
narrower (``--widths``) and with one resnet per block, so the weights are a few MB.

Data: only images that already ship inside the installed packages (no download).  The training
set is the public-domain / CC0 photographs in ``skimage/data`` (grayscale ones replicated to RGB).
Held out (never trained on): ``chelsea`` (CC0, scikit-image) and scikit-learn's ``flower.jpg`` and
``china.jpg`` (CC BY 2.0, used for evaluation only).

Determinism: fixed seeds, ``torch.use_deterministic_algorithms(True)``, a fixed thread count and
a NumPy ``Generator`` for every augmentation decision; two runs with the same arguments on the
same machine/software produce bit-identical weights.

Example (the command that produced the shipped weights)::

    python scripts/train_demo_vae.py --out pca_attack/assets/demo_vae \
        --steps 450 --crop 64 --batch 4 --threads 1 --seed 0

(The defaults, 700 steps of 8 x 96 px crops on 2 threads, are a larger budget that was not run.)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage
import torch
from PIL import Image

#: Colour photographs in ``skimage/data`` with a stated public-domain / CC0 / no-known-restriction
#: licence (see the docstrings of the ``skimage.data`` loaders).
TRAIN_COLOUR: tuple[str, ...] = (
    "astronaut.png",  # NASA, public domain
    "coffee.png",  # CC0 (Rachel Michetti)
    "rocket.jpg",  # SpaceX, public domain
    "hubble_deep_field.jpg",  # NASA, public domain
    "retina.jpg",  # CC0 1.0
    "ihc.png",  # no known copyright restrictions
)
#: Grayscale photographs / textures (replicated to RGB) with the same kind of licence.
TRAIN_GRAY: tuple[str, ...] = (
    "camera.png",  # CC0 (Lav Varshney)
    "brick.png",  # CC0 (CC0Textures)
    "grass.png",  # CC0
    "gravel.png",  # CC0 (CC0Textures)
    "cell.png",  # CC0
    "coins.png",  # no known copyright restrictions (Brooklyn Museum)
    "clock_motion.png",  # public domain (Stefan van der Walt)
    "text.png",  # public domain
)
#: Held-out evaluation images: ``(package, file name)``.
HOLDOUT: tuple[tuple[str, str], ...] = (
    ("skimage", "chelsea.png"),  # CC0 (Stefan van der Walt)
    ("sklearn", "flower.jpg"),  # CC BY 2.0 -- evaluation only
    ("sklearn", "china.jpg"),  # CC BY 2.0 -- evaluation only
)


def skimage_data_dir() -> Path:
    """Directory of the images bundled with scikit-image."""
    return Path(skimage.__file__).resolve().parent / "data"


def sklearn_images_dir() -> Path:
    """Directory of scikit-learn's sample images (``load_sample_images``)."""
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).resolve().parent / "images"


def load_rgb(path: Path) -> np.ndarray:
    """Load an image file as an ``(H, W, 3)`` uint8 RGB array (gray is replicated)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def load_training_images() -> list[tuple[str, np.ndarray, bool]]:
    """Return ``(name, rgb uint8 array, is_colour)`` for every training image."""
    root = skimage_data_dir()
    out = [(n, load_rgb(root / n), True) for n in TRAIN_COLOUR]
    out += [(n, load_rgb(root / n), False) for n in TRAIN_GRAY]
    return out


def load_holdout_images() -> list[tuple[str, np.ndarray]]:
    """Return ``(name, rgb uint8 array)`` for the held-out evaluation images."""
    dirs = {"skimage": skimage_data_dir(), "sklearn": sklearn_images_dir()}
    return [(f"{pkg}:{name}", load_rgb(dirs[pkg] / name)) for pkg, name in HOLDOUT]


def build_model(widths: tuple[int, ...], groups: int) -> torch.nn.Module:
    """An SD-layout ``AutoencoderKL`` (f8, 4 latent channels) with the given block widths."""
    from diffusers import AutoencoderKL

    n = len(widths)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=widths,
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=groups,
        sample_size=256,
        scaling_factor=1.0,
    )


@dataclass
class Sampler:
    """Random-crop / rescale / flip / channel-permutation batch sampler (NumPy RNG driven)."""

    images: list[tuple[str, np.ndarray, bool]]
    crop: int
    batch: int
    rng: np.random.Generator
    min_scale: float = 0.25
    colour_weight: float = 2.0
    permute_prob: float = 0.2

    def __post_init__(self) -> None:
        w = np.array([self.colour_weight if c else 1.0 for _, _, c in self.images])
        self.p = w / w.sum()

    def one(self) -> np.ndarray:
        """One ``(crop, crop, 3)`` float32 sample in [-1, 1]."""
        idx = int(self.rng.choice(len(self.images), p=self.p))
        _, arr, colour = self.images[idx]
        h, w = arr.shape[:2]
        # Downscale factor s: the crop covers crop/s source pixels (s=1 -> native resolution).
        s_min = max(self.min_scale, self.crop / min(h, w))
        s = float(math.exp(self.rng.uniform(math.log(s_min), 0.0)))
        side = self.crop / s
        x0 = float(self.rng.uniform(0.0, w - side))
        y0 = float(self.rng.uniform(0.0, h - side))
        img = Image.fromarray(arr).resize(
            (self.crop, self.crop), Image.Resampling.BICUBIC, box=(x0, y0, x0 + side, y0 + side)
        )
        out = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
        if self.rng.random() < 0.5:
            out = out[:, ::-1]
        if colour and self.rng.random() < self.permute_prob:
            out = out[:, :, self.rng.permutation(3)]
        return out

    def next(self) -> torch.Tensor:
        """A ``(batch, 3, crop, crop)`` tensor."""
        batch = np.stack([self.one() for _ in range(self.batch)])
        return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def seed_everything(seed: int, threads: int) -> None:
    """Fix every RNG and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def pad8(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Reflect-pad a ``(B, C, H, W)`` tensor so H and W are multiples of 8."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
    return x, h, w


@torch.no_grad()
def latent_std(model: torch.nn.Module, images: list[np.ndarray], max_side: int = 768) -> float:
    """Std of posterior means over ``images`` (each at natural size, capped at ``max_side``)."""
    vals = []
    for arr in images:
        im = Image.fromarray(arr)
        if max(im.size) > max_side:
            k = max_side / max(im.size)
            im = im.resize((round(im.size[0] * k), round(im.size[1] * k)), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        x, _, _ = pad8(x)
        vals.append(model.encode(x).latent_dist.mean.flatten())
    return float(torch.cat(vals).std())


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5 % of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t)))


def save(model: torch.nn.Module, out: Path, dtype: str, train_images: list[np.ndarray]) -> float:
    """Set ``scaling_factor`` = 1/std(latents) and write the ``save_pretrained`` layout."""
    model.eval()
    std = latent_std(model, train_images)
    model.register_to_config(scaling_factor=round(1.0 / std, 5))
    out.mkdir(parents=True, exist_ok=True)
    to_save = copy.deepcopy(model).half() if dtype == "fp16" else model  # keep fp32 master weights
    to_save.save_pretrained(out, safe_serialization=True)
    model.train()
    return std


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (all have defaults)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("pca_attack/assets/demo_vae"), help="output folder")
    p.add_argument("--steps", type=int, default=700, help="optimisation steps")
    p.add_argument("--seed", type=int, default=0, help="seed for every RNG")
    p.add_argument("--crop", type=int, default=96, help="training crop size (multiple of 8)")
    p.add_argument("--batch", type=int, default=8, help="batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate")
    p.add_argument("--warmup", type=int, default=30, help="linear warm-up steps")
    p.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the per-element mean KL")
    p.add_argument("--logvar-init", type=float, default=-4.0, help="initial posterior log-variance bias")
    p.add_argument("--mse-weight", type=float, default=1.0, help="weight of MSE next to L1")
    p.add_argument("--widths", type=str, default="32,64,128,128", help="block_out_channels")
    p.add_argument("--groups", type=int, default=16, help="GroupNorm groups (must divide widths)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="dtype of saved weights")
    p.add_argument("--save-every", type=int, default=0, help="also save every N steps (0: only at the end)")
    p.add_argument("--log-every", type=int, default=25, help="print a log line every N steps")
    args = p.parse_args(argv)
    if args.crop % 8:
        p.error("--crop must be a multiple of 8")
    return args


def main(argv: list[str] | None = None) -> None:
    """Train and save the demo VAE."""
    args = parse_args(argv)
    seed_everything(args.seed, args.threads)
    widths = tuple(int(w) for w in args.widths.split(","))
    model = build_model(widths, args.groups).float().train()
    with torch.no_grad():  # start from a nearly deterministic posterior; the KL term then sets its width
        model.quant_conv.bias[4:].fill_(args.logvar_init)
    n_params = sum(p.numel() for p in model.parameters())
    train = load_training_images()
    sampler = Sampler(train, args.crop, args.batch, np.random.default_rng(args.seed))
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    info = {"params": n_params, "widths": widths, "train_images": [n for n, _, _ in train]}
    print(json.dumps(info), flush=True)

    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        x = sampler.next()
        post = model.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        y = model.decode(z).sample
        l1 = (y - x).abs().mean()
        mse = (y - x).pow(2).mean()
        kl = post.kl().mean() / post.mean[0].numel()  # per latent element
        loss = l1 + args.mse_weight * mse + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-12))
            rec = {"step": step, "loss": round(loss.item(), 5), "l1": round(l1.item(), 5)}
            rec |= {"psnr": round(psnr, 2), "kl": round(kl.item(), 4)}
            rec["logvar"] = round(post.logvar.mean().item(), 3)
            rec["elapsed_s"] = round(time.time() - t0, 1)
            print(json.dumps(rec), flush=True)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            save(model, args.out, args.dtype, [a for _, a, _ in train])
    std = save(model, args.out, args.dtype, [a for _, a, _ in train])
    size = os.path.getsize(args.out / "diffusion_pytorch_model.safetensors")
    done = {"done": True, "train_time_s": round(time.time() - t0, 1), "latent_std": std, "file_bytes": size}
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    main()
