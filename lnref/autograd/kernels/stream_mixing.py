"""Mixing n streams into m new ones, plus one more term: twins and public kernels.

With streams x_0..x_{n-1} and s of one shape (..., d), a matrix ``a`` (n, m) and a vector
``b`` (m,), or one of each per row, ``a`` (..., n, m) and ``b`` (..., m):

    forward:   y_c = sum_i a[i, c] x_i + b[c] s        (added in this order), c = 0..m-1
    backward:  dx_i = sum_c a[i, c] dy_c,   ds = sum_c b[c] dy_c,
               da[i, c] = sum of dy_c * x_i,   db[c] = sum of dy_c * s
               (the sums over the features, and over the rows for a shared ``a`` and ``b``)

What the depth connections of hyper-connections compute, each new copy a mixture of the old
ones and of the sublayer's output (and mHC's H_res x + H_post S): the matrix form y = A^T x +
b s of m weighted sums, where m calls of ``weighted_sum`` would each take and give back every
stream. The new streams come stacked, (m, ..., d). The streams come as a tuple of arrays of
one shape, or as the rows of one array (n, ..., d), as ``weighted_sum``'s terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lnref.autograd.kernels.checks import check_fit, cotangent, float_arrays
from lnref.autograd.kernels.seam import Twin, njit
from lnref.autograd.kernels.weighted_sum import as_kernel_terms


def _matrices(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as (1 or rows, n, m) and (1 or rows, m)."""
    return a.reshape(-1, *a.shape[-2:]), b.reshape(-1, b.shape[-1])


def mix_streams_forward_reference(a: np.ndarray, b: np.ndarray, s: np.ndarray, xs: Sequence[np.ndarray]) -> np.ndarray:
    """``y`` (m, ..., d) from ``a`` (n, m) or (..., n, m), ``b`` (m,) or (..., m), ``s`` and
    the streams ``xs`` (each (..., d)); NumPy twin."""
    d, (a, b) = s.shape[-1], _matrices(a, b)
    out = []
    for c in range(a.shape[-1]):
        y = xs[0].reshape(-1, d) * a[:, 0, c : c + 1]
        for i in range(1, len(xs)):
            y = y + xs[i].reshape(-1, d) * a[:, i, c : c + 1]
        out.append(y + s.reshape(-1, d) * b[:, c : c + 1])
    return np.stack(out).reshape((len(out), *s.shape))


def _mix_streams_forward_loop(a: np.ndarray, b: np.ndarray, s: np.ndarray, xs: Sequence[np.ndarray]) -> np.ndarray:
    """Loop twin of :func:`mix_streams_forward_reference` (allocates, then runs the kernel)."""
    y = np.empty((a.shape[-1], *s.shape), s.dtype)
    _mix_streams_forward_kernel(a, b, s, as_kernel_terms(xs), y)
    return y


@njit(cache=True)
def _mix_streams_forward_kernel(a: Any, b: Any, s: Any, xs: Any, y: Any) -> None:
    """The loop of :func:`_mix_streams_forward_loop`, writing ``y``."""
    n_rows, d = s.size // s.shape[-1], s.shape[-1]
    a3, b2 = a.reshape((-1, a.shape[-2], a.shape[-1])), b.reshape((-1, b.shape[-1]))
    s2, y3 = s.reshape((n_rows, d)), y.reshape((y.shape[0], n_rows, d))
    per_row = a3.shape[0] > 1
    for i in range(len(xs)):
        x = xs[i].reshape((n_rows, d))
        for c in range(y3.shape[0]):
            for r in range(n_rows):
                weight, out = a3[r if per_row else 0, i, c], y3[c, r]
                if i == 0:
                    for j in range(d):
                        out[j] = x[r, j] * weight
                else:
                    for j in range(d):
                        out[j] = out[j] + x[r, j] * weight
    for c in range(y3.shape[0]):
        for r in range(n_rows):
            weight, out = b2[r if per_row else 0, c], y3[c, r]
            for j in range(d):
                out[j] = out[j] + s2[r, j] * weight


Grads = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def mix_streams_backward_reference(
    dy: np.ndarray, a: np.ndarray, b: np.ndarray, s: np.ndarray, xs: Sequence[np.ndarray]
) -> Grads:
    """``(da, db, ds, dxs)`` from ``dy`` (m, ..., d), shaped as ``a``, ``b``, ``s`` and
    (n, ..., d); NumPy twin."""
    d, shape_a, shape_b, (a, b) = s.shape[-1], a.shape, b.shape, _matrices(a, b)
    dys = dy.reshape(dy.shape[0], -1, d)  # (m, rows, d)
    x = np.stack([x.reshape(-1, d) for x in xs])  # (n, rows, d)
    rows = dys.shape[1]
    dxs = np.einsum("ric,crj->irj", np.broadcast_to(a, (rows, *a.shape[1:])), dys)
    ds = np.einsum("rc,crj->rj", np.broadcast_to(b, (rows, b.shape[1])), dys)
    da = np.einsum("crj,irj->ric", dys, x)
    db = np.einsum("crj,rj->rc", dys, s.reshape(-1, d))
    if a.shape[0] == 1:
        da, db = da.sum(axis=0, keepdims=True), db.sum(axis=0, keepdims=True)
    return da.reshape(shape_a), db.reshape(shape_b), ds.reshape(s.shape), dxs.reshape((len(xs), *s.shape))


