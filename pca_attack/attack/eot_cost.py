"""What an EoT transform adds to each draw of a step: the bytes its graph keeps for the backward, and its time.

Both are in proportion to the pixels the transform reads (a tile's, or the whole image's when untiled), so the
planner adds them to the encoder step's bytes and seconds per pixel (``loop_memory.for_config``), and both are
measured once per preset and process:

* bytes: what the transform saves for the backward, counted with ``torch.autograd.graph.saved_tensors_hooks``
  (each storage once; the input itself not counted: the step holds it anyway), the largest over a few draws
  since presets draw their strength: 12-44 bytes per pixel for the codec, resize, blur and noise presets, about
  220 for ``cleaner`` (checkpointed bilateral passes), against about 2000 for TAEF2's step. One draw's graph is
  alive at a time whatever ``eot_samples`` is (``TiledObjective._tile``).
* seconds: the mean forward + backward of 3 draws at 256 x 256 on the encoder's device, after a warm-up: negligible
  for the codecs; for ``cleaner`` about 5 us per pixel on 2 CPU threads, which took a 40-step TAEF2 attack of a
  451x300 photo from ~46 s to ~63 s planned (48 s and 65 s measured, wall time with imports).
"""

from __future__ import annotations

import functools
import time

import torch

BYTES_PROBE_SIDE = 64  # pixels per side of the image the saved bytes are measured on
BYTES_PROBE_DRAWS = 8  # draws measured (the largest graph counts)
TIME_PROBE_SIDE = 256  # pixels per side of the timed draws (large enough that per-op overhead is small)
TIME_PROBE_DRAWS = 3  # draws timed, averaged (presets draw their strength)


@functools.lru_cache(maxsize=32)
def transform_bytes_per_pixel(eot: str | None) -> float:
    """Bytes per input pixel an EoT draw keeps for the backward beside the encoder's graph (0 without EoT)."""
    if eot is None:
        return 0.0
    from pca_attack.attack.eot import build_eot

    transform = build_eot(eot)
    x = torch.rand(1, 3, BYTES_PROBE_SIDE, BYTES_PROBE_SIDE).requires_grad_()  # (1, 3, S, S)
    largest = 0
    for seed in range(BYTES_PROBE_DRAWS):
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor, storages: dict[int, int] = storages) -> torch.Tensor:
            if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()  # views share one storage
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            transform(x, torch.Generator().manual_seed(seed))
        largest = max(largest, sum(storages.values()))
    return largest / BYTES_PROBE_SIDE**2


@functools.lru_cache(maxsize=32)
def transform_seconds_per_pixel(eot: str | None, device: str = "cpu") -> float:
    """Seconds per input pixel of one EoT draw's forward + backward on ``device`` (0 without EoT)."""
    if eot is None:
        return 0.0
    from pca_attack.attack.eot import build_eot

    transform = build_eot(eot)
    generator = torch.Generator().manual_seed(0)
    warm = torch.rand(1, 3, BYTES_PROBE_SIDE, BYTES_PROBE_SIDE, device=device).requires_grad_()  # (1, 3, s, s)
    transform(warm, generator).sum().backward()
    x = torch.rand(1, 3, TIME_PROBE_SIDE, TIME_PROBE_SIDE, device=device).requires_grad_()  # (1, 3, S, S)
    _sync(device)
    start = time.perf_counter()
    for _ in range(TIME_PROBE_DRAWS):
        transform(x, generator).sum().backward()
    _sync(device)
    return (time.perf_counter() - start) / TIME_PROBE_DRAWS / TIME_PROBE_SIDE**2


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


__all__ = ["transform_bytes_per_pixel", "transform_seconds_per_pixel"]
