"""Fixture of the CUDA tests: the device (skipped without one).

Tests here are marked ``cuda``; ``benchmarks/gpu_check.sh`` runs them with ``pytest -m cuda tests/gpu`` on a
GPU machine. Without CUDA they skip, except the ``--device cuda`` strictness test, which checks the refusal.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def cuda() -> torch.device:
    """The first CUDA device; skips the test where torch sees none."""
    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA device visible to torch {torch.__version__} (CUDA build: {torch.version.cuda})")
    return torch.device("cuda", 0)
