"""A gated linear map, alpha (x w) + b, optionally gain sigmoid(.): twins and public kernels.

What gives mHC's mixing weights from its streams: rows ``x`` (..., p), a matrix ``w`` (p, q),
a scalar ``alpha`` (0-d) and ``b`` (q,). With z = x w and a = alpha z + b,

    forward:   y = a,  or with the sigmoid  y = gain s,  s = activations.sigmoid(a)
    backward:  g = dy,  or with the sigmoid  g = (gain dy) s (1 - s);
               dx = (alpha g) w^T,   dw = x^T (alpha g),   dalpha = sum of g z,
               db = g summed over the rows

The sigmoid is taken from e^-|a|, so that no exponential overflows at large |a|. The NumPy
twin has the bits of ``ops.matmul``, ``ops.mul``, ``ops.add`` and ``ops.sigmoid`` composed;
the loop twin sums each product in index order (:func:`~lnref.autograd.kernels.linear.
matmul_kernel`) and each of the backward's sums row after row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lnref.autograd.kernels import activations
from lnref.autograd.kernels.checks import check_fit, cotangent, float_arrays
from lnref.autograd.kernels.linear import matmul_kernel
from lnref.autograd.kernels.seam import Twin, njit

Forward = tuple[np.ndarray, np.ndarray, np.ndarray | None]
Grads = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def scaled_linear_forward_reference(
    x: np.ndarray, w: np.ndarray, alpha: np.ndarray, b: np.ndarray, sigmoid: bool, gain: float
) -> Forward:
    """``(y, z, s)``: ``y`` (..., q), ``z = x w`` and, with the sigmoid, ``s`` (else None);
    NumPy twin."""
    z = x @ w
    y = alpha * z + b
    gate = None
    if sigmoid:
        gate = activations.sigmoid_reference(y)
        y = gain * gate if gain != 1.0 else gate
    return y, z, gate


def _scaled_linear_forward_loop(
    x: np.ndarray, w: np.ndarray, alpha: np.ndarray, b: np.ndarray, sigmoid: bool, gain: float
) -> Forward:
    """Loop twin of :func:`scaled_linear_forward_reference` (allocates, then runs the kernel)."""
    shape = (*x.shape[:-1], w.shape[1])
    z, y = np.empty(shape, x.dtype), np.empty(shape, x.dtype)
    gate = (y if gain == 1.0 else np.empty(shape, x.dtype)) if sigmoid else None
    _scaled_linear_forward_kernel(x, w, float(alpha), b, gain, z, y, y if gate is None else gate, sigmoid)
    return y, z, gate


@njit(cache=True)
def _rows(x: Any) -> int:
    """The rows of ``x`` (..., p), counted so that p = 0 has them too."""
    n_rows = 1
    for axis in range(x.ndim - 1):
        n_rows *= x.shape[axis]
    return n_rows


@njit(cache=True)
def _scaled_linear_forward_kernel(
    x: Any, w: Any, alpha: float, b: Any, gain: float, z: Any, y: Any, gate: Any, sigmoid: bool
) -> None:
    """The loop of :func:`_scaled_linear_forward_loop`, writing ``z``, ``y`` and, with the
    sigmoid, ``gate`` (``y`` itself at gain 1)."""
    p, q = w.shape
    n_rows = _rows(x)
    z2, y2, gate2 = z.reshape((n_rows, q)), y.reshape((n_rows, q)), gate.reshape((n_rows, q))
    matmul_kernel(x.reshape((n_rows, p)), w, np.zeros(q), z2)
    for r in range(n_rows):
        for j in range(q):
            a = alpha * z2[r, j] + b[j]
            if sigmoid:
                s = activations.sigmoid(a)
                gate2[r, j] = s
                y2[r, j] = gain * s
            else:
                y2[r, j] = a


def scaled_linear_backward_reference(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, alpha: np.ndarray, z: np.ndarray, gate: np.ndarray | None, gain: float
) -> Grads:
    """``(dx, dw, dalpha, db)``, shaped as ``x``, ``w``, ``alpha`` and (q,); NumPy twin."""
    p, q = w.shape
    if gate is not None:
        dy = (gain * dy if gain != 1.0 else dy) * (gate * (1 - gate))
    dz = alpha * dy
    dalpha = np.asarray(np.sum(dy * z), dtype=dy.dtype)
    db = dy.reshape(-1, q).sum(axis=0)
    return dz @ w.T, x.reshape(-1, p).T @ dz.reshape(-1, q), dalpha, db


def _scaled_linear_backward_loop(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, alpha: np.ndarray, z: np.ndarray, gate: np.ndarray | None, gain: float
) -> Grads:
    """Loop twin of :func:`scaled_linear_backward_reference` (allocates, then runs the kernel)."""
    dtype, q = x.dtype, w.shape[1]
    dx, dw, totals = np.empty(x.shape, dtype), np.empty(w.shape, dtype), np.zeros(q + 1)  # totals: db, dalpha
    sigmoid = gate is not None
    _scaled_linear_backward_kernel(dy, x, w, float(alpha), z, gate if sigmoid else z, gain, sigmoid, dx, dw, totals)
    if dtype != totals.dtype:
        totals = totals.astype(dtype)
    return dx, dw, totals[q:].reshape(()), totals[:q]


@njit(cache=True)
def _scaled_linear_backward_kernel(
    dy: Any, x: Any, w: Any, alpha: float, z: Any, gate: Any, gain: float, sigmoid: bool, dx: Any, dw: Any, totals: Any
) -> None:
    """The loop of :func:`_scaled_linear_backward_loop`: writes ``dx`` and ``dw``, adds db and
    then dalpha into the zeroed ``totals``. dx is :func:`matmul_kernel`'s product with a copy of
    w^T, so that it runs along rows; dw^T gathers dz[r, j] x[r] into its row j, row after row,
    along rows too (q, mHC's n or n^2, is too short a loop to run along)."""
    p, q = w.shape
    n_rows = _rows(x)
    x2, dy2, z2 = x.reshape((n_rows, p)), dy.reshape((n_rows, q)), z.reshape((n_rows, q))
    gate2 = gate.reshape((n_rows, q))
    dz, dw_t, w_t = np.empty((n_rows, q)), np.zeros((q, p)), np.empty((q, p), w.dtype)
    dalpha = 0.0
    for r in range(n_rows):
        x_row = x2[r]
        for j in range(q):
            g = dy2[r, j]
            if sigmoid:
                s = gate2[r, j]
                g = (gain * g) * (s * (1.0 - s))
            dalpha += g * z2[r, j]
            totals[j] += g
            dz_rj = alpha * g
            dz[r, j] = dz_rj
            sums = dw_t[j]
            for k in range(p):
                sums[k] += x_row[k] * dz_rj
    totals[q] = dalpha
    for k in range(p):
        for j in range(q):
            dw[k, j] = dw_t[j, k]
            w_t[j, k] = w[k, j]
    matmul_kernel(dz, w_t, np.zeros(p), dx.reshape((n_rows, p)))


# The work is rows * p * q, the multiply-adds of the product. The loops win while the NumPy
# twin's dozen calls each way cost more than the arithmetic: up to the small model's map into
# mHC's n^2 = 16 mixing weights (16 rows of n d = 64 features). From twice that work on, BLAS's
# products are as fast or faster, at one BLAS thread and at two alike (the products are too
# small to share between threads).
LOOP_PAYS_UP_TO = 16 * 64 * 16
SCALED_LINEAR_FORWARD = Twin(
    "scaled_linear_forward",
    reference=scaled_linear_forward_reference,
    loop=_scaled_linear_forward_loop,
    loop_pays_up_to=LOOP_PAYS_UP_TO,
)
SCALED_LINEAR_BACKWARD = Twin(
    "scaled_linear_backward",
    reference=scaled_linear_backward_reference,
    loop=_scaled_linear_backward_loop,
    loop_pays_up_to=LOOP_PAYS_UP_TO,
)

Kept = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...], np.ndarray, np.ndarray | None, float]


