"""Low-precision golden files: inputs and parameters rounded to bfloat16 or float16, every
output computed in float64 from the rounded values.

A port that computes in a low precision is then judged against exact arithmetic on its own
inputs: whatever it loads from the file converts to its dtype without rounding, and every
difference left is its own arithmetic's. The rounded values are stored widened to float64, so
the file still reads with NumPy alone; rounding needs ``ml_dtypes`` for bfloat16 (the optional
extra ``lnref[lowp]``), checking a value is representable needs nothing but NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lnref.golden.format import GoldenError

ROUNDED_DTYPES = ("bfloat16", "float16")


def low_precision_dtype(name: str) -> Any:
    """The NumPy dtype of ``name`` (bfloat16 from ml_dtypes); GoldenError naming the extra
    where ml_dtypes is not installed."""
    if name == "float16":
        return np.float16
    if name != "bfloat16":
        raise GoldenError(f"unknown low precision {name!r}; valid: {', '.join(ROUNDED_DTYPES)}")
    try:
        import ml_dtypes
    except ImportError:
        raise GoldenError(
            "bfloat16 golden files need the optional extra lnref[lowp] (pip install 'lnref[lowp]': ml_dtypes)"
        ) from None
    return ml_dtypes.bfloat16


def round_to(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` (float64) rounded to the nearest values of the dtype ``name``, widened back."""
    rounded = np.asarray(array, dtype=np.float64).astype(low_precision_dtype(name)).astype(np.float64)
    if not np.isfinite(rounded).all():
        raise GoldenError(
            f"a value overflows {name} (its largest is {float(np.finfo(low_precision_dtype(name)).max):g})"
        )
    return rounded


def representable(array: np.ndarray, name: str) -> bool:
    """Whether every value of the float64 ``array`` is exactly a value of the dtype ``name``.

    float16 by NumPy's own type; bfloat16 is float32 with the low 16 bits of the significand
    zero, so a value is one when it survives float32 exactly with those bits clear."""
    array = np.asarray(array, dtype=np.float64)
    if name == "float16":
        with np.errstate(over="ignore"):
            return bool(np.all(array.astype(np.float16).astype(np.float64) == array))
    with np.errstate(over="ignore"):
        single = array.astype(np.float32)
    return bool(np.all(single.astype(np.float64) == array) and np.all(single.view(np.uint32) & 0xFFFF == 0))
