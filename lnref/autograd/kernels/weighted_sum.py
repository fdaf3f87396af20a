"""A weighted sum of same-shaped arrays, sum_k w_k x_k: twins and public kernels.

What a stream-mixing scheme computes where it combines earlier streams with learned weights
(DLCL's and DenseFormer's averages over layers, the width and depth connections of
hyper-connections). The weights are one per term, ``w`` (k,), or one per term and row,
``w`` (..., k) for terms ``x_k`` (..., d): each row takes its own mixture.

    forward:   y = w_0 x_0 + w_1 x_1 + ... + w_{k-1} x_{k-1}      (added in this order)
    backward:  dx_k = w_k dy,    dw_k = sum over the features (and, for w (k,), the rows)
               of dy * x_k

The kernels take the terms as they are, a tuple of arrays of one shape (..., d), or as the
rows of one array (k, ..., d), and the weights as ``(1, k)`` (one mixture for every row) or
``(rows, k)``. A compiled kernel is specialized for the length of a tuple: the loop twins
hand a tuple over :data:`TERMS_PER_CALL` terms at a time, each group adding into the sum in
order (a sum over every earlier layer compiles a few kernels, not one per length). Where many
terms hold few elements in all (:data:`STACK_UP_TO`), the public forward copies them into one
array instead, which costs less than a kernel call per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lnref.autograd.kernels.checks import FLOAT_DTYPES, check_fit, cotangent, float_arrays
from lnref.autograd.kernels.seam import Twin, njit

TERMS_PER_CALL = 8
STACK_UP_TO = 1 << 14  # elements in all the terms


def weighted_sum_forward_reference(w: np.ndarray, xs: Sequence[np.ndarray]) -> np.ndarray:
    """``y`` (..., d) from ``w`` (1 or rows, k) and the terms ``xs`` (each (..., d)); NumPy twin."""
    shape, d = xs[0].shape, xs[0].shape[-1]
    y = xs[0].reshape(-1, d) * w[:, 0:1]
    for k in range(1, len(xs)):
        y = y + xs[k].reshape(-1, d) * w[:, k : k + 1]
    return y.reshape(shape)


def _weighted_sum_forward_loop(w: np.ndarray, xs: Sequence[np.ndarray]) -> np.ndarray:
    """Loop twin of :func:`weighted_sum_forward_reference` (allocates, then runs the kernel)."""
    y = np.empty(xs[0].shape, xs[0].dtype)
    for first, group in _groups(xs):
        _weighted_sum_forward_kernel(w, group, first, y)
    return y


def as_kernel_terms(xs: Sequence[np.ndarray]) -> tuple[np.ndarray, ...] | np.ndarray:
    """The terms as a compiled kernel takes them: one array as it is, else a tuple."""
    return xs if isinstance(xs, np.ndarray) else tuple(xs)


def _groups(xs: Sequence[np.ndarray]) -> list[tuple[int, Any]]:
    """``(first, terms)`` for each group a kernel takes: one array whole, a tuple
    :data:`TERMS_PER_CALL` terms at a time."""
    if isinstance(xs, np.ndarray):
        return [(0, xs.reshape(len(xs), -1, xs.shape[-1]))]  # each term a (rows, d) view
    if len(xs) <= TERMS_PER_CALL:
        return [(0, tuple(xs))]
    return [(first, tuple(xs[first : first + TERMS_PER_CALL])) for first in range(0, len(xs), TERMS_PER_CALL)]


@njit(cache=True)
def _rows(x: np.ndarray, n_rows: int, d: int) -> np.ndarray:
    """``x`` as (rows, d): as it is if 2-D already (a reshape costs a call per term)."""
    return x if x.ndim == 2 else x.reshape((n_rows, d))


@njit(cache=True)
def _weighted_sum_forward_kernel(w: np.ndarray, xs: Any, first: int, y_out: Any) -> None:
    """Adds w_k x_k into ``y_out`` (..., d) for the terms ``xs``, k = first, first + 1, ...;
    the first term of all (k = 0) writes it afresh."""
    d = y_out.shape[-1]
    n_rows = y_out.size // d
    y = y_out.reshape((n_rows, d))
    per_row = w.shape[0] > 1
    for t in range(len(xs)):
        x, k = _rows(xs[t], n_rows, d), first + t
        for r in range(n_rows):
            weight, out = w[r if per_row else 0, k], y[r]
            if k == 0:
                for j in range(d):
                    out[j] = x[r, j] * weight
            else:
                for j in range(d):
                    out[j] = out[j] + x[r, j] * weight


def weighted_sum_backward_reference(
    dy: np.ndarray, w: np.ndarray, xs: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(dw, dxs)``, ``dw`` shaped as ``w`` and ``dxs`` (k, ..., d) one row per term, from
    ``dy`` (..., d); NumPy twin."""
    d = dy.shape[-1]
    rows = dy.reshape(-1, d)
    stacked = np.stack([x.reshape(-1, d) for x in xs])  # (k, rows, d)
    dxs = w.T[:, :, None] * rows[None]  # dx_k = w_k dy
    dw = (rows[None] * stacked).sum(axis=-1).T  # (rows, k)
    if w.shape[0] == 1:
        dw = dw.sum(axis=0, keepdims=True)
    return dw, np.broadcast_to(dxs, stacked.shape).reshape((len(xs), *dy.shape))


