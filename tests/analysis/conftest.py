"""Analysis tests: one BLAS/torch thread, `slow` tests only on request (PCA_RUN_SLOW=1 or -m slow)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markexpr = str(config.getoption("markexpr", "") or "")
    if os.environ.get("PCA_RUN_SLOW") == "1" or ("slow" in markexpr and "not slow" not in markexpr):
        return
    skip = pytest.mark.skip(reason="slow; set PCA_RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords and "tests/analysis" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def _few_threads() -> Iterator[None]:
    """Tiny matrices: multi-threaded BLAS/torch only adds contention (10x slower on a busy box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scipy/sklearn setups
        yield
    else:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def random_spd(eigs: list[float], seed: int = 0) -> np.ndarray:
    """Symmetric matrix with the given eigenvalues in a random orthonormal basis."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(len(eigs), len(eigs))))
    return np.asarray(Q @ np.diag(eigs) @ Q.T)


@pytest.fixture
def spd5() -> np.ndarray:
    return random_spd([4.0, 2.5, 1.3, 0.6, 0.2], seed=0)
