"""Sizes and measured memory: parse '1.5GB', what the process holds and could get, the peak a call allocates.

On CUDA the peak is ``torch.cuda.max_memory_allocated``; on the CPU the peak of live tensor storage counted by
a ``TorchDispatchMode`` (every tensor an operation returns, forward and backward, until it is freed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pca_attack.errors import ConfigError

DEFAULT_FRACTION = 0.15  # of the memory free at start-up, when no budget is given
# ... and on the CPU at most this much beyond what the process holds: a 12 MP phone photo then runs in tiles
# within ~2.5 GB resident (demo model) while a ~1 MP photo (needs ~2.06 GB with the planner's headroom) stays
# untiled. Larger images simply take more tiles; an explicit --max-memory / PCA_MAX_MEMORY overrides it.
DEFAULT_CPU_CAP = 2_100_000_000
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str | float | int) -> int:
    """'1.5GB', '800M', '2GiB' or a number of bytes -> bytes."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
        unit = match.group(2).lower() if match else "?"
        if match is None or unit not in _UNITS:
            raise ConfigError(f"memory size {text!r} not understood; write e.g. 1.5GB, 800MB or 2GiB")
        value = float(match.group(1)) * _UNITS[unit]
    if not value > 0:
        raise ConfigError(f"memory size must be positive, got {text!r}")
    return int(value)


def format_size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def memory_in_use(device: torch.device) -> int:
    """What the process holds now: resident set on the CPU, allocated tensors on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    import psutil

    return int(psutil.Process().memory_info().rss)


def memory_free(device: torch.device) -> int:
    """Memory the system could still give: available RAM, or free VRAM on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def default_budget(device: torch.device) -> int:
    """What the process may hold in all when no budget is given: now + a safe fraction of what is free,
    on the CPU at most ``DEFAULT_CPU_CAP`` more (VRAM is the device's own: its fraction is not capped)."""
    share = int(DEFAULT_FRACTION * memory_free(device))
    return memory_in_use(device) + (share if device.type == "cuda" else min(share, DEFAULT_CPU_CAP))


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of tensor storage created inside the mode and still alive; remembers the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for item in tree_leaves(out):
            if isinstance(item, torch.Tensor):
                storage = item.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self.live:
                    self.live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        for key in [k for k, (r, _) in self.live.items() if r.expired()]:
            self.current -= self.live.pop(key)[1]
        return out


def measure_peak(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes ``fn`` allocates on ``device`` beyond what was allocated before it."""
    return measure_peak_and_state(fn, device, None)[0]


def measure_peak_and_state(fn: Callable[[], object], device: torch.device, module: nn.Module | None) -> tuple[int, int]:
    """Peak bytes ``fn`` allocates on ``device`` beyond what was allocated before it, and the most it holds at
    any moment ``module`` is called (what is alive beside that module's own activations; 0 without one)."""
    state = [0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)

        def held() -> int:
            return int(torch.cuda.memory_allocated(device) - base)
    else:
        tracker = LiveTensorBytes()

        def held() -> int:
            return tracker.current

    hook = None if module is None else module.register_forward_pre_hook(
        lambda *_: state.__setitem__(0, max(state[0], held())))
    try:
        if device.type == "cuda":
            fn()
            torch.cuda.synchronize(device)
            return int(torch.cuda.max_memory_allocated(device) - base), state[0]
        with tracker:
            fn()
        return tracker.peak, state[0]
    finally:
        if hook is not None:
            hook.remove()


def bound_heap() -> bool:
    """Make glibc give freed large blocks back to the system at once (returns whether it could).

    glibc raises its mmap threshold after a large block is freed, so later large tensors come from a heap
    that never shrinks: the resident size then exceeds the live tensors by hundreds of MB per megapixel
    (TAEF2, 1155x866 under --max-memory 1.5GB: peak RSS 1.73 GB; with this, 1.34 GB; see README). Called when
    an explicit CPU budget is given; it may cost some speed (every block over 64 KiB is mmapped)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS, Windows): nothing to tune
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 64 * 1024)) and bool(mallopt(m_trim_threshold, 0))
