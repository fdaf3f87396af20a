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


# Matrices the kernels take at a time, each in a lane of their innermost loops.
LANES = 64


@njit(cache=True)
def _check_sums(sums: np.ndarray, lanes: int) -> None:
    """Raise :data:`DEGENERATE_SUM` where any of ``sums[:, :lanes]`` is 0 or not finite."""
    degenerate = False
    for i in range(sums.shape[0]):
        for u in range(lanes):
            degenerate |= not 0.0 < sums[i, u] < math.inf
    if degenerate:
        raise ValueError(DEGENERATE_SUM)


@njit(cache=True)
def _divide_rows(x: np.ndarray, y: np.ndarray, sums: np.ndarray, lanes: int) -> None:
    """Half a round over the first ``lanes`` lanes of (n, n, lanes) matrices ``x``::

        sums[i, u] = sum_j x[i, j, u]        (in index order, in float64)
        y[i, j, u] = x[i, j, u] / sums[i, u]  (rounded once, to the dtype of y)

    ``y`` must not be ``x``: LLVM vectorizes the quotients only where it can tell the two
    apart. They are ``np.divide`` of two numbers, IEEE division as ``/`` is, but without the
    zero test by which Numba raises ZeroDivisionError, a branch per quotient that keeps the
    loop from being vectorized (the sums are checked first, so none is 0)."""
    n = x.shape[0]
    for i in range(n):
        for u in range(lanes):
            sums[i, u] = 0.0
        for j in range(n):
            for u in range(lanes):
                sums[i, u] += x[i, j, u]
    _check_sums(sums, lanes)
    for i in range(n):
        for j in range(n):
            for u in range(lanes):
                y[i, j, u] = np.divide(x[i, j, u], sums[i, u])


@njit(cache=True)
def _divide_columns(x: np.ndarray, y: np.ndarray, sums: np.ndarray, lanes: int) -> None:
    """The other half of a round::

        sums[j, u] = sum_i x[i, j, u]        (in index order, in float64)
        y[i, j, u] = x[i, j, u] / sums[j, u]  (rounded once, to the dtype of y)

    with ``y`` apart from ``x`` and the quotients ``np.divide``, as in :func:`_divide_rows`."""
    n = x.shape[0]
    for j in range(n):
        for u in range(lanes):
            sums[j, u] = 0.0
    for i in range(n):
        for j in range(n):
            for u in range(lanes):
                sums[j, u] += x[i, j, u]
    _check_sums(sums, lanes)
    for i in range(n):
        for j in range(n):
            for u in range(lanes):
                y[i, j, u] = np.divide(x[i, j, u], sums[j, u])


@njit(cache=True)
def _sinkhorn_forward_kernel(logits: np.ndarray, exp_logits: np.ndarray, iterations: int, m: np.ndarray) -> None:
    """The loop of :func:`_sinkhorn_forward_loop`, writing ``m``. Up to :data:`LANES` matrices
    at a time, entry (i, j) of each side by side (n, n, lanes), so that every innermost loop
    runs across the matrices (contiguous, free of reductions, vectorized by LLVM) where one
    4 x 4 matrix at a time leaves loops too short to. Each matrix still gets the same
    operations in the same order (each row, then each column, summed in index order and
    divided by its sum, round after round), so the bits are those of one matrix at a time.
    A row's division leaves the other rows' sums as they were, so all n sums are taken
    before the n divisions. Every logit is checked before the first round, as the NumPy twin
    checks them."""
    count, n = logits.shape[0], logits.shape[1]
    finite = True
    for t in range(count):
        for i in range(n):
            for j in range(n):
                finite &= math.isfinite(logits[t, i, j])
    if not finite:
        raise ValueError(NONFINITE_LOGITS)
    width = min(LANES, count)
    x, r = np.empty((n, n, width), exp_logits.dtype), np.empty((n, n, width), exp_logits.dtype)
    sums = np.empty((n, width))
    for start in range(0, count, width):
        lanes = min(width, count - start)
        for i in range(n):
            for j in range(n):
                for u in range(lanes):
                    x[i, j, u] = exp_logits[start + u, i, j]
        for _ in range(iterations):
            _divide_rows(x, r, sums, lanes)
            _divide_columns(r, x, sums, lanes)
        for u in range(lanes):
            for i in range(n):
                for j in range(n):
                    m[start + u, i, j] = x[i, j, u]


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
def _walk_back_rows(
    d: np.ndarray, y: np.ndarray, sums: np.ndarray, dots: np.ndarray, scales: np.ndarray, lanes: int
) -> None:
    """Back through y = x / s by row sums s (:func:`_divide_rows`), over the first ``lanes``
    lanes, in float64::

        dots[i, u] = sum_j d[i, j, u] y[i, j, u]     (in index order)
        d[i, j, u] <- (d[i, j, u] - dots[i, u]) * scales[i, u],   scales = 1 / s

    ``scales`` are ``np.divide`` too (see :func:`_divide_rows`)."""
    n = d.shape[0]
    for i in range(n):
        for u in range(lanes):
            dots[i, u] = 0.0
            scales[i, u] = np.divide(1.0, sums[i, u])
        for j in range(n):
            for u in range(lanes):
                dots[i, u] += d[i, j, u] * y[i, j, u]
    for i in range(n):
        for j in range(n):
            for u in range(lanes):
                d[i, j, u] = (d[i, j, u] - dots[i, u]) * scales[i, u]


