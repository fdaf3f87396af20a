"""The linear map ``y = x W + b`` on rows ``x`` (n, d_in): twins and public kernels, and the
compiled matrix product the FFN and attention sublayer kernels are built of."""

from __future__ import annotations

import numpy as np

from lnref.autograd.kernels.checks import check_fit, float_arrays
from lnref.autograd.kernels.seam import Twin, njit
from lnref.process import blas


@njit(cache=True)
def matmul_kernel(a: np.ndarray, b: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b + bias for ``a`` (m, k) and ``b`` (k, n).

    Each output element is summed in a float64 accumulator that starts at the bias and adds
    the k products in order, then stored once. Output rows are taken four at a time, so that
    each row of ``b`` is read once for four of them, and the innermost loop runs along a row
    of ``b``: contiguous and free of reductions, which LLVM vectorizes without fastmath. That
    loop adds four consecutive products to each accumulator per pass, in the same order as
    one at a time (the same bits): the accumulators go through memory a quarter as often,
    which at the model's sizes is what the loop waits on.
    """
    m, kk = a.shape
    n = b.shape[1]
    acc = np.empty((4, n))
    for r0 in range(0, m, 4):
        rows = min(4, m - r0)
        for i in range(rows):
            for j in range(n):
                acc[i, j] = bias[j]
        if rows == 4:
            c0, c1, c2, c3 = acc[0], acc[1], acc[2], acc[3]
            tail = kk - kk % 4  # where the full fours end; the products after it go one at a time
            for p in range(0, tail, 4):
                a0, a1, a2, a3 = a[r0, p], a[r0 + 1, p], a[r0 + 2, p], a[r0 + 3, p]
                e0, e1, e2, e3 = a[r0, p + 1], a[r0 + 1, p + 1], a[r0 + 2, p + 1], a[r0 + 3, p + 1]
                f0, f1, f2, f3 = a[r0, p + 2], a[r0 + 1, p + 2], a[r0 + 2, p + 2], a[r0 + 3, p + 2]
                g0, g1, g2, g3 = a[r0, p + 3], a[r0 + 1, p + 3], a[r0 + 2, p + 3], a[r0 + 3, p + 3]
                b0, b1, b2, b3 = b[p], b[p + 1], b[p + 2], b[p + 3]
                for j in range(n):
                    x0, x1, x2, x3 = b0[j], b1[j], b2[j], b3[j]
                    c0[j] = (((c0[j] + a0 * x0) + e0 * x1) + f0 * x2) + g0 * x3
                    c1[j] = (((c1[j] + a1 * x0) + e1 * x1) + f1 * x2) + g1 * x3
                    c2[j] = (((c2[j] + a2 * x0) + e2 * x1) + f2 * x2) + g2 * x3
                    c3[j] = (((c3[j] + a3 * x0) + e3 * x1) + f3 * x2) + g3 * x3
            for p in range(tail, kk):
                a0, a1, a2, a3 = a[r0, p], a[r0 + 1, p], a[r0 + 2, p], a[r0 + 3, p]
                b_row = b[p]
                for j in range(n):
                    b_pj = b_row[j]
                    c0[j] += a0 * b_pj
                    c1[j] += a1 * b_pj
                    c2[j] += a2 * b_pj
                    c3[j] += a3 * b_pj
        else:
            for i in range(rows):
                c = acc[i]
                for p in range(kk):
                    a_ip = a[r0 + i, p]
                    b_row = b[p]
                    for j in range(n):
                        c[j] += a_ip * b_row[j]
        for i in range(rows):
            for j in range(n):
                out[r0 + i, j] = acc[i, j]


@njit(cache=True)
def linear_grads_kernel(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, dx: np.ndarray, dw: np.ndarray, db: np.ndarray
) -> None:
    """The three gradients of y = x @ w + b: ``dx = dy w^T``, ``dw = x^T dy``, ``db`` =
    column sums of ``dy``.

    (No flags and C-contiguous operands only: every call compiles to one specialization,
    which keeps a first run's compile time down.)"""
    n, d_out = dy.shape
    matmul_kernel(np.ascontiguousarray(x.T), dy, np.zeros(d_out), dw)
    sums = np.zeros(d_out)
    for r in range(n):
        dy_row = dy[r]
        for j in range(d_out):
            sums[j] += dy_row[j]
    for j in range(d_out):
        db[j] = sums[j]
    # w^T copied once, so that the product reads it along rows.
    matmul_kernel(dy, np.ascontiguousarray(w.T), np.zeros(w.shape[0]), dx)


def linear_forward_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``y = x @ w + b`` for rows ``x`` (n, d_in), ``w`` (d_in, d_out), ``b`` (d_out,); NumPy twin."""
    y = x @ w
    y += b
    return y


def linear_backward_reference(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient of the linear map; NumPy twin: ``dx = dy w^T``, ``dw = x^T dy``, ``db`` = row sums of ``dy``."""
    return dy @ w.T, weight_gradient(x, dy), dy.sum(axis=0)


def weight_gradient(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``x^T dy`` for rows ``x`` (n, d_in) and ``dy`` (n, d_out). A map that widens (d_out >
    d_in) gets it as the transpose of ``dy^T x`` (a view, in Fortran order): BLAS's product
    runs faster with the longer side of its result as its rows."""
    return (dy.T @ x).T if dy.shape[1] > x.shape[1] else x.T @ dy


def _linear_forward_loop(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Loop twin of :func:`linear_forward_reference` (allocates, then runs :func:`matmul_kernel`)."""
    y = np.empty((x.shape[0], w.shape[1]), x.dtype)
    matmul_kernel(x, w, b, y)
    return y


def _linear_backward_loop(dy: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loop twin of :func:`linear_backward_reference` (allocates, then runs
    :func:`linear_grads_kernel`)."""
    dtype = x.dtype
    dx, dw, db = np.empty(x.shape, dtype), np.empty(w.shape, dtype), np.empty(w.shape[1], dtype)
    linear_grads_kernel(dy, x, w, dx, dw, db)
    return dx, dw, db


# The work is n * d_in * d_out, the multiply-adds of the product. The loops beat BLAS while a
# call's set-up costs more than its arithmetic, and while BLAS's second thread has too little to
# share. Where OpenBLAS packs both operands of every product, that holds up to the gradient
# checker's batches of the small model's FFN maps, at one BLAS thread and at two. Where it runs
# small products through its small-matrix kernels, which pack nothing
# (``blas.small_products_unpacked``), BLAS's set-up is far cheaper and the loops pay only up to
# two of the small model's batches. ``benchmarks/bench_ops.py`` times both twins on either side.
LOOP_PAYS_UP_TO = 32 * 16 * 64 if blas.small_products_unpacked() else 512 * 16 * 64
LINEAR_FORWARD = Twin(
    "linear_forward", reference=linear_forward_reference, loop=_linear_forward_loop, loop_pays_up_to=LOOP_PAYS_UP_TO
)
LINEAR_BACKWARD = Twin(
    "linear_backward", reference=linear_backward_reference, loop=_linear_backward_loop, loop_pays_up_to=LOOP_PAYS_UP_TO
)


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``y = x @ w + b`` for rows ``x`` (n, d_in); see :func:`linear_forward_reference`."""
    x, w, b = float_arrays(x, w, b)
    check_fit(
        x.ndim == 2 and w.ndim == 2 and x.shape[1] == w.shape[0] and b.shape == w.shape[1:], "x", x, "w", w, "b", b
    )
    return LINEAR_FORWARD.pick(x.shape[0] * w.size)(x, w, b)


def linear_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dx, dw, db)`` of the linear map; see :func:`linear_backward_reference`."""
    dy, x, w = float_arrays(dy, x, w)
    check_fit(
        x.ndim == 2 and w.ndim == 2 and x.shape[1] == w.shape[0] and dy.shape == (x.shape[0], w.shape[1]),
        "dy",
        dy,
        "x",
        x,
        "w",
        w,
    )
    return LINEAR_BACKWARD.pick(x.shape[0] * w.size)(dy, x, w)
