"""ScaleNorm over the last axis of rows ``x`` (n, d): twins and public kernels.

    y = g x / max(||x||, eps)        (Nguyen and Salazar 2019), g a 0-d array

The L2 normalization of ``ops.l2_normalize`` is the same map at g = 1 (with an eps no norm
it accepts reaches). A row's sum of squares that is not finite (a NaN or inf in the row, or a
finite row whose squares overflow) raises ``ValueError`` (:data:`NONFINITE_SQUARES`).
"""

from __future__ import annotations

import math

import numpy as np

from lnref.autograd.kernels.checks import check_fit, expect_ndim, float_arrays
from lnref.autograd.kernels.seam import Twin, njit

NONFINITE_SQUARES = "x holds NaN or inf (a row's sum of squares is not finite)"


def scale_norm_forward_reference(x: np.ndarray, g: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """ScaleNorm of ``x`` (n, d); NumPy twin::

        norm = sqrt(sum_j x_j^2)
        y    = x * (g / max(norm, eps))

    Returns ``(y, norm)``, ``norm`` (n,) unclamped: the backward tells the clamped rows by it.
    """
    squares = (x * x).sum(axis=-1)
    if not np.isfinite(squares).all():
        raise ValueError(NONFINITE_SQUARES)
    norm = np.sqrt(squares)
    return x * (g / np.maximum(norm, eps))[:, None], norm


def _scale_norm_forward_loop(x: np.ndarray, g: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of :func:`scale_norm_forward_reference` (allocates, then runs the kernel)."""
    y, norm = np.empty(x.shape, x.dtype), np.empty(x.shape[0], x.dtype)
    _scale_norm_forward_kernel(x, float(g), eps, y, norm)
    return y, norm


@njit(cache=True)
def _scale_norm_forward_kernel(x: np.ndarray, g: float, eps: float, y: np.ndarray, norm: np.ndarray) -> None:
    """The loop of :func:`_scale_norm_forward_loop`, writing ``y`` and ``norm``."""
    n, d = x.shape
    for i in range(n):
        row = x[i]
        squares = 0.0
        for j in range(d):
            squares += row[j] * row[j]
        if not math.isfinite(squares):
            raise ValueError(NONFINITE_SQUARES)
        length = math.sqrt(squares)
        scale = g / max(length, eps)
        out = y[i]
        for j in range(d):
            out[j] = row[j] * scale
        norm[i] = length


def scale_norm_backward_reference(
    dy: np.ndarray, x: np.ndarray, g: np.ndarray, norm: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of ScaleNorm; NumPy twin. With ``r = max(norm, eps)``, ``x_hat = x / r`` and
    ``p = <dy, x_hat>`` per row::

        dx = (g / r) (dy - x_hat p)    where norm >= eps (the sphere: the radial part removed)
        dx = (g / r) dy                where norm < eps  (the clamp: r is the constant eps)
        dg = sum over rows of p

    At ``norm == eps`` the clamp is taken as inactive (the radial term kept), as PyTorch's
    ``clamp`` takes the derivative at its bound.
    """
    r = np.maximum(norm, eps)
    x_hat = x / r[:, None]
    p = (dy * x_hat).sum(axis=-1)
    radial = np.where(norm >= eps, p, 0.0)
    dx = (g / r)[:, None] * (dy - x_hat * radial[:, None])
    return dx, np.asarray(p.sum(), x.dtype)


def _scale_norm_backward_loop(
    dy: np.ndarray, x: np.ndarray, g: np.ndarray, norm: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of :func:`scale_norm_backward_reference` (allocates, then runs the kernel)."""
    dx, dg = np.empty(x.shape, x.dtype), np.zeros(1)
    _scale_norm_backward_kernel(dy, x, float(g), norm, eps, dx, dg)
    return dx, np.asarray(dg[0], x.dtype)


@njit(cache=True)
def _scale_norm_backward_kernel(
    dy: np.ndarray, x: np.ndarray, g: float, norm: np.ndarray, eps: float, dx: np.ndarray, dg: np.ndarray
) -> None:
    """The loop of :func:`_scale_norm_backward_loop`, writing ``dx`` and adding into the
    (zeroed, float64, one element) ``dg``."""
    n, d = x.shape
    total = 0.0
    for i in range(n):
        r = max(norm[i], eps)
        x_row = x[i]
        dy_row = dy[i]
        p = 0.0
        for j in range(d):
            p += dy_row[j] * (x_row[j] / r)
        total += p
        radial = p if norm[i] >= eps else 0.0
        scale = g / r
        dx_row = dx[i]
        for j in range(d):
            dx_row[j] = scale * (dy_row[j] - (x_row[j] / r) * radial)
    dg[0] += total


SCALE_NORM_FORWARD = Twin("scale_norm_forward", reference=scale_norm_forward_reference, loop=_scale_norm_forward_loop)
SCALE_NORM_BACKWARD = Twin(
    "scale_norm_backward", reference=scale_norm_backward_reference, loop=_scale_norm_backward_loop
)


def _check_gain(g: np.ndarray) -> None:
    if g.shape != ():
        raise ValueError(f"g must be a scalar (0-d), got shape {g.shape}")


def scale_norm_forward(x: np.ndarray, g: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """ScaleNorm forward of ``x`` (n, d); returns ``(y, norm)`` (see
    :func:`scale_norm_forward_reference`)."""
    x, g = float_arrays(x, g)
    expect_ndim("x", x, 2)
    _check_gain(g)
    return SCALE_NORM_FORWARD.pick()(x, g, float(eps))


def scale_norm_backward(
    dy: np.ndarray, x: np.ndarray, g: np.ndarray, norm: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """ScaleNorm backward; returns ``(dx, dg)`` (see :func:`scale_norm_backward_reference`)."""
    dy, x, g, norm = float_arrays(dy, x, g, norm)
    expect_ndim("x", x, 2)
    _check_gain(g)
    check_fit(dy.shape == x.shape and norm.shape == x.shape[:1], "dy", dy, "x", x, "norm", norm)
    return SCALE_NORM_BACKWARD.pick()(dy, x, g, norm, float(eps))
