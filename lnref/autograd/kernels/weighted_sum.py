"""A weighted sum of same-shaped arrays, sum_k w_k x_k: twins and public kernels.

What a stream-mixing scheme computes where it combines earlier streams with learned weights
(DLCL's and DenseFormer's averages over layers, the width and depth connections of
hyper-connections). The weights are one per term, ``w`` (k,), or one per term and row,
``w`` (..., k) for terms ``x_k`` (..., d): each row takes its own mixture.

    forward:   y = w_0 x_0 + w_1 x_1 + ... + w_{k-1} x_{k-1}      (added in this order)
    backward:  dx_k = w_k dy,    dw_k = sum over the features (and, for w (k,), the rows)
               of dy * x_k

The kernels take the terms stacked, ``xs`` (k, rows, d), and the weights as ``(1, k)`` (one
mixture for every row) or ``(rows, k)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lnref.autograd.kernels.checks import check_fit, cotangent, float_arrays
from lnref.autograd.kernels.seam import Twin, njit


def weighted_sum_forward_reference(w: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``y`` (rows, d) from ``w`` (1 or rows, k) and ``xs`` (k, rows, d); NumPy twin."""
    y = xs[0] * w[:, 0:1]
    for k in range(1, xs.shape[0]):
        y = y + xs[k] * w[:, k : k + 1]
    return y


def _weighted_sum_forward_loop(w: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Loop twin of :func:`weighted_sum_forward_reference` (allocates, then runs the kernel)."""
    y = np.empty(xs.shape[1:], xs.dtype)
    _weighted_sum_forward_kernel(w, xs, y)
    return y


@njit(cache=True)
def _weighted_sum_forward_kernel(w: np.ndarray, xs: np.ndarray, y: np.ndarray) -> None:
    """The loop of :func:`_weighted_sum_forward_loop`, writing ``y``."""
    n_terms, n_rows, d = xs.shape
    per_row = w.shape[0] > 1
    for r in range(n_rows):
        w_row = w[r] if per_row else w[0]
        out = y[r]
        for j in range(d):
            out[j] = xs[0, r, j] * w_row[0]
        for k in range(1, n_terms):
            weight, x_row = w_row[k], xs[k, r]
            for j in range(d):
                out[j] = out[j] + x_row[j] * weight


def weighted_sum_backward_reference(dy: np.ndarray, w: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(dw, dxs)``, shaped as ``w`` and ``xs``, from ``dy`` (rows, d); NumPy twin."""
    dxs = w.T[:, :, None] * dy[None]  # (k, rows, d): dx_k = w_k dy
    dw = (dy[None] * xs).sum(axis=-1).T  # (rows, k)
    if w.shape[0] == 1:
        dw = dw.sum(axis=0, keepdims=True)
    return dw, np.broadcast_to(dxs, xs.shape).copy()


def _weighted_sum_backward_loop(dy: np.ndarray, w: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of :func:`weighted_sum_backward_reference` (allocates, then runs the kernel)."""
    dxs, dw = np.empty(xs.shape, xs.dtype), np.zeros(w.shape)  # dw accumulates in float64
    _weighted_sum_backward_kernel(dy, w, xs, dxs, dw)
    return dw.astype(xs.dtype, copy=False), dxs


@njit(cache=True)
def _weighted_sum_backward_kernel(
    dy: np.ndarray, w: np.ndarray, xs: np.ndarray, dxs: np.ndarray, dw: np.ndarray
) -> None:
    """The loop of :func:`_weighted_sum_backward_loop`, writing ``dxs`` and adding into the
    zeroed ``dw``."""
    n_terms, n_rows, d = xs.shape
    per_row = w.shape[0] > 1
    for r in range(n_rows):
        row = r if per_row else 0
        dy_row = dy[r]
        for k in range(n_terms):
            weight, x_row, dx_row = w[row, k], xs[k, r], dxs[k, r]
            total = 0.0
            for j in range(d):
                dx_row[j] = weight * dy_row[j]
                total += dy_row[j] * x_row[j]
            dw[row, k] += total


WEIGHTED_SUM_FORWARD = Twin(
    "weighted_sum_forward", reference=weighted_sum_forward_reference, loop=_weighted_sum_forward_loop
)
WEIGHTED_SUM_BACKWARD = Twin(
    "weighted_sum_backward", reference=weighted_sum_backward_reference, loop=_weighted_sum_backward_loop
)


def weighted_sum_forward(w: np.ndarray, xs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """sum_k w_k x_k for the terms ``xs`` (each (..., d), one shape) and ``w`` (k,) or (..., k);
    returns ``(y, stacked)``, ``stacked`` (k, ..., d) the terms as the backward takes them."""
    if not xs:
        raise ValueError("a weighted sum needs at least one term")
    w, *terms = float_arrays(w, *xs)
    shape = terms[0].shape
    fits = len(shape) >= 1 and all(x.shape == shape for x in terms)
    if not (fits and w.shape in ((len(terms),), (*shape[:-1], len(terms)))):
        check_fit(False, "w", w, *(part for k, x in enumerate(terms) for part in (f"x_{k}", x)))
    stacked = np.concatenate(terms).reshape((len(terms), *shape))
    rows = stacked.reshape(len(terms), -1, shape[-1])
    y = WEIGHTED_SUM_FORWARD.pick()(w.reshape(-1, len(terms)), rows)
    return y.reshape(shape), stacked


def weighted_sum_backward(dy: np.ndarray, w: np.ndarray, stacked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The VJP of :func:`weighted_sum_forward` at ``dy``, from its ``w`` and ``stacked`` (the
    forward's own, unchanged); returns ``(dw, dxs)``, ``dxs`` (k, ..., d) one row per term."""
    dy = cotangent(dy, stacked.dtype, stacked.shape[1:])
    n_terms, d = stacked.shape[0], stacked.shape[-1]
    dw, dxs = WEIGHTED_SUM_BACKWARD.pick()(dy.reshape(-1, d), w.reshape(-1, n_terms), stacked.reshape(n_terms, -1, d))
    return dw.reshape(w.shape), dxs.reshape(stacked.shape)
