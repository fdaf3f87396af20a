"""The checks the public kernels run on their inputs before a twin sees them.

The loop twins index arrays by each other's sizes, so an array that does not fit the others
would be read past its end: every public kernel checks shapes and dtypes here first, and the
twins check nothing. ``ops`` adds the op's name to these errors and does not repeat them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_arrays(*arrays: Any) -> Sequence[np.ndarray]:
    """The arrays, C-contiguous and of one float32 or float64 dtype, or ``TypeError``.

    Mixed dtypes raise instead of being cast, so a float32 graph never turns into float64 (or
    back) behind the caller's back.
    """
    dtype = getattr(arrays[0], "dtype", None)
    if dtype is FLOAT_DTYPES[0] or dtype is FLOAT_DTYPES[1] or dtype in FLOAT_DTYPES:
        # The common case, decided without building new arrays. (Equal dtypes need not
        # be one object: arrays made by Numba carry their own.)
        for a in arrays:
            if type(a) is not np.ndarray or a.dtype is not dtype and a.dtype != dtype or not a.flags.c_contiguous:
                break
        else:
            return arrays
    out = [np.asarray(a) for a in arrays]
    dtype = out[0].dtype
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"kernels take float32 or float64 arrays, got {dtype}")
    for a in out[1:]:
        if a.dtype != dtype:
            raise TypeError(f"all kernel inputs must share one dtype, got {dtype} and {a.dtype}")
    return [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in out]


def cotangent(dy: Any, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """``dy`` as the cotangent of a forward output of ``dtype`` and ``shape``: a C-contiguous
    array of that dtype and shape, or an error.

    What a backward checks when its other arguments are the forward's own, passed back
    unchanged (``residuals_checked=True``, as the ops' VJPs call them): the forward checked
    its inputs' dtypes and shapes and made its outputs, so the cotangent is the one new
    array. The forward's inputs are still looked at (:func:`plain_arrays`): the forward
    took a copy of any that was not a C-contiguous array, not the array itself.
    """
    if type(dy) is not np.ndarray or dy.dtype is not dtype and dy.dtype != dtype:
        dy = np.asarray(dy)
        if dy.dtype != dtype:
            raise TypeError(f"all kernel inputs must share one dtype, got {dtype} and {dy.dtype} for the cotangent")
    if dy.shape != shape:
        raise ValueError(f"cotangent of shape {dy.shape} does not match the forward's output shape {shape}")
    return dy if dy.flags.c_contiguous else np.ascontiguousarray(dy)


def plain_arrays(*arrays: Any) -> bool:
    """Every argument is a C-contiguous ndarray (not a subclass)."""
    for a in arrays:
        if type(a) is not np.ndarray or not a.flags.c_contiguous:
            return False
    return True


def check_fit(fits: bool, *named_arrays: Any) -> None:
    """Raise unless ``fits``: the arrays' shapes, each after its name, in the message."""
    if not fits:
        shapes = ", ".join(f"{name} {np.shape(array)}" for name, array in zip(named_arrays[::2], named_arrays[1::2]))
        raise ValueError(f"shapes do not fit: {shapes}")


def expect_ndim(name: str, array: np.ndarray, ndim: int) -> None:
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")


def check_rows(x: np.ndarray, *params: np.ndarray) -> None:
    """x is (n, d) and every per-feature parameter is (d,)."""
    expect_ndim("x", x, 2)
    for p in params:
        if p.shape != (x.shape[1],):
            raise ValueError(f"parameter of shape {p.shape} does not match x of shape {x.shape}")
