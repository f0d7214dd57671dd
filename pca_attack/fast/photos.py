"""Training and held-out photos (public domain, shipped with scikit-image and scikit-learn) and random crops.

``HELD_OUT`` are never seen in training: the tests and ``benchmarks/fast_mode.py`` evaluate on them.
Crops: a random square of side crop/scale (scale in [0.5, 1]) resized to ``crop``, flipped, brightness /
contrast / saturation jittered, rounded to the 8-bit grid; all draws from one seeded ``torch.Generator``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TRAIN = ("astronaut", "rocket", "camera", "immunohistochemistry", "coins", "moon", "hubble_deep_field",
         "brick", "grass", "gravel", "clock", "horse", "page", "text")
HELD_OUT = ("chelsea", "coffee", "china", "flower")


def load_photo(name: str) -> torch.Tensor:
    """(3, H, W) float in [0, 1] of a scikit-image ``data`` photo or a scikit-learn sample image."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        samples = load_sample_images()
        array = samples.images[[Path(f).stem for f in samples.filenames].index(name)]
    else:
        from skimage import data

        array = getattr(data, name)()
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float() / 255.0


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator))


def _jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter of (3, h, w), each factor in [0.8, 1.2]."""
    x = x * _uniform(generator, 0.8, 1.2)
    mean = x.mean()
    x = (x - mean) * _uniform(generator, 0.8, 1.2) + mean
    gray = x.mean(dim=0, keepdim=True)
    return ((x - gray) * _uniform(generator, 0.8, 1.2) + gray).clamp(0.0, 1.0)


def random_crop(photo: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """One augmented crop (3, crop, crop) on the 8-bit grid from photo (3, H, W)."""
    height, width = photo.shape[-2:]
    side = min(height, width, int(round(crop / _uniform(generator, 0.5, 1.0))))
    top = int(torch.randint(0, height - side + 1, (), generator=generator))
    left = int(torch.randint(0, width - side + 1, (), generator=generator))
    patch = photo[:, top : top + side, left : left + side][None]  # (1, 3, side, side)
    patch = F.interpolate(patch, size=(crop, crop), mode="bilinear", antialias=True, align_corners=False)[0]
    if torch.rand((), generator=generator) < 0.5:
        patch = patch.flip(-1)
    return torch.round(_jitter(patch, generator) * 255.0) / 255.0


def crop_batch(photos: list[torch.Tensor], batch: int, crop: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, 3, crop, crop) augmented crops from photos drawn uniformly."""
    picks = torch.randint(0, len(photos), (batch,), generator=generator).tolist()
    return torch.stack([random_crop(photos[i], crop, generator) for i in picks])


def centre_crop(photo: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central (3, height, width) window of photo (3, H, W) (the whole photo where it is smaller)."""
    h, w = photo.shape[-2:]
    top, left = max(0, (h - height) // 2), max(0, (w - width) // 2)
    return photo[:, top : top + height, left : left + width]
