"""DyT and Derf, the point-wise replacements of a norm, over rows ``x`` (n, d): twins and
public kernels.

Each element is mapped on its own through a squashing function of a learned scalar affine
map, then through the per-feature gain and shift a norm has::

    DyT:   y = gamma * tanh(alpha x) + beta            (Zhu et al. 2025)
    Derf:  y = gamma * erf(alpha x + s) + beta         (Chen et al. 2025)

``alpha`` and ``s`` are 0-d arrays of the rows' dtype, ``gamma`` and ``beta`` (d,). No
statistics are taken, so nothing in a row reports a NaN or an inf the way a mean does (and
tanh and erf turn an inf into a finite +-1): both forwards test every element and raise
``ValueError`` (:data:`NONFINITE_VALUES`).
"""

from __future__ import annotations

import math

import numpy as np

from lnref.autograd.kernels.checks import check_fit, check_rows, float_arrays
from lnref.autograd.kernels.seam import Twin, njit

NONFINITE_VALUES = "x holds NaN or inf"

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)

# NumPy has no erf ufunc: math.erf element by element, the libm function the loops call.
# Whatever evaluates erf, its derivative is written out as 2/sqrt(pi) exp(-z^2), never
# taken from the evaluation.
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _check_finite(x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        raise ValueError(NONFINITE_VALUES)


# ----- DyT --------------------------------------------------------------------------------


def dyt_forward_reference(x: np.ndarray, alpha: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """DyT of ``x`` (n, d); NumPy twin: ``y = tanh(alpha x) * gamma + beta``."""
    _check_finite(x)
    return np.tanh(alpha * x) * gamma + beta


def _dyt_forward_loop(x: np.ndarray, alpha: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Loop twin of :func:`dyt_forward_reference` (allocates, then runs the kernel)."""
    y = np.empty(x.shape, x.dtype)
    _dyt_forward_kernel(x, float(alpha), gamma, beta, y)
    return y


@njit(cache=True)
def _dyt_forward_kernel(x: np.ndarray, alpha: float, gamma: np.ndarray, beta: np.ndarray, y: np.ndarray) -> None:
    """The loop of :func:`_dyt_forward_loop`, writing ``y``."""
    n, d = x.shape
    for i in range(n):
        for j in range(d):
            value = x[i, j]
            if not math.isfinite(value):
                raise ValueError(NONFINITE_VALUES)
            y[i, j] = math.tanh(alpha * value) * gamma[j] + beta[j]


def dyt_backward_reference(
    dy: np.ndarray, x: np.ndarray, alpha: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gradient of DyT; NumPy twin. With ``t = tanh(alpha x)`` and ``g = dy * gamma``::

        dx     = g (1 - t^2) alpha
        dalpha = sum over every element of g (1 - t^2) x
        dgamma = sum over rows of dy * t,      dbeta = sum over rows of dy

    Returns ``(dx, dalpha, dgamma, dbeta)``, ``dalpha`` 0-d.
    """
    t = np.tanh(alpha * x)
    slope = dy * gamma * (1.0 - t * t)
    return slope * alpha, np.asarray((slope * x).sum(), x.dtype), (dy * t).sum(axis=0), dy.sum(axis=0)


def _dyt_backward_loop(
    dy: np.ndarray, x: np.ndarray, alpha: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loop twin of :func:`dyt_backward_reference` (allocates, then runs the kernel)."""
    d = x.shape[1]
    # float64 accumulators, as the norms' column sums: a float32 sum over many rows drifts.
    dx, dalpha, dgamma, dbeta = np.empty(x.shape, x.dtype), np.zeros(1), np.zeros(d), np.zeros(d)
    _dyt_backward_kernel(dy, x, float(alpha), gamma, dx, dalpha, dgamma, dbeta)
    return dx, np.asarray(dalpha[0], x.dtype), dgamma.astype(x.dtype, copy=False), dbeta.astype(x.dtype, copy=False)


@njit(cache=True)
def _dyt_backward_kernel(
    dy: np.ndarray,
    x: np.ndarray,
    alpha: float,
    gamma: np.ndarray,
    dx: np.ndarray,
    dalpha: np.ndarray,
    dgamma: np.ndarray,
    dbeta: np.ndarray,
) -> None:
    """The loop of :func:`_dyt_backward_loop`, writing ``dx`` and adding into the (zeroed,
    float64) ``dalpha`` (one element), ``dgamma`` and ``dbeta``."""
    n, d = x.shape
    total = 0.0
    for i in range(n):
        for j in range(d):
            value = x[i, j]
            t = math.tanh(alpha * value)
            slope = dy[i, j] * gamma[j] * (1.0 - t * t)
            dx[i, j] = slope * alpha
            total += slope * value
            dgamma[j] += dy[i, j] * t
            dbeta[j] += dy[i, j]
    dalpha[0] += total


# ----- Derf -------------------------------------------------------------------------------


def derf_forward_reference(
    x: np.ndarray, alpha: np.ndarray, shift: np.ndarray, gamma: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    """Derf of ``x`` (n, d); NumPy twin: ``y = erf(alpha x + s) * gamma + beta``."""
    _check_finite(x)
    return _erf(alpha * x + shift).astype(x.dtype, copy=False) * gamma + beta


def _derf_forward_loop(
    x: np.ndarray, alpha: np.ndarray, shift: np.ndarray, gamma: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    """Loop twin of :func:`derf_forward_reference` (allocates, then runs the kernel)."""
    y = np.empty(x.shape, x.dtype)
    _derf_forward_kernel(x, float(alpha), float(shift), gamma, beta, y)
    return y


@njit(cache=True)
def _derf_forward_kernel(
    x: np.ndarray, alpha: float, shift: float, gamma: np.ndarray, beta: np.ndarray, y: np.ndarray
) -> None:
    """The loop of :func:`_derf_forward_loop`, writing ``y``."""
    n, d = x.shape
    for i in range(n):
        for j in range(d):
            value = x[i, j]
            if not math.isfinite(value):
                raise ValueError(NONFINITE_VALUES)
            y[i, j] = math.erf(alpha * value + shift) * gamma[j] + beta[j]


def derf_backward_reference(
    dy: np.ndarray, x: np.ndarray, alpha: np.ndarray, shift: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gradient of Derf; NumPy twin. With ``z = alpha x + s``, ``erf'(z) = 2/sqrt(pi)
    exp(-z^2)`` and ``g = dy * gamma``::

        dx     = g erf'(z) alpha
        dalpha = sum over every element of g erf'(z) x,     ds = sum of g erf'(z)
        dgamma = sum over rows of dy * erf(z),               dbeta = sum over rows of dy

    Returns ``(dx, dalpha, ds, dgamma, dbeta)``, ``dalpha`` and ``ds`` 0-d.
    """
    z = alpha * x + shift
    slope = dy * gamma * (_TWO_OVER_SQRT_PI * np.exp(-z * z))
    dgamma = (dy * _erf(z).astype(x.dtype, copy=False)).sum(axis=0)
    dalpha, dshift = np.asarray((slope * x).sum(), x.dtype), np.asarray(slope.sum(), x.dtype)
    return slope * alpha, dalpha, dshift, dgamma, dy.sum(axis=0)


def _derf_backward_loop(
    dy: np.ndarray, x: np.ndarray, alpha: np.ndarray, shift: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loop twin of :func:`derf_backward_reference` (allocates, then runs the kernel)."""
    d, dtype = x.shape[1], x.dtype
    dx, scalars, dgamma, dbeta = np.empty(x.shape, dtype), np.zeros(2), np.zeros(d), np.zeros(d)
    _derf_backward_kernel(dy, x, float(alpha), float(shift), gamma, dx, scalars, dgamma, dbeta)
    dalpha, dshift = np.asarray(scalars[0], dtype), np.asarray(scalars[1], dtype)
    return dx, dalpha, dshift, dgamma.astype(dtype, copy=False), dbeta.astype(dtype, copy=False)


@njit(cache=True)
def _derf_backward_kernel(
    dy: np.ndarray,
    x: np.ndarray,
    alpha: float,
    shift: float,
    gamma: np.ndarray,
    dx: np.ndarray,
    scalars: np.ndarray,
    dgamma: np.ndarray,
    dbeta: np.ndarray,
) -> None:
    """The loop of :func:`_derf_backward_loop`, writing ``dx`` and adding into the (zeroed,
    float64) ``scalars`` (dalpha, ds), ``dgamma`` and ``dbeta``."""
    n, d = x.shape
    total_alpha = 0.0
    total_shift = 0.0
    for i in range(n):
        for j in range(d):
            value = x[i, j]
            z = alpha * value + shift
            slope = dy[i, j] * gamma[j] * (_TWO_OVER_SQRT_PI * math.exp(-z * z))
            dx[i, j] = slope * alpha
            total_alpha += slope * value
            total_shift += slope
            dgamma[j] += dy[i, j] * math.erf(z)
            dbeta[j] += dy[i, j]
    scalars[0] += total_alpha
    scalars[1] += total_shift


# The work is the number of elements. NumPy's tanh runs on SIMD lanes, the loops call libm's
# scalar tanh: the loops pay while a call's set-up costs more than its tanh, up to about the
# small model's norms (docs/performance.md has both twins timed on either side). Derf has no
# such limit: NumPy has no erf to vectorize.
DYT_LOOP_PAYS_UP_TO = 512
DYT_FORWARD = Twin(
    "dyt_forward", reference=dyt_forward_reference, loop=_dyt_forward_loop, loop_pays_up_to=DYT_LOOP_PAYS_UP_TO
)
DYT_BACKWARD = Twin(
    "dyt_backward", reference=dyt_backward_reference, loop=_dyt_backward_loop, loop_pays_up_to=DYT_LOOP_PAYS_UP_TO
)
DERF_FORWARD = Twin("derf_forward", reference=derf_forward_reference, loop=_derf_forward_loop)
DERF_BACKWARD = Twin("derf_backward", reference=derf_backward_reference, loop=_derf_backward_loop)


# ----- public kernels ---------------------------------------------------------------------


def _check_scalars(*scalars: np.ndarray) -> None:
    for scalar in scalars:
        if scalar.shape != ():
            raise ValueError(f"alpha and s must be scalars (0-d), got shape {scalar.shape}")


def dyt_forward(x: np.ndarray, alpha: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """DyT of ``x`` (n, d): ``y = gamma * tanh(alpha x) + beta``, ``alpha`` 0-d."""
    x, alpha, gamma, beta = float_arrays(x, alpha, gamma, beta)
    _check_scalars(alpha)
    check_rows(x, gamma, beta)
    return DYT_FORWARD.pick(x.size)(x, alpha, gamma, beta)


def dyt_backward(
    dy: np.ndarray, x: np.ndarray, alpha: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """DyT backward; returns ``(dx, dalpha, dgamma, dbeta)`` (see :func:`dyt_backward_reference`)."""
    dy, x, alpha, gamma = float_arrays(dy, x, alpha, gamma)
    _check_scalars(alpha)
    check_rows(x, gamma)
    check_fit(dy.shape == x.shape, "dy", dy, "x", x)
    return DYT_BACKWARD.pick(x.size)(dy, x, alpha, gamma)


def derf_forward(
    x: np.ndarray, alpha: np.ndarray, shift: np.ndarray, gamma: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    """Derf of ``x`` (n, d): ``y = gamma * erf(alpha x + s) + beta``, ``alpha`` and ``s`` 0-d."""
    x, alpha, shift, gamma, beta = float_arrays(x, alpha, shift, gamma, beta)
    _check_scalars(alpha, shift)
    check_rows(x, gamma, beta)
    return DERF_FORWARD.pick()(x, alpha, shift, gamma, beta)


def derf_backward(
    dy: np.ndarray, x: np.ndarray, alpha: np.ndarray, shift: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Derf backward; returns ``(dx, dalpha, ds, dgamma, dbeta)`` (see
    :func:`derf_backward_reference`)."""
    dy, x, alpha, shift, gamma = float_arrays(dy, x, alpha, shift, gamma)
    _check_scalars(alpha, shift)
    check_rows(x, gamma)
    check_fit(dy.shape == x.shape, "dy", dy, "x", x)
    return DERF_BACKWARD.pick()(dy, x, alpha, shift, gamma)
