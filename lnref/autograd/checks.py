"""Input checks of the primitives: each raises a ValueError naming the op and the shapes.

What goes to a kernel is checked by the kernel's dispatcher (the op adds its name to the
message, :func:`kernel_error`); the rest here. The common case, plain float arrays of one
dtype, is decided first and in a few comparisons, since these run for every op of every pass.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lnref.autograd.dtypes import FLOAT32, FLOAT64, FLOAT_DTYPES


def shapes(*arrays: Any) -> str:
    return " and ".join(str(np.shape(a)) for a in arrays)


def check_float(op: str, *arrays: Any) -> None:
    """All array inputs and NumPy scalars share one float dtype (float64 or float32); Python
    numbers are free (they take the arrays' dtype, where a NumPy scalar would impose its own)."""
    dtype = None
    for a in arrays:
        if not isinstance(a, (np.ndarray, np.floating)):
            continue
        if dtype is None:
            dtype = a.dtype
            if dtype not in FLOAT_DTYPES:
                raise ValueError(f"{op}: dtype {dtype} is not float64 or float32 (shapes {shapes(*arrays)})")
        elif a.dtype is not dtype and a.dtype != dtype:
            raise ValueError(f"{op}: mixed dtypes {dtype} and {a.dtype} (shapes {shapes(*arrays)}); cast one first")


def plain_float_arrays(*arrays: Any) -> bool:
    """True when every argument is an ndarray (not a subclass) of one float64/float32 dtype.

    When it says False the op runs its full checks, which raise the clear errors (or accept a
    valid input that merely is unusual, such as a memmap).
    """
    first = arrays[0]
    if type(first) is not np.ndarray:
        return False
    dtype = first.dtype
    if dtype is not FLOAT64 and dtype is not FLOAT32 and dtype not in FLOAT_DTYPES:
        return False
    for a in arrays:
        # Equal dtypes need not be one object (arrays made by Numba carry their own).
        if type(a) is not np.ndarray or a.dtype is not dtype and a.dtype != dtype:
            return False
    return True


def check_finite(op: str, *arrays: Any) -> None:
    """Raise if an array holds a NaN or an inf.

    A sum is finite only if every term is (NaN and inf propagate, inf - inf is NaN), so one
    reduction clears the common case; the exact test runs only when the sum is not finite,
    which a finite array can also give by overflowing.
    """
    for a in arrays:
        if not math.isfinite(np.sum(a)) and not np.isfinite(a).all():
            raise ValueError(f"{op}: input of shape {np.shape(a)} contains NaN or inf")


def kernel_error(op: str, error: Exception, *arrays: Any) -> ValueError:
    """A kernel dispatcher's TypeError/ValueError as this op's ValueError."""
    return ValueError(f"{op}: {error} (inputs of shapes {shapes(*arrays)})")


def is_number(value: Any) -> bool:
    """A Python number (not a NumPy scalar, not a bool): a constant of the pass, which takes
    the arrays' dtype and has no cotangent (every value a gradient can reach is an array)."""
    return type(value) is float or type(value) is int


def binary_shapes(op: str, a: Any, b: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shape of a, shape of b) once both are checked: one float dtype, broadcastable shapes."""
    # The common cases first: arrays of one shape, an array and one that matches its last axes
    # (a stream and a per-feature parameter), or an array and a scalar (a Python number, a 0-d
    # array or a NumPy scalar of the array's dtype).
    if type(a) is np.ndarray:
        if type(b) is np.ndarray:
            a_shape, b_shape = a.shape, b.shape
            trailing = (
                a_shape[len(a_shape) - len(b_shape) :] == b_shape or b_shape[len(b_shape) - len(a_shape) :] == a_shape
            )
            if trailing and plain_float_arrays(a, b):
                return a_shape, b_shape
        elif is_number(b) or type(b) is a.dtype.type:
            if plain_float_arrays(a):
                return a.shape, ()
    elif type(b) is np.ndarray and (is_number(a) or type(a) is b.dtype.type):
        if plain_float_arrays(b):
            return (), b.shape
    check_float(op, a, b)
    try:
        np.broadcast_shapes(np.shape(a), np.shape(b))
    except ValueError:
        raise ValueError(f"{op}: shapes {shapes(a, b)} do not broadcast") from None
    return np.shape(a), np.shape(b)


def check_eps(op: str, eps: float, x: Any) -> None:
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{op}: eps must be finite and > 0, got {eps} (x of shape {np.shape(x)})")


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes that broadcasting added or stretched to reach it."""
    if grad.shape == shape or grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad
