"""Expectation over transformations (EoT): random, differentiable stand-ins for publishing channels.

``build_eot(name)`` returns ``transform(x, generator) -> x'`` for a (B, 3, H, W) batch in [0, 1]; the
attack averages its loss over a few calls per PGD step so that the perturbation survives what a
platform does to an upload (JPEG re-encoding, downscaling, blur, noise). Every random draw comes from
the CPU ``torch.Generator`` passed in, so a fixed seed gives the same transformations.

The differentiable JPEG follows the codec: full-range YCbCr, 4:2:0 chroma subsampling (as PIL's
default), 8x8 block DCT-II, quantisation with the libjpeg quality-scaled Annex K tables, inverse.
Rounding of the quantised coefficients is ``"ste"`` (exact rounding forward, identity backward:
BPDA) or ``"cubic"`` (round(x) + (x - round(x))^3, Shin & Song 2017), both differentiable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from pca_attack.attack.eot_filters import RandomCleaner
from pca_attack.attack.eot_names import EOT_DESCRIPTIONS
from pca_attack.attack.lowpass import gaussian_kernel
from pca_attack.errors import ConfigError

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# JPEG Annex K tables (quality 50), row-major 8x8.
_LUMA_Q50 = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip
_CHROMA_Q50 = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
]  # fmt: skip


# -- building blocks ---------------------------------------------------------------------------------


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One draw from U[low, high] taken from ``generator``."""
    return low + (high - low) * float(torch.rand((), generator=generator))