def scaled_linear_forward(
    x: np.ndarray, w: np.ndarray, alpha: np.ndarray, b: np.ndarray, sigmoid: bool = False, gain: float = 1.0
) -> tuple[np.ndarray, Kept]:
    """alpha (x w) + b, or with ``sigmoid`` gain sigmoid(alpha (x w) + b), for ``x`` (..., p),
    ``w`` (p, q), ``alpha`` (0-d) and ``b`` of q entries (in row order, of any shape); returns
    ``(y, kept)``, ``y`` (..., q) and ``kept`` what the backward takes."""
    x, w, alpha, b = float_arrays(x, w, alpha, b)
    q = w.shape[-1] if w.ndim == 2 else -1
    fits = x.ndim >= 1 and w.ndim == 2 and x.shape[-1] == w.shape[0] and alpha.ndim == 0 and b.size == q
    check_fit(fits, "x", x, "w", w, "alpha", alpha, "b", b)
    y, z, gate = SCALED_LINEAR_FORWARD.pick(x.size * q)(x, w, alpha, b if b.ndim == 1 else b.reshape(q), sigmoid, gain)
    return y, (x, w, alpha, b.shape, z, gate, gain)


def scaled_linear_backward(dy: np.ndarray, kept: Kept) -> Grads:
    """The VJP of :func:`scaled_linear_forward` at ``dy`` from its ``kept`` (unchanged); returns
    ``(dx, dw, dalpha, db)``, shaped as ``x``, ``w``, ``alpha`` and ``b``."""
    x, w, alpha, b_shape, z, gate, gain = kept
    dy = cotangent(dy, x.dtype, z.shape)
    dx, dw, dalpha, db = SCALED_LINEAR_BACKWARD.pick(z.size * w.shape[0])(dy, x, w, alpha, z, gate, gain)
    return dx, dw, dalpha, db if len(b_shape) == 1 else db.reshape(b_shape)