def _mix_streams_backward_loop(
    dy: np.ndarray, a: np.ndarray, b: np.ndarray, s: np.ndarray, xs: Sequence[np.ndarray]
) -> Grads:
    """Loop twin of :func:`mix_streams_backward_reference` (allocates, then runs the kernel)."""
    da, db = np.zeros(a.shape), np.zeros(b.shape)  # accumulated in float64
    ds, dxs = np.empty(s.shape, s.dtype), np.empty((len(xs), *s.shape), s.dtype)
    _mix_streams_backward_kernel(dy, a, b, s, as_kernel_terms(xs), da, db, ds, dxs)
    return da.astype(s.dtype, copy=False), db.astype(s.dtype, copy=False), ds, dxs


@njit(cache=True)
def _mix_streams_backward_kernel(dy: Any, a: Any, b: Any, s: Any, xs: Any, da: Any, db: Any, ds: Any, dxs: Any) -> None:
    """The loop of :func:`_mix_streams_backward_loop`: writes ``ds`` and ``dxs``, adds into
    the zeroed ``da`` and ``db``."""
    n_rows, d = s.size // s.shape[-1], s.shape[-1]
    a3, b2 = a.reshape((-1, a.shape[-2], a.shape[-1])), b.reshape((-1, b.shape[-1]))
    da3, db2 = da.reshape(a3.shape), db.reshape(b2.shape)
    dy3, dxs3 = dy.reshape((dy.shape[0], n_rows, d)), dxs.reshape((dxs.shape[0], n_rows, d))
    per_row = a3.shape[0] > 1
    for i in range(len(xs)):
        _mixed_rows(dy3, a3[:, i], xs[i].reshape((n_rows, d)), dxs3[i], da3[:, i], per_row)
    _mixed_rows(dy3, b2, s.reshape((n_rows, d)), ds.reshape((n_rows, d)), db2, per_row)


@njit(cache=True)
def _mixed_rows(dy3: Any, weights: Any, x: Any, dx: Any, dweights: Any, per_row: bool) -> None:
    """One stream x (rows, d) and its weights (1 or rows, m): dx[r] = sum_c weights[r, c] dy_c[r],
    and sum_j dy_c[r, j] x[r, j] added into dweights[r, c], row by row, each sum in the order of
    its index.

    The weights' sums go four columns at a time, apart from dx's loop: each adds its terms in
    its own column's order, as a loop of one column would, but four chains of additions are in
    flight at once instead of each waiting on the one before."""
    m, n_rows, d = dy3.shape
    for r in range(n_rows):
        row = r if per_row else 0
        for c in range(m):
            weight = weights[row, c]
            if c == 0:
                for j in range(d):
                    dx[r, j] = weight * dy3[c, r, j]
            else:
                for j in range(d):
                    dx[r, j] = dx[r, j] + weight * dy3[c, r, j]
        grouped = m - m % 4
        for c in range(0, grouped, 4):
            t0 = t1 = t2 = t3 = 0.0
            for j in range(d):
                xj = x[r, j]
                t0 += dy3[c, r, j] * xj
                t1 += dy3[c + 1, r, j] * xj
                t2 += dy3[c + 2, r, j] * xj
                t3 += dy3[c + 3, r, j] * xj
            dweights[row, c] += t0
            dweights[row, c + 1] += t1
            dweights[row, c + 2] += t2
            dweights[row, c + 3] += t3
        for c in range(grouped, m):
            total = 0.0
            for j in range(d):
                total += dy3[c, r, j] * x[r, j]
            dweights[row, c] += total


MIX_STREAMS_FORWARD = Twin(
    "mix_streams_forward", reference=mix_streams_forward_reference, loop=_mix_streams_forward_loop
)
MIX_STREAMS_BACKWARD = Twin(
    "mix_streams_backward", reference=mix_streams_backward_reference, loop=_mix_streams_backward_loop
)

Kept = tuple[np.ndarray, np.ndarray, np.ndarray, Any]


def mix_streams_forward(
    a: np.ndarray, b: np.ndarray, s: np.ndarray, xs: Sequence[np.ndarray]
) -> tuple[np.ndarray, Kept]:
    """y_c = sum_i a[i, c] x_i + b[c] s for the streams ``xs`` and ``s`` (each (..., d); or
    ``xs`` one array (n, ..., d), its rows the streams), with ``a`` (n, m) and ``b`` (m,), or
    (..., n, m) and (..., m) one mixture per row. Returns ``(y, kept)``: ``y`` the m columns
    stacked, (m, ..., d); ``kept`` what the backward takes."""
    if isinstance(xs, np.ndarray):
        a, b, s, terms = float_arrays(a, b, s, xs)
        streams_fit = terms.shape[1:] == s.shape
    elif xs:
        a, b, s, *separate = float_arrays(a, b, s, *xs)
        terms = tuple(separate)
        streams_fit = all(x.shape == s.shape for x in terms)
    else:
        raise ValueError("a mixture of streams needs at least one stream")
    shape, n = s.shape, len(terms)
    m = a.shape[-1] if a.ndim >= 2 else 0
    rows_of = () if a.ndim == 2 else shape[:-1]
    fits = streams_fit and len(shape) >= 1 and a.shape == (*rows_of, n, m) and b.shape == (*rows_of, m) and m >= 1
    if not fits:
        check_fit(False, "a", a, "b", b, "s", s, *(part for i, x in enumerate(terms) for part in (f"x_{i}", x)))
    return MIX_STREAMS_FORWARD.pick()(a, b, s, terms), (a, b, s, terms)


def mix_streams_backward(dy: np.ndarray, kept: Kept) -> Grads:
    """The VJP of :func:`mix_streams_forward` at ``dy`` from its ``kept``; returns ``(da, db,
    ds, dxs)``, shaped as ``a``, ``b``, ``s`` and (n, ..., d), one row per stream."""
    a, b, s, xs = kept
    dy = cotangent(dy, s.dtype, (a.shape[-1], *s.shape))
    return MIX_STREAMS_BACKWARD.pick()(dy, a, b, s, xs)
