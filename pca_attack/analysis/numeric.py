"""Double-precision range guard for the calculators: overflow and domain errors become a clear input error.

The closed forms square and exponentiate their inputs, so values far from 1 (``sigma1 = 1e-300``,
``eta_dec = 1e300``, moments near 1e308) overflow, underflow to zero inside a ``log``, or produce
``inf``/``nan`` that numpy only warns about.  :func:`numeric_guard` wraps a calculator so that every
such case raises :class:`NumericRangeError` (an :class:`AnalysisInputError`, hence a ``ValueError``)
with a sentence saying what to do, and checks that every number of the result is finite.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from pca_attack.analysis.moments import RESCALE_ADVICE, AnalysisInputError, NumericRangeError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["NumericRangeError", "numeric_guard"]


def _non_finite_field(result: Any) -> str | None:
    """Name of the first result field holding a NaN or infinity (None when all are finite)."""
    if not dataclasses.is_dataclass(result):
        return None
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, dict):
            value = [v for v in value.values() if isinstance(v, int | float)]
        arr = np.asarray(value) if isinstance(value, list | tuple | float | np.ndarray | np.floating) else None
        if arr is not None and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            return f.name
    return None


def numeric_guard(fn: F) -> F:
    """Wrap a calculator: arithmetic errors and non-finite results raise :class:`NumericRangeError`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with np.errstate(all="ignore"):  # checked below instead of warned about
                result = fn(*args, **kwargs)
        except (OverflowError, ZeroDivisionError, FloatingPointError) as exc:
            raise NumericRangeError(f"the numbers overflow double precision; {RESCALE_ADVICE}.") from exc
        except ValueError as exc:
            if isinstance(exc, AnalysisInputError) or "math domain error" not in str(exc):
                raise
            raise NumericRangeError(
                f"a value underflowed or overflowed inside a logarithm or square root; {RESCALE_ADVICE}."
            ) from exc
        bad = _non_finite_field(result)
        if bad is not None:
            raise NumericRangeError(f"the result '{bad}' is not finite in double precision; {RESCALE_ADVICE}.")
        return result

    return wrapper  # type: ignore[return-value]
