"""Publishing channels and purifiers a protected image meets: real, non-differentiable, deterministic for a seed.

PIL codecs and filters, skimage's bilateral filter, a numpy guided filter and an IMPRESS-style VAE purification.
Each maps (B, 3, H, W) in [0, 1] to the same shape on the uint8 grid, except ``editor-N`` (the downscale to
N px on the long side an editor applies first) and ``crop-N`` (N px cut off the top and left edges, which moves
the content against the encoder's grid as an editor's free crop does): smaller, on purpose.
``pca_attack.attack.eot`` holds their differentiable stand-ins used *during* the attack;
``pca_attack.redteam.report`` measures what survives them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from pca_attack.errors import ConfigError
from pca_attack.models.encoder import Decoder, Encoder

# -- real transformations ----------------------------------------------------------------------------


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8 by rounding."""
    return np.round(x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)


def _from_uint8(a: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _per_image(x: torch.Tensor, fn: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Apply an (H, W, 3) uint8 -> uint8 function to every image of (B, 3, H, W)."""
    out = [_from_uint8(fn(_to_uint8(img))) for img in x]
    return torch.stack(out).to(x.device)  # (B, 3, H, W)


def _codec(a: np.ndarray, fmt: str, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format=fmt, quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """PIL JPEG (default 4:2:0 subsampling) at ``quality``, decoded again. (B, 3, H, W) -> same."""
    return _per_image(x, lambda a: _codec(a, "JPEG", quality))


def webp(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Lossy WebP at ``quality``, decoded again."""
    return _per_image(x, lambda a: _codec(a, "WEBP", quality))


def rescale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bicubic (antialiased) downscale by ``factor`` and bicubic back to the original size."""

    def fn(a: np.ndarray) -> np.ndarray:
        h, w = a.shape[:2]
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        small = Image.fromarray(a).resize(size, Image.Resampling.BICUBIC)
        return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC))

    return _per_image(x, fn)


def editor_resize(x: torch.Tensor, long_side: int) -> torch.Tensor:
    """What an editor does first with a large photo: a Lanczos downscale to ``long_side`` px on the long side
    (never an upscale; the result is smaller than the input, not resized back). (B, 3, H, W) -> (B, 3, h, w)."""
    height, width = x.shape[-2:]
    if max(height, width) <= long_side:
        return x.clone()
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return _per_image(x, lambda a: np.asarray(Image.fromarray(a).resize(size, Image.Resampling.LANCZOS)))


def crop_top_left(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Cut ``pixels`` rows off the top and columns off the left: the content moves by that much against the
    encoder's grid (a crop at a multiple of the encoder's factor would not move it). (B, 3, H, W) ->
    (B, 3, H - pixels, W - pixels)."""
    height, width = x.shape[-2:]
    if pixels >= min(height, width) - 7:
        raise ConfigError(f"crop-{pixels} leaves less than 8 px of a {width}x{height} image; crop fewer pixels")
    return x[..., pixels:, pixels:].clone()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """PIL Gaussian blur (radius = standard deviation in pixels)."""
    return _per_image(x, lambda a: np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(sigma))))


