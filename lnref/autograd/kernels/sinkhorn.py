"""Sinkhorn-Knopp rounds over square matrices ``logits`` (rows, n, n): twins and public kernels.

    M_0 = exp(logits)
    R_k = M_{k-1} / (row sums of M_{k-1}),   M_k = R_k / (column sums of R_k),   k = 1..K

and the output is M_K, K = ``iterations`` rounds (mHC's H_res). The backward is the derivative
of these K rounds as they run, not of the exact doubly stochastic projection they approach.

The exponential is NumPy's in both twins (a compiled exp may differ from it in the last bit),
and no maximum is subtracted first (the quotients would not change, but M_0's bits would), so
that M_0, and with it every round, has the bits of the same rounds composed of ``ops.exp``,
``ops.sum`` and ``ops.div``. The loops sum a row or a column in index order, as NumPy sums
fewer than 8 elements; from n = 8 on NumPy's row sums pair their terms, and the two agree to
rounding.
Logits holding NaN or inf raise ``ValueError`` (:data:`NONFINITE_LOGITS`), and so does a row or
column whose sum is 0 or not finite (:data:`DEGENERATE_SUM`): an exp that overflows, or a row
or column whose exps all underflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from lnref.autograd.kernels.checks import check_fit, expect_ndim, float_arrays
from lnref.autograd.kernels.seam import Twin, njit

NONFINITE_LOGITS = "logits hold NaN or inf"
DEGENERATE_SUM = "a row or column sum is 0 or not finite (exp(logits) overflows or underflows)"

Round = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _divided_by_sums(m: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``(m / sums, sums)``, the sums over ``axis`` kept as an axis of length 1."""
    sums = m.sum(axis=axis, keepdims=True)
    if not ((sums > 0) & (sums < np.inf)).all():
        raise ValueError(DEGENERATE_SUM)
    return m / sums, sums


def _rounds(exp_logits: np.ndarray, iterations: int) -> Iterator[Round]:
    """Each round's ``(R_k, row sums, M_k, column sums)``, k = 1..iterations."""
    m = exp_logits
    for _ in range(iterations):
        r, row_sums = _divided_by_sums(m, -1)
        m, column_sums = _divided_by_sums(r, -2)
        yield r, row_sums, m, column_sums


