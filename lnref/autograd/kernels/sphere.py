"""A normalized interpolation between two directions: twins and public kernels.

A step on the unit sphere from the direction of ``a`` towards that of ``b`` at a learned
rate per feature, back onto the sphere (``ops.normalized_lerp``), on rows ``a``, ``b``
(n, d) and a rate ``t`` (d,) used times a constant ``c``:

    u = a / ||a||,   v = b / ||b||,   w = |c t|
    m = u + w (v - u),   y = m / ||m||

Each division is the L2 normalization's (``ops.l2_normalize``: x times 1 / ||x||), and a row
whose norm is 0 (or underflows to 0) has no direction: the kernels refuse it, as that op
does, with :data:`NO_DIRECTION`. Residuals: the three norms of each row, ``norms`` (3, n):
||a||, ||b||, ||m||; the backward recomputes u, v and m from them as the forward computed them.
"""

from __future__ import annotations

import math

import numpy as np

from lnref.autograd.kernels.checks import check_fit, cotangent, float_arrays
from lnref.autograd.kernels.seam import Twin, njit

NO_DIRECTION = "a vector of norm 0 has no direction"
NONFINITE_SQUARES = "a row holds NaN or inf (its sum of squares is not finite)"

Arrays = tuple[np.ndarray, ...]


def _normalized(x: np.ndarray, tiny: float) -> tuple[np.ndarray, np.ndarray]:
    squares = (x * x).sum(axis=-1)
    if not np.isfinite(squares).all():
        raise ValueError(NONFINITE_SQUARES)
    norm = np.sqrt(squares)
    if not (norm >= tiny).all():
        raise ValueError(NO_DIRECTION)
    return x * (1.0 / norm)[:, None], norm