def noise(x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """Additive Gaussian noise of ``std`` on the 0-255 scale (numpy generator seeded by ``seed``)."""
    rng = np.random.default_rng(seed)
    n = torch.from_numpy(rng.standard_normal(tuple(x.shape)).astype(np.float32)).to(x.device)
    return torch.round(((x + n * std / 255.0).clamp(0, 1)) * 255) / 255  # (B, 3, H, W)


def _box(a: np.ndarray, r: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    size = (2 * r + 1, 2 * r + 1) + (1,) * (a.ndim - 2)
    return np.asarray(uniform_filter(a, size=size, mode="reflect"))


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter, per channel with a gray guide. guide (H, W), src (H, W, 3) in [0, 1]."""
    g = guide[..., None]  # (H, W, 1)
    mean_g, mean_s = _box(g, r), _box(src, r)
    cov = _box(g * src, r) - mean_g * mean_s
    var = _box(g * g, r) - mean_g**2
    a = cov / (var + eps)
    b = mean_s - a * mean_g
    return np.asarray(_box(a, r) * g + _box(b, r))  # (H, W, 3)


def cleaner(x: torch.Tensor, iterations: int = 4) -> torch.Tensor:
    """AdverseCleaner-style: repeated bilateral filtering, then a guided filter steered by the input."""
    from skimage.restoration import denoise_bilateral

    def fn(a: np.ndarray) -> np.ndarray:
        src = a.astype(np.float64) / 255.0  # (H, W, 3)
        y = src
        for _ in range(iterations):
            y = denoise_bilateral(y, win_size=5, sigma_color=0.05, sigma_spatial=2.0, channel_axis=-1)
        gray = src @ np.array([0.299, 0.587, 0.114])  # (H, W)
        out = guided_filter(gray, y, r=4, eps=16.0 / 255.0**2)
        return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)

    return _per_image(x, fn)


def purify(
    x: torch.Tensor,
    encoder: Encoder,
    decoder: Decoder,
    steps: int = 20,
    lr: float = 0.01,
    budget: float = 16.0,
    weight: float = 10.0,
) -> torch.Tensor:
    """IMPRESS-style VAE purification (Cao et al. 2023), with an MSE stand-in for LPIPS.

    Adam on x' (start: x) minimising mean((D(E(x')) - x')^2) + weight * mean((x' - x)^2), with x'
    kept in an Linf ball of ``budget``/255 around x and in [0, 1]; ``steps`` bounds the cost.
    """
    x = x.detach().float().to(encoder.device)  # (B, 3, H, W)
    h, w = x.shape[-2:]
    eps = budget / 255.0
    xp = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([xp], lr=lr)
    for _ in range(steps):
        mean, _ = encoder.posterior(xp)  # (B, C, h', w')
        recon = decoder(mean)[..., :h, :w].float()  # (B, 3, H, W)
        loss = (recon - xp).pow(2).mean() + weight * (xp - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            xp.copy_(torch.minimum(torch.maximum(xp, x - eps), x + eps).clamp(0, 1))
    return (torch.round(xp.detach() * 255) / 255).cpu()


@dataclass(frozen=True)
class Context:
    """What a transformation may use besides the pixels."""

    seed: int
    encoder: Encoder | None = None
    decoder: Decoder | None = None
    purify_steps: int = 20  # Adam steps of the VAE purification


@dataclass(frozen=True)
class Transformation:
    """A named publishing channel or purification."""

    name: str
    description: str
    fn: Callable[[torch.Tensor, Context], torch.Tensor]  # (B, 3, H, W) -> (B, 3, H, W)
    needs_decoder: bool = False
    # True for an attack on the protection (purification): the attacker runs it on the protected image only,
    # so its result is compared with the clean image as published, not with the clean image run through it
    protected_only: bool = False

    def __call__(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return self.fn(x, ctx)


def _purify(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.encoder is None or ctx.decoder is None:
        raise ConfigError("purification needs a model with a decoder")
    return purify(x, ctx.encoder, ctx.decoder, steps=ctx.purify_steps)


EDITOR_PREFIX = "editor-"  # editor-N: built on demand for any N (not in the default list: small images are
# left as they are by it)
CROP_PREFIX = "crop-"  # crop-N: built on demand for any N >= 1 (crop-4 is half of an f8 encoder's grid)


def editor_transformation(long_side: int) -> Transformation:
    """``editor-N``: the downscale to N px on the long side an editor applies before encoding."""
    return Transformation(f"{EDITOR_PREFIX}{long_side}",
                          f"Lanczos downscale to {long_side} px on the long side (an editor's working size)",
                          lambda x, c: editor_resize(x, long_side))


def crop_transformation(pixels: int) -> Transformation:
    """``crop-N``: N px cut off the top and left edges (the content shifted against the encoder's grid)."""
    return Transformation(f"{CROP_PREFIX}{pixels}",
                          f"crop {pixels} px off the top and left edges (shifts the content against the grid)",
                          lambda x, c: crop_top_left(x, pixels))


# prefix -> (smallest N, builder): the transformations made on demand for any N
ON_DEMAND: dict[str, tuple[int, Callable[[int], Transformation]]] = {
    EDITOR_PREFIX: (8, editor_transformation),
    CROP_PREFIX: (1, crop_transformation),
}


TRANSFORMS: dict[str, Transformation] = {
    t.name: t
    for t in (
        Transformation("none", "as protected (lossless PNG)", lambda x, c: x.clone()),
        Transformation("jpeg-95", "JPEG quality 95", lambda x, c: jpeg(x, 95)),
        Transformation("jpeg-75", "JPEG quality 75", lambda x, c: jpeg(x, 75)),
        Transformation("jpeg-50", "JPEG quality 50", lambda x, c: jpeg(x, 50)),
        Transformation("webp-80", "WebP quality 80", lambda x, c: webp(x, 80)),
        Transformation("resize-0.5", "bicubic downscale 0.5x and back", lambda x, c: rescale(x, 0.5)),
        Transformation("blur-1", "Gaussian blur, sigma 1 px", lambda x, c: blur(x, 1.0)),
        Transformation("noise-8", "Gaussian noise, std 8/255", lambda x, c: noise(x, 8.0, c.seed)),
        Transformation("cleaner", "4x bilateral + guided filter (AdverseCleaner-style)",
                       lambda x, c: cleaner(x)),
        Transformation("purify", "IMPRESS-style VAE purification (bounded Adam steps)", _purify,
                       needs_decoder=True, protected_only=True),
    )
}


def transform_names() -> list[str]:
    """Names accepted by ``redteam(transforms=...)``."""
    return list(TRANSFORMS)


def get_transform(name: str) -> Transformation:
    """The named transformation: a listed one, ``editor-N`` (N >= 8) or ``crop-N`` (N >= 1)."""
    if name in TRANSFORMS:
        return TRANSFORMS[name]
    for prefix, (smallest, build) in ON_DEMAND.items():
        number = name.removeprefix(prefix)
        if name.startswith(prefix) and number.isdigit() and int(number) >= smallest:
            return build(int(number))
    raise ConfigError(f"unknown transformation {name!r}; choose from: {', '.join(TRANSFORMS)} "
                      "(or editor-N for N >= 8, crop-N for N >= 1)")


def apply_transform(name: str, x: torch.Tensor, seed: int = 0, encoder: Encoder | None = None,
                    decoder: Decoder | None = None, purify_steps: int = 20) -> torch.Tensor:
    """Apply the named transformation to (B, 3, H, W) in [0, 1] (editor-N and crop-N return a smaller image)."""
    return get_transform(name)(x, Context(seed, encoder, decoder, purify_steps))