def _weighted_sum_backward_loop(
    dy: np.ndarray, w: np.ndarray, xs: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of :func:`weighted_sum_backward_reference` (allocates, then runs the kernel)."""
    dxs, dw = np.empty((len(xs), *dy.shape), dy.dtype), np.zeros(w.shape)  # dw accumulates in float64
    for first, group in _groups(xs):
        _weighted_sum_backward_kernel(dy, w, group, first, dxs, dw)
    return dw.astype(dy.dtype, copy=False), dxs


@njit(cache=True)
def _weighted_sum_backward_kernel(dy_in: Any, w: np.ndarray, xs: Any, first: int, dxs_out: Any, dw: np.ndarray) -> None:
    """The loop of :func:`_weighted_sum_backward_loop` for the terms ``xs``, k = first,
    first + 1, ...: writes their rows of ``dxs_out`` (k, ..., d) and adds into the zeroed
    ``dw``."""
    d = dy_in.shape[-1]
    n_rows = dy_in.size // d
    dy, dxs = dy_in.reshape((n_rows, d)), dxs_out.reshape((dxs_out.shape[0], n_rows, d))
    per_row = w.shape[0] > 1
    for t in range(len(xs)):
        x, k = _rows(xs[t], n_rows, d), first + t
        for r in range(n_rows):
            row = r if per_row else 0
            weight, dy_row, dx_row = w[row, k], dy[r], dxs[k, r]
            total = 0.0
            for j in range(d):
                dx_row[j] = weight * dy_row[j]
                total += dy_row[j] * x[r, j]
            dw[row, k] += total


WEIGHTED_SUM_FORWARD = Twin(
    "weighted_sum_forward", reference=weighted_sum_forward_reference, loop=_weighted_sum_forward_loop
)
WEIGHTED_SUM_BACKWARD = Twin(
    "weighted_sum_backward", reference=weighted_sum_backward_reference, loop=_weighted_sum_backward_loop
)


def _checked_terms(
    w: np.ndarray, xs: Sequence[np.ndarray], copied: bool = False
) -> tuple[np.ndarray, Sequence[np.ndarray]]:
    """``(w, xs)`` C-contiguous and of one float dtype, ``xs`` one array (k, ..., d) or a
    sequence of arrays of one shape, or an error; with ``copied``, terms of one shape and
    dtype are let through as they are (they are to be copied into one array)."""
    if isinstance(xs, np.ndarray):
        w, xs = float_arrays(w, xs)
        if xs.ndim < 2 or len(xs) < 1:
            raise ValueError(f"stacked terms must be one array (k, ..., d), got shape {xs.shape}")
        return w, xs
    if not xs:
        raise ValueError("a weighted sum needs at least one term")
    shape, dtype = getattr(xs[0], "shape", None), getattr(xs[0], "dtype", None)
    for x in xs:  # the common case, decided without building new arrays
        if type(x) is not np.ndarray or x.shape != shape or x.dtype is not dtype:
            break
        if not (copied or x.flags.c_contiguous):
            break
    else:
        if type(w) is np.ndarray and w.dtype is dtype and w.flags.c_contiguous and dtype in FLOAT_DTYPES:
            return w, xs
    w, *terms = float_arrays(w, *xs)
    shape = terms[0].shape
    if not (len(shape) >= 1 and all(x.shape == shape for x in terms)):
        check_fit(False, "w", w, *(part for k, x in enumerate(terms) for part in (f"x_{k}", x)))
    return w, terms


Kept = tuple[np.ndarray, Any, tuple[int, ...]]


def weighted_sum_forward(w: np.ndarray, xs: Sequence[np.ndarray]) -> tuple[np.ndarray, Kept]:
    """sum_k w_k x_k for the terms ``xs`` (each (..., d), one shape; or one array (k, ..., d),
    its rows the terms) and ``w`` (k,) or (..., k); returns ``(y, kept)``, ``kept`` what the
    backward takes: ``w``, the terms as the kernels take them, and their shape."""
    count = len(xs)
    stacking = (
        count > TERMS_PER_CALL
        and not isinstance(xs, np.ndarray)
        and count * getattr(xs[0], "size", STACK_UP_TO) <= STACK_UP_TO
    )
    w, terms = _checked_terms(w, xs, copied=stacking)
    shape = terms[0].shape
    if len(shape) < 1 or w.shape not in ((count,), (*shape[:-1], count)):
        check_fit(False, "w", w, *(part for k, x in enumerate(terms) for part in (f"x_{k}", x)))
    kernel_terms: Any = terms
    if stacking:
        kernel_terms = np.concatenate(terms).reshape((count, *shape))
    elif not isinstance(terms, np.ndarray):
        kernel_terms = tuple(terms)
    w = w.reshape(-1, count)
    return WEIGHTED_SUM_FORWARD.pick()(w, kernel_terms), (w, kernel_terms, shape)


def weighted_sum_backward(dy: np.ndarray, kept: Kept, w_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The VJP of :func:`weighted_sum_forward` at ``dy``, from its ``kept`` (unchanged), for
    weights of shape ``w_shape``; returns ``(dw, dxs)``, ``dxs`` (k, ..., d) one row per term."""
    w, terms, shape = kept
    dy = cotangent(dy, w.dtype, shape)
    dw, dxs = WEIGHTED_SUM_BACKWARD.pick()(dy, w, terms)
    return dw.reshape(w_shape), dxs
