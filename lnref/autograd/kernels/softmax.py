"""Softmax over the last axis of rows ``x`` (n, d): twins and public kernels, and the stable
row softmax the attention kernels share."""

from __future__ import annotations

import math

import numpy as np

from lnref.autograd.kernels.checks import check_fit, expect_ndim, float_arrays
from lnref.autograd.kernels.seam import Twin, njit


def softmax_forward_reference(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of ``x`` (n, d); NumPy twin.

    ``p_j = exp(x_j - max(x)) / sum_k exp(x_k - max(x))``. Subtracting the row
    maximum changes nothing mathematically but keeps every exponent <= 0, so
    logits like 1e4 do not overflow.
    """
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@njit(cache=True)
def softmax_prefix_inplace(row: np.ndarray, n: int) -> None:
    """row[:n] <- softmax(row[:n]), stable: the row maximum is subtracted before exp, so
    logits like 1e4 do not overflow. The one row loop shared by softmax and attention."""
    row_max = -np.inf
    for j in range(n):
        if row[j] > row_max:
            row_max = row[j]
    total = 0.0
    for j in range(n):
        e = math.exp(row[j] - row_max)
        row[j] = e
        total += e
    for j in range(n):
        row[j] = row[j] / total


def _softmax_forward_loop(x: np.ndarray) -> np.ndarray:
    """Loop twin of :func:`softmax_forward_reference` (allocates, then runs the kernel)."""
    p = np.empty(x.shape, x.dtype)
    _softmax_forward_kernel(x, p)
    return p


@njit(cache=True)
def _softmax_forward_kernel(x: np.ndarray, p: np.ndarray) -> None:
    """The loop of :func:`_softmax_forward_loop`, writing ``p``."""
    n, d = x.shape
    for i in range(n):
        out = p[i]
        out[:] = x[i]
        softmax_prefix_inplace(out, d)


def softmax_backward_reference(dp: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Gradient of softmax; NumPy twin.

    The Jacobian of ``p = softmax(x)`` is ``diag(p) - p p^T``, so for a
    cotangent ``dp`` (per row)::

        dx = p * (dp - sum(dp * p))
    """
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))


def _softmax_backward_loop(dp: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Loop twin of :func:`softmax_backward_reference` (allocates, then runs the kernel)."""
    dx = np.empty(p.shape, p.dtype)
    _softmax_backward_kernel(dp, p, dx)
    return dx


@njit(cache=True)
def _softmax_backward_kernel(dp: np.ndarray, p: np.ndarray, dx: np.ndarray) -> None:
    """The loop of :func:`_softmax_backward_loop`, writing ``dx``."""
    n, d = p.shape
    for i in range(n):
        p_row = p[i]
        dp_row = dp[i]
        s0 = 0.0
        s1 = 0.0
        j = 0
        while j + 2 <= d:
            s0 += dp_row[j] * p_row[j]
            s1 += dp_row[j + 1] * p_row[j + 1]
            j += 2
        if j < d:
            s0 += dp_row[j] * p_row[j]
        row_dot = s0 + s1
        out = dx[i]
        for j in range(d):
            out[j] = p_row[j] * (dp_row[j] - row_dot)


SOFTMAX_FORWARD = Twin("softmax_forward", reference=softmax_forward_reference, loop=_softmax_forward_loop)
SOFTMAX_BACKWARD = Twin("softmax_backward", reference=softmax_backward_reference, loop=_softmax_backward_loop)


def softmax_forward(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis of ``x`` (n, d)."""
    (x,) = float_arrays(x)
    expect_ndim("x", x, 2)
    return SOFTMAX_FORWARD.pick()(x)


def softmax_backward(dp: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Softmax backward: ``dx = p * (dp - sum(dp * p, axis=-1))``.

    The Jacobian is ``diag(p) - p p^T``.
    """
    dp, p = float_arrays(dp, p)
    expect_ndim("p", p, 2)
    check_fit(dp.shape == p.shape, "dp", dp, "p", p)
    return SOFTMAX_BACKWARD.pick()(dp, p)