def _exp(logits: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # reported as NONFINITE_LOGITS or DEGENERATE_SUM
        return np.exp(logits)


def sinkhorn_forward_reference(logits: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """``iterations`` Sinkhorn-Knopp rounds on ``exp(logits)`` (rows, n, n); NumPy twin::

        M_0 = exp(logits)
        R_k = M_{k-1} / sum_j M_{k-1}[:, :, j]      (each row by its sum)
        M_k = R_k / sum_i R_k[:, i, :]              (each column by its sum)

    Returns ``(M_K, M_0)``: the backward recomputes the rounds from M_0.
    """
    if not np.isfinite(logits).all():
        raise ValueError(NONFINITE_LOGITS)
    exp_logits = _exp(logits)
    m = exp_logits
    for _ in range(iterations):
        m, _ = _divided_by_sums(m, -1)
        m, _ = _divided_by_sums(m, -2)
    return m, exp_logits


def _sinkhorn_forward_loop(logits: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of :func:`sinkhorn_forward_reference` (allocates, then runs the kernel)."""
    exp_logits = _exp(logits)
    m = np.empty(logits.shape, logits.dtype)
    _sinkhorn_forward_kernel(logits, exp_logits, iterations, m)
    return m, exp_logits


@njit(cache=True)
def _sinkhorn_forward_kernel(logits: np.ndarray, exp_logits: np.ndarray, iterations: int, m: np.ndarray) -> None:
    """The loop of :func:`_sinkhorn_forward_loop`, writing ``m`` round after round in place:
    each row divided by its sum, then each column by its sum (the sums in index order)."""
    count, n = logits.shape[0], logits.shape[1]
    finite = True
    for t in range(count):
        out = m[t]
        for i in range(n):
            for j in range(n):
                finite &= math.isfinite(logits[t, i, j])
                out[i, j] = exp_logits[t, i, j]
        if not finite:
            raise ValueError(NONFINITE_LOGITS)
        for _ in range(iterations):
            for i in range(n):
                total = 0.0
                for j in range(n):
                    total += out[i, j]
                if not 0.0 < total < math.inf:
                    raise ValueError(DEGENERATE_SUM)
                for j in range(n):
                    out[i, j] = out[i, j] / total
            for j in range(n):
                total = 0.0
                for i in range(n):
                    total += out[i, j]
                if not 0.0 < total < math.inf:
                    raise ValueError(DEGENERATE_SUM)
                for i in range(n):
                    out[i, j] = out[i, j] / total


# Matrices the backward's kernel takes at a time, each in a lane of its innermost loops.
LANES = 64


@njit(cache=True)
def _sum_into(totals: np.ndarray, terms: np.ndarray, lanes: int) -> None:
    """totals[u] <- sum over k of terms[k, u] in index order, for the first ``lanes`` lanes; a
    sum that is 0 or not finite raises :data:`DEGENERATE_SUM`."""
    for u in range(lanes):
        totals[u] = 0.0
    for k in range(terms.shape[0]):
        term = terms[k]
        for u in range(lanes):
            totals[u] += term[u]
    degenerate = False
    for u in range(lanes):
        degenerate |= not 0.0 < totals[u] < math.inf
    if degenerate:
        raise ValueError(DEGENERATE_SUM)


def sinkhorn_backward_reference(dm: np.ndarray, exp_logits: np.ndarray, iterations: int) -> np.ndarray:
    """Gradient of the rounds; NumPy twin. Each division y = x / s by the sums s of x over a row
    (or a column) passes back

        dx = (dy - sum(dy * y)) / s        (the sum over that row, or column)

    Going back from dM_K: through M_k = R_k / column sums, then R_k = M_{k-1} / row sums, for
    k = K..1 (the rounds recomputed from M_0, as the forward ran them), and at last
    ``dlogits = dM_0 * M_0`` (exp's derivative).
    """
    d = dm
    for r, row_sums, m, column_sums in reversed(list(_rounds(exp_logits, iterations))):
        d = (d - (d * m).sum(axis=-2, keepdims=True)) / column_sums
        d = (d - (d * r).sum(axis=-1, keepdims=True)) / row_sums
    return d * exp_logits


def _sinkhorn_backward_loop(dm: np.ndarray, exp_logits: np.ndarray, iterations: int) -> np.ndarray:
    """Loop twin of :func:`sinkhorn_backward_reference` (allocates, then runs the kernel)."""
    dlogits = np.empty(exp_logits.shape, exp_logits.dtype)
    _sinkhorn_backward_kernel(dm, exp_logits, iterations, dlogits)
    return dlogits


@njit(cache=True)
def _sinkhorn_backward_kernel(dm: np.ndarray, exp_logits: np.ndarray, iterations: int, dlogits: np.ndarray) -> None:
    """The loop of :func:`_sinkhorn_backward_loop`, writing ``dlogits``. Up to :data:`LANES`
    matrices at a time, entry (i, j) of each side by side, so that every innermost loop runs
    across the matrices (contiguous, free of reductions, vectorized by LLVM) where one 4 x 4
    matrix at a time leaves loops too short to; each matrix still gets the same operations in
    the same order, so the bits are those of one at a time. The rounds are recomputed into scratch of the input's dtype
    (so, in float32 too, the very values the forward stored; their sums are the forward's,
    which it checked), then walked back in float64: through y = x / s by row sums s,
    d[i, j] <- (d[i, j] - sum_j' d[i, j'] y[i, j']) * (1 / s[i]), and alike by column sums."""
    count, n = exp_logits.shape[0], exp_logits.shape[1]
    row_outputs = np.empty((iterations, n, n, LANES), exp_logits.dtype)
    column_outputs = np.empty((iterations, n, n, LANES), exp_logits.dtype)
    row_sums, column_sums = np.empty((iterations, n, LANES)), np.empty((iterations, n, LANES))
    m = np.empty((n, n, LANES), exp_logits.dtype)
    d = np.empty((n, n, LANES))
    dot, scale = np.empty(LANES), np.empty(LANES)
    for start in range(0, count, LANES):
        lanes = min(LANES, count - start)
        for i in range(n):
            for j in range(n):
                for u in range(lanes):
                    m[i, j, u] = exp_logits[start + u, i, j]
                    d[i, j, u] = dm[start + u, i, j]
        previous = m
        for k in range(iterations):
            r, c, rs, cs = row_outputs[k], column_outputs[k], row_sums[k], column_sums[k]
            for i in range(n):
                _sum_into(rs[i], previous[i], lanes)
                for j in range(n):
                    for u in range(lanes):
                        r[i, j, u] = previous[i, j, u] / rs[i, u]
            for j in range(n):
                _sum_into(cs[j], r[:, j], lanes)
                for i in range(n):
                    for u in range(lanes):
                        c[i, j, u] = r[i, j, u] / cs[j, u]
            previous = c
        for k in range(iterations - 1, -1, -1):
            r, c, rs, cs = row_outputs[k], column_outputs[k], row_sums[k], column_sums[k]
            for j in range(n):
                for u in range(lanes):
                    dot[u] = 0.0
                    scale[u] = 1.0 / cs[j, u]
                for i in range(n):
                    for u in range(lanes):
                        dot[u] += d[i, j, u] * c[i, j, u]
                for i in range(n):
                    for u in range(lanes):
                        d[i, j, u] = (d[i, j, u] - dot[u]) * scale[u]
            for i in range(n):
                for u in range(lanes):
                    dot[u] = 0.0
                    scale[u] = 1.0 / rs[i, u]
                for j in range(n):
                    for u in range(lanes):
                        dot[u] += d[i, j, u] * r[i, j, u]
                for j in range(n):
                    for u in range(lanes):
                        d[i, j, u] = (d[i, j, u] - dot[u]) * scale[u]
        for i in range(n):
            for j in range(n):
                for u in range(lanes):
                    dlogits[start + u, i, j] = d[i, j, u] * exp_logits[start + u, i, j]


SINKHORN_FORWARD = Twin("sinkhorn_forward", reference=sinkhorn_forward_reference, loop=_sinkhorn_forward_loop)
SINKHORN_BACKWARD = Twin("sinkhorn_backward", reference=sinkhorn_backward_reference, loop=_sinkhorn_backward_loop)


def _check_square(name: str, a: np.ndarray) -> None:
    expect_ndim(name, a, 3)
    if a.shape[1] != a.shape[2]:
        raise ValueError(f"{name} must be square matrices (rows, n, n), got shape {a.shape}")


def _check_iterations(iterations: int) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")


def sinkhorn_forward(logits: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Sinkhorn-Knopp forward of ``logits`` (rows, n, n); returns ``(M_K, exp(logits))`` (see
    :func:`sinkhorn_forward_reference`)."""
    (logits,) = float_arrays(logits)
    _check_square("logits", logits)
    _check_iterations(iterations)
    return SINKHORN_FORWARD.pick()(logits, int(iterations))


def sinkhorn_backward(dm: np.ndarray, exp_logits: np.ndarray, iterations: int) -> np.ndarray:
    """Sinkhorn-Knopp backward; returns ``dlogits`` (see :func:`sinkhorn_backward_reference`)."""
    dm, exp_logits = float_arrays(dm, exp_logits)
    _check_square("exp_logits", exp_logits)
    check_fit(dm.shape == exp_logits.shape, "dm", dm, "exp_logits", exp_logits)
    _check_iterations(iterations)
    return SINKHORN_BACKWARD.pick()(dm, exp_logits, int(iterations))