def _normalized_backward(dy: np.ndarray, x: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """dx = (dy - x_hat <dy, x_hat>) / ||x||, x_hat = x / ||x||: the radial part removed."""
    x_hat = x / norm[:, None]
    return (1.0 / norm)[:, None] * (dy - x_hat * (dy * x_hat).sum(axis=-1)[:, None])


def normalized_lerp_forward_reference(
    a: np.ndarray, b: np.ndarray, t: np.ndarray, c: float, tiny: float
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin; returns ``(y, norms)``."""
    u, norm_a = _normalized(a, tiny)
    v, norm_b = _normalized(b, tiny)
    y, norm_m = _normalized(u + np.abs(c * t) * (v - u), tiny)
    return y, np.stack((norm_a, norm_b, norm_m))


def normalized_lerp_backward_reference(
    dy: np.ndarray, a: np.ndarray, b: np.ndarray, t: np.ndarray, c: float, norms: np.ndarray
) -> Arrays:
    """NumPy twin of the VJP; returns ``(da, db, dt)``. With u, v, w and m recomputed from
    ``a``, ``b``, ``t`` and the norms as the forward computed them::

        dm = (dy - y <dy, y>) / ||m||                   (the normalization's VJP)
        dw = sum over rows of dm * (v - u),   dt = c sign(c t) dw
        du = dm - w dm,   dv = w dm
        da, db = the normalization's VJP at du, dv
    """
    u, v, w = a * (1.0 / norms[0])[:, None], b * (1.0 / norms[1])[:, None], np.abs(c * t)
    m = u + w * (v - u)
    dm = _normalized_backward(dy, m, norms[2])
    dw = (dm * (v - u)).sum(axis=0)
    du, dv = dm - w * dm, w * dm
    return _normalized_backward(du, a, norms[0]), _normalized_backward(dv, b, norms[1]), dw * np.sign(c * t) * c


@njit(cache=True)
def _normalize_row(x: np.ndarray, tiny: float, out: np.ndarray) -> float:
    """out = x / ||x|| (x times 1 / ||x||, as the L2 normalization's loop); returns ||x||."""
    squares = 0.0
    for j in range(x.size):
        squares += x[j] * x[j]
    if not math.isfinite(squares):
        raise ValueError(NONFINITE_SQUARES)
    length = math.sqrt(squares)
    if not length >= tiny:
        raise ValueError(NO_DIRECTION)
    scale = 1.0 / length
    for j in range(x.size):
        out[j] = x[j] * scale
    return length


@njit(cache=True)
def _normalize_row_backward(dy: np.ndarray, x: np.ndarray, length: float, dx: np.ndarray) -> None:
    """dx = (dy - x_hat <dy, x_hat>) / ||x||, as the L2 normalization's backward loop."""
    p = 0.0
    for j in range(x.size):
        p += dy[j] * (x[j] / length)
    scale = 1.0 / length
    for j in range(x.size):
        dx[j] = scale * (dy[j] - (x[j] / length) * p)


@njit(cache=True)
def _lerp_row(u: np.ndarray, v: np.ndarray, t: np.ndarray, c: float, m: np.ndarray) -> None:
    """m = u + |c t| (v - u)."""
    for j in range(u.size):
        m[j] = u[j] + abs(c * t[j]) * (v[j] - u[j])


@njit(cache=True)
def _normalized_lerp_forward_kernel(
    a: np.ndarray, b: np.ndarray, t: np.ndarray, c: float, tiny: float, y: np.ndarray, norms: np.ndarray
) -> None:
    """The loop of :func:`_normalized_lerp_forward_loop`, writing ``y`` and ``norms``."""
    n, d = a.shape
    u, v, m = np.empty(d), np.empty(d), np.empty(d)
    for i in range(n):
        norms[0, i] = _normalize_row(a[i], tiny, u)
        norms[1, i] = _normalize_row(b[i], tiny, v)
        _lerp_row(u, v, t, c, m)
        norms[2, i] = _normalize_row(m, tiny, y[i])


def _normalized_lerp_forward_loop(
    a: np.ndarray, b: np.ndarray, t: np.ndarray, c: float, tiny: float
) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of :func:`normalized_lerp_forward_reference` (allocates, runs the kernel)."""
    y, norms = np.empty(a.shape, a.dtype), np.empty((3, a.shape[0]), a.dtype)
    _normalized_lerp_forward_kernel(a, b, t, c, tiny, y, norms)
    return y, norms


@njit(cache=True)
def _normalized_lerp_backward_kernel(
    dy: np.ndarray, a: np.ndarray, b: np.ndarray, t: np.ndarray, c: float, norms: np.ndarray,
    da: np.ndarray, db: np.ndarray, dt: np.ndarray,
) -> None:  # fmt: skip
    """The loop of :func:`_normalized_lerp_backward_loop`, writing ``da``, ``db`` and ``dt``
    (the gradient of w = |c t| summed in float64 first)."""
    n, d = a.shape
    u, v, m, dm, du, dv, dw = np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.zeros(d)
    for i in range(n):
        norm_a, norm_b = norms[0, i], norms[1, i]
        for j in range(d):  # u and v as the forward's loop made them
            u[j] = a[i, j] * (1.0 / norm_a)
            v[j] = b[i, j] * (1.0 / norm_b)
        _lerp_row(u, v, t, c, m)
        _normalize_row_backward(dy[i], m, norms[2, i], dm)
        for j in range(d):
            dw[j] += dm[j] * (v[j] - u[j])
            dv[j] = abs(c * t[j]) * dm[j]
            du[j] = dm[j] - dv[j]
        _normalize_row_backward(du, a[i], norm_a, da[i])
        _normalize_row_backward(dv, b[i], norm_b, db[i])
    for j in range(d):
        dt[j] = dw[j] * np.sign(c * t[j]) * c


def _normalized_lerp_backward_loop(
    dy: np.ndarray, a: np.ndarray, b: np.ndarray, t: np.ndarray, c: float, norms: np.ndarray
) -> Arrays:
    """Loop twin of :func:`normalized_lerp_backward_reference` (allocates, runs the kernel)."""
    da, db, dt = np.empty(a.shape, a.dtype), np.empty(b.shape, b.dtype), np.empty(t.shape, t.dtype)
    _normalized_lerp_backward_kernel(dy, a, b, t, c, norms, da, db, dt)
    return da, db, dt


NORMALIZED_LERP_FORWARD = Twin(
    "normalized_lerp_forward", reference=normalized_lerp_forward_reference, loop=_normalized_lerp_forward_loop
)
NORMALIZED_LERP_BACKWARD = Twin(
    "normalized_lerp_backward", reference=normalized_lerp_backward_reference, loop=_normalized_lerp_backward_loop
)
_TINY = {np.dtype(np.float32): float(np.finfo(np.float32).tiny), np.dtype(np.float64): float(np.finfo(np.float64).tiny)}


def normalized_lerp_forward(a: np.ndarray, b: np.ndarray, t: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """The step of rows ``a`` towards rows ``b`` (n, d) at rate ``|c t|``, ``t`` (d,); returns
    ``(y, norms)`` (see :func:`normalized_lerp_forward_reference`)."""
    a, b, t = float_arrays(a, b, t)
    check_fit(a.ndim == 2 and b.shape == a.shape and t.shape == a.shape[1:], "a", a, "b", b, "t", t)
    return NORMALIZED_LERP_FORWARD.pick()(a, b, t, float(c), _TINY[a.dtype])


def normalized_lerp_backward(dy: np.ndarray, *residuals: np.ndarray) -> Arrays:
    """The VJP at ``dy``; ``residuals`` are ``(a, b, t, c)`` as the forward took them, then
    the ``norms`` it returned, unchanged. Returns ``(da, db, dt)``."""
    a = residuals[0]
    return NORMALIZED_LERP_BACKWARD.pick()(cotangent(dy, a.dtype, a.shape), *residuals)