def quant_table(quality: int, chroma: bool) -> torch.Tensor:
    """libjpeg's quality-scaled quantisation table (8, 8) float32 for quality in 1..100."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 / q if q < 50 else 200 - 2 * q
    base = torch.tensor(_CHROMA_Q50 if chroma else _LUMA_Q50, dtype=torch.float32).view(8, 8)
    return torch.clamp(torch.floor((base * scale + 50) / 100), 1, 255)


@lru_cache(maxsize=4)
def _dct_matrix(n: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II matrix (n, n): coefficients = D @ block @ D.T."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def diff_round(x: torch.Tensor, mode: str = "ste") -> torch.Tensor:
    """Differentiable rounding: 'ste' (exact forward, identity gradient) or 'cubic' (smooth)."""
    r = torch.round(x)
    if mode == "ste":
        return x + (r - x).detach()
    if mode == "cubic":
        return r.detach() + (x - r.detach()) ** 3
    raise ConfigError(f"unknown rounding {mode!r}; use 'ste' or 'cubic'")


def _blockwise_quantise(plane: torch.Tensor, table: torch.Tensor, rounding: str) -> torch.Tensor:
    """DCT -> quantise -> dequantise -> IDCT of a (B, H, W) plane (H, W multiples of 8, values -128..127)."""
    b, h, w = plane.shape
    d = _dct_matrix().to(plane.device, plane.dtype)  # (8, 8)
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)  # (B, h/8, w/8, 8, 8)
    coef = d @ blocks @ d.T  # (B, h/8, w/8, 8, 8)
    t = table.to(plane.device, plane.dtype)  # (8, 8)
    coef = diff_round(coef / t, rounding) * t
    blocks = d.T @ coef @ d  # (B, h/8, w/8, 8, 8)
    return blocks.permute(0, 1, 3, 2, 4).reshape(b, h, w)


def diff_jpeg(x: torch.Tensor, quality: int, rounding: str = "ste", subsample: bool = True) -> torch.Tensor:
    """Differentiable JPEG of (B, 3, H, W) in [0, 1] at ``quality``; same shape, in [0, 1]."""
    h, w = x.shape[-2:]
    mult = 16 if subsample else 8
    pad_h, pad_w = (-h) % mult, (-w) % mult
    xp = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") * 255.0  # (B, 3, Hp, Wp)
    r, g, b = xp[:, 0], xp[:, 1], xp[:, 2]  # each (B, Hp, Wp)
    y = 0.299 * r + 0.587 * g + 0.114 * b - 128.0
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    chroma = torch.stack([cb, cr], dim=1)  # (B, 2, Hp, Wp)
    if subsample:
        chroma = F.avg_pool2d(chroma, 2)  # (B, 2, Hp/2, Wp/2)
    y = _blockwise_quantise(y, quant_table(quality, chroma=False), rounding)
    ct = quant_table(quality, chroma=True)
    chroma = torch.stack(
        [_blockwise_quantise(chroma[:, c], ct, rounding) for c in range(2)], dim=1
    )  # (B, 2, h', w')
    if subsample:
        chroma = F.interpolate(chroma, scale_factor=2.0, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0], chroma[:, 1]  # each (B, Hp, Wp)
    y = y + 128.0
    rgb = torch.stack(
        [y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1
    )  # (B, 3, Hp, Wp)
    return (rgb[..., :h, :w] / 255.0).clamp(0.0, 1.0)


def resize_round_trip(x: torch.Tensor, scale: float, mode: str = "bilinear") -> torch.Tensor:
    """Downscale (B, 3, H, W) by ``scale`` (antialiased) and back to (H, W)."""
    h, w = x.shape[-2:]
    size = (max(8, round(h * scale)), max(8, round(w * scale)))
    small = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode=mode, align_corners=False).clamp(0.0, 1.0)


def downscaled(height: int, width: int, long_side: int | None) -> bool:
    """True when an editor working at ``long_side`` px (None: none) downscales a (height, width) image: the one
    test of whether the editor-resolution term, its plan, its certificate field and its red-team row apply."""
    return long_side is not None and max(height, width) > long_side


def editor_sizes(long_side: int, spread: float = 0.0, count: int = 5) -> tuple[int, ...]:
    """The editor's long sides the editor-resolution term is attacked at: ``long_side`` alone (spread 0), or
    ``count`` sizes spaced evenly in log scale from ``long_side / (1 + spread)`` to ``long_side * (1 + spread)``,
    ascending (an editor's working size is not known exactly: 1 MP is 1024 px long for a square photo, 1182 px
    for a 4:3 one)."""
    if spread == 0:
        return (long_side,)
    half = count // 2
    return tuple(sorted({max(8, round(long_side * (1 + spread) ** (k / half))) for k in range(-half, half + 1)}))


def resize_long_side(x: torch.Tensor, long_side: int, mode: str = "bilinear") -> torch.Tensor:
    """Differentiable downscale of (B, 3, H, W) so its long side is ``long_side`` (antialiased, as editors
    do before encoding); images already that small are returned as they are."""
    h, w = x.shape[-2:]
    if not downscaled(h, w, long_side):
        return x
    scale = long_side / max(h, w)
    size = (max(8, round(h * scale)), max(8, round(w * scale)))
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding; same shape."""
    k = gaussian_kernel(sigma, x.device, x.dtype)  # (2r+1,)
    radius, c = k.numel() // 2, x.shape[1]
    pad_mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    xp = F.pad(x, (radius, radius, radius, radius), mode=pad_mode)
    xp = F.conv2d(xp, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(xp, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


# -- random transformations --------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomJPEG:
    """JPEG with a quality drawn uniformly (integer) from [low, high]."""

    low: int
    high: int
    rounding: str = "ste"

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        q = int(torch.randint(self.low, self.high + 1, (), generator=generator))
        return diff_jpeg(x, q, self.rounding)


@dataclass(frozen=True)
class RandomResize:
    """Downscale by a factor drawn from [low, high] and back up (bilinear or bicubic)."""

    low: float
    high: float
    mode: str = "bilinear"

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return resize_round_trip(x, _uniform(generator, self.low, self.high), self.mode)


@dataclass(frozen=True)
class RandomBlur:
    """Gaussian blur with sigma drawn from [low, high] (pixels)."""

    low: float
    high: float

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return gaussian_blur(x, _uniform(generator, self.low, self.high))


@dataclass(frozen=True)
class RandomNoise:
    """Additive Gaussian noise with a std drawn from [low, high] on the 0-255 scale."""

    low: float
    high: float

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        std = _uniform(generator, self.low, self.high) / 255.0
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)  # (B, 3, H, W)
        return (x + std * noise).clamp(0.0, 1.0)


@dataclass(frozen=True)
class RandomShift:
    """The content moved down and right by a whole number of pixels drawn from [0, high] per axis (the top rows
    and left columns repeated, the bottom and right ones dropped): against the encoder's grid, what an editor's
    free crop does (the red team's ``crop-N``). Same shape."""

    high: int

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        dy, dx = (int(v) for v in torch.randint(self.high + 1, (2,), generator=generator))
        height, width = x.shape[-2:]
        return F.pad(x, (dx, 0, dy, 0), mode="replicate")[..., :height, :width]  # (B, 3, H, W)


@dataclass(frozen=True)
class Chain:
    """Apply transformations in order."""

    steps: tuple[Transform, ...]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            x = step(x, generator)
        return x


@dataclass(frozen=True)
class OneOf:
    """Pick one transformation per call (uniformly); ``None`` stands for the identity."""

    choices: tuple[Transform | None, ...]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pick = self.choices[int(torch.randint(len(self.choices), (), generator=generator))]
        return x if pick is None else pick(x, generator)


def _social() -> Transform:
    return Chain((RandomResize(0.5, 0.9), RandomJPEG(75, 90)))


_FACTORIES: dict[str, Callable[[], Transform]] = {  # one per name of ``eot_names.EOT_DESCRIPTIONS``
    "web-jpeg-85": lambda: RandomJPEG(80, 90),
    "jpeg-75": lambda: RandomJPEG(70, 80),
    # cubic rounding: on TAEF2 (2 photos, 128x192, 40 steps) the damage kept after a real JPEG q75 rose from
    # 1.09x to 1.20x the plain attack's (straight-through: jpeg-75); on the demo VAE it kept less drift
    "jpeg-75-cubic": lambda: RandomJPEG(70, 80, "cubic"),
    "jpeg-50": lambda: RandomJPEG(45, 60),
    "social-resize": _social,
    "resize": lambda: RandomResize(0.5, 0.9),
    "blur": lambda: RandomBlur(0.5, 1.5),
    "noise": lambda: RandomNoise(2.0, 8.0),
    # on TAEF2 (chelsea, coffee, natural size, 40 steps): 1.30x the plain attack's damage after the red team's
    # cleaner, 0.75x on the lossless image (benchmarks/eot_channels.py); a noise-or-cleaner mix gained nothing
    "cleaner": RandomCleaner,
    "shift": lambda: RandomShift(7),
    "mixed": lambda: OneOf((None, RandomJPEG(50, 95), _social(), RandomBlur(0.5, 1.5), RandomNoise(2.0, 8.0))),
}
# name -> (factory, description), in the order of EOT_DESCRIPTIONS
EOT_PRESETS: dict[str, tuple[Callable[[], Transform], str]] = {
    name: (_FACTORIES[name], description) for name, description in EOT_DESCRIPTIONS.items()
}


def eot_names() -> Sequence[str]:
    """Known preset names."""
    return list(EOT_DESCRIPTIONS)


def build_eot(name: str) -> Transform:
    """The random differentiable transformation of preset ``name`` (see ``EOT_PRESETS``)."""
    try:
        factory, _ = EOT_PRESETS[name]
    except KeyError:
        known = ", ".join(EOT_PRESETS)
        raise ConfigError(f"unknown EoT preset {name!r}; choose one of: {known}") from None
    return factory()


__all__ = [
    "EOT_PRESETS",
    "Transform",
    "build_eot",
    "diff_jpeg",
    "diff_round",
    "eot_names",
    "gaussian_blur",
    "quant_table",
    "resize_long_side",
    "resize_round_trip",
]