@njit(cache=True)
def _walk_back_columns(
    d: np.ndarray, y: np.ndarray, sums: np.ndarray, dots: np.ndarray, scales: np.ndarray, lanes: int
) -> None:
    """Back through y = x / s by column sums s (:func:`_divide_columns`), as
    :func:`_walk_back_rows`::

        dots[j, u] = sum_i d[i, j, u] y[i, j, u]     (in index order)
        d[i, j, u] <- (d[i, j, u] - dots[j, u]) * scales[j, u],   scales = 1 / s
    """
    n = d.shape[0]
    for j in range(n):
        for u in range(lanes):
            dots[j, u] = 0.0
            scales[j, u] = np.divide(1.0, sums[j, u])
    for i in range(n):
        for j in range(n):
            for u in range(lanes):
                dots[j, u] += d[i, j, u] * y[i, j, u]
    for i in range(n):
        for j in range(n):
            for u in range(lanes):
                d[i, j, u] = (d[i, j, u] - dots[j, u]) * scales[j, u]


@njit(cache=True)
def _sinkhorn_backward_kernel(dm: np.ndarray, exp_logits: np.ndarray, iterations: int, dlogits: np.ndarray) -> None:
    """The loop of :func:`_sinkhorn_backward_loop`, writing ``dlogits``, in the lanes of
    :func:`_sinkhorn_forward_kernel` and with the bits of one matrix at a time. The rounds are
    recomputed by the forward's own half rounds into scratch of the input's dtype (so, in
    float32 too, the very values the forward stored; their sums are the forward's, which it
    checked), then walked back in float64 (:func:`_walk_back_columns`, :func:`_walk_back_rows`)
    from round K to round 1. The scratch holds every round of one block of lanes (2 K n^2 of
    the dtype and 2 K n float64 sums a lane), as many lanes as there are matrices up to
    :data:`LANES`."""
    count, n = exp_logits.shape[0], exp_logits.shape[1]
    width = min(LANES, count)
    row_outputs = np.empty((iterations, n, n, width), exp_logits.dtype)
    column_outputs = np.empty((iterations, n, n, width), exp_logits.dtype)
    row_sums, column_sums = np.empty((iterations, n, width)), np.empty((iterations, n, width))
    m = np.empty((n, n, width), exp_logits.dtype)
    d = np.empty((n, n, width))
    dots, scales = np.empty((n, width)), np.empty((n, width))
    for start in range(0, count, width):
        lanes = min(width, count - start)
        for i in range(n):
            for j in range(n):
                for u in range(lanes):
                    m[i, j, u] = exp_logits[start + u, i, j]
                    d[i, j, u] = dm[start + u, i, j]
        previous = m
        for k in range(iterations):
            _divide_rows(previous, row_outputs[k], row_sums[k], lanes)
            _divide_columns(row_outputs[k], column_outputs[k], column_sums[k], lanes)
            previous = column_outputs[k]
        for k in range(iterations - 1, -1, -1):
            _walk_back_columns(d, column_outputs[k], column_sums[k], dots, scales, lanes)
            _walk_back_rows(d, row_outputs[k], row_sums[k], dots, scales, lanes)
        for u in range(lanes):
            for i in range(n):
                for j in range(n):
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
