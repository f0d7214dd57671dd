"""Device and dtype resolution: say what was chosen, fail loudly when an explicit request cannot be met."""

from __future__ import annotations

import logging

import torch

from pca_attack.errors import ConfigError, DeviceUnavailableError

log = logging.getLogger("pca_attack")

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def mps_available() -> bool:
    """True when Apple's Metal backend is usable in this process."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' into a torch.device.

    'auto' prefers CUDA, then MPS, then CPU, and logs the choice. An explicit 'cuda'/'mps' that is not
    available raises DeviceUnavailableError instead of silently falling back to the CPU.
    """
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            chosen = torch.device("cuda")
        elif mps_available():
            chosen = torch.device("mps")
        else:
            chosen = torch.device("cpu")
        log.info("device 'auto' resolved to %s", chosen)
        return chosen
    try:
        chosen = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                "device 'cuda' was requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}). "
                "Install a CUDA build of torch and check the driver, or pass --device cpu / auto."
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif chosen.type == "mps":
        if not mps_available():
            raise DeviceUnavailableError(
                "device 'mps' was requested but Apple MPS is not available; pass --device cpu or auto"
            )
    elif chosen.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return chosen


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' is fp16 on CUDA and fp32 elsewhere; explicit names map to torch dtypes.

    The collapse loss is always computed in fp32 whatever the encoder runs in (see losses.py).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype.strip().lower()
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """Short name used in logs and certificates: fp32, fp16 or bf16."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def conv_memory_format(device: torch.device) -> torch.memory_format:
    """Memory layout for the VAE's convolutions on ``device``.

    channels_last (NHWC) on CPU and CUDA: on CPU (oneDNN) the bare attack step of an SD-1.x-sized encoder
    at 256x256 measured 1.06x faster than NCHW (``benchmarks/engine_speed.py``, ``bare_nchw_over_bare``);
    on CUDA it is the layout cuDNN's tensor-core kernels prefer (not measured here: no GPU).
    Contiguous (NCHW) elsewhere (MPS), where it is unmeasured.
    The results differ from NCHW only by float rounding (a different summation order).
    """
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
