"""GELU (exact and tanh-approximated) and the ReLU backward, on arrays of any shape: twins,
public kernels, and the GELU scalars the FFN kernels share; the logistic sigmoid, on arrays and
as a scalar, for the primitives and kernels that gate with it."""

from __future__ import annotations

import math

import numpy as np

from lnref.autograd.kernels.checks import float_arrays
from lnref.autograd.kernels.seam import Twin, njit

# ----- GELU -----------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_VARIANTS = ("tanh", "none")

# NumPy has no erf ufunc; math.erf element by element is exact and is the same
# libm function the Numba kernel calls.
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _check_approximate(approximate: str) -> None:
    if approximate not in _GELU_VARIANTS:
        raise ValueError(f"approximate must be 'tanh' or 'none', got {approximate!r}")


def gelu_forward_reference(x: np.ndarray, approximate: str) -> np.ndarray:
    """GELU of ``x`` (any shape, 0-d included: an array is returned); NumPy twin.

    ``approximate="none"`` (exact)::

        y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))

    ``approximate="tanh"``::

        u = sqrt(2/pi) (x + 0.044715 x^3)
        y = 0.5 x (1 + tanh(u))
    """
    _check_approximate(approximate)
    if approximate == "tanh":
        u = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)
        return np.asarray(0.5 * x * (1.0 + np.tanh(u)))
    cdf = 0.5 * (1.0 + _erf(x * _INV_SQRT_2).astype(x.dtype, copy=False))
    return np.asarray(x * cdf)


def gelu_backward_reference(dy: np.ndarray, x: np.ndarray, approximate: str) -> np.ndarray:
    """Gradient of GELU; NumPy twin. ``dx = dy * gelu'(x)`` with

    ``approximate="none"``::

        gelu'(x) = Phi(x) + x phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)

    (phi is the derivative of Phi(x) = (1 + erf(x / sqrt 2)) / 2 in closed form, from
    erf'(z) = 2/sqrt(pi) exp(-z^2): it never depends on how erf itself is evaluated)

    ``approximate="tanh"`` (``u`` as in the forward, ``th = tanh(u)``)::

        gelu'(x) = 0.5 (1 + th) + 0.5 x (1 - th^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    """
    _check_approximate(approximate)
    if approximate == "tanh":
        x2 = x * x
        th = np.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x2 * x))
        du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * x2)
        return np.asarray(dy * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du_dx))
    cdf = 0.5 * (1.0 + _erf(x * _INV_SQRT_2).astype(x.dtype, copy=False))
    pdf = _INV_SQRT_2PI * np.exp(-0.5 * x * x)
    return np.asarray(dy * (cdf + x * pdf))


@njit(cache=True)
def gelu_tanh(x: float) -> float:
    """The tanh GELU of one float64 (the loops' scalar: the FFN kernel's too)."""
    u = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)
    return 0.5 * x * (1.0 + math.tanh(u))


@njit(cache=True)
def gelu_tanh_slope(x: float) -> float:
    """Its derivative at one float64."""
    x2 = x * x
    th = math.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x2 * x))
    du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * x2)
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du_dx


@njit(cache=True)
def gelu_erf(x: float) -> float:
    """The exact GELU of one float64, x Phi(x) (the loops' scalar: the FFN kernel's too)."""
    return x * (0.5 * (1.0 + math.erf(x * _INV_SQRT_2)))


@njit(cache=True)
def gelu_erf_slope(x: float) -> float:
    """Its derivative at one float64, Phi(x) + x phi(x): the Gaussian density itself, never
    the slope of whatever approximates erf."""
    cdf = 0.5 * (1.0 + math.erf(x * _INV_SQRT_2))
    pdf = _INV_SQRT_2PI * math.exp(-0.5 * x * x)
    return cdf + x * pdf


def _gelu_forward_loop(x: np.ndarray, approximate: str) -> np.ndarray:
    """Loop twin of :func:`gelu_forward_reference` (allocates, then runs the kernel)."""
    y = np.empty(x.shape, x.dtype)
    _gelu_forward_kernel(x.reshape(-1), approximate, y.reshape(-1))
    return y


@njit(cache=True)
def _gelu_forward_kernel(x: np.ndarray, approximate: str, y: np.ndarray) -> None:
    """The loop of :func:`_gelu_forward_loop` over flat arrays, writing ``y``."""
    if approximate == "tanh":
        for i in range(x.size):
            y[i] = gelu_tanh(float(x[i]))
    elif approximate == "none":
        for i in range(x.size):
            y[i] = gelu_erf(float(x[i]))
    else:
        raise ValueError("approximate must be 'tanh' or 'none'")


def _gelu_backward_loop(dy: np.ndarray, x: np.ndarray, approximate: str) -> np.ndarray:
    """Loop twin of :func:`gelu_backward_reference` (allocates, then runs the kernel)."""
    dx = np.empty(x.shape, x.dtype)
    _gelu_backward_kernel(dy.reshape(-1), x.reshape(-1), approximate, dx.reshape(-1))
    return dx


@njit(cache=True)
def _gelu_backward_kernel(dy: np.ndarray, x: np.ndarray, approximate: str, dx: np.ndarray) -> None:
    """The loop of :func:`_gelu_backward_loop` over flat arrays, writing ``dx``."""
    if approximate == "tanh":
        for i in range(x.size):
            dx[i] = dy[i] * gelu_tanh_slope(float(x[i]))
    elif approximate == "none":
        for i in range(x.size):
            dx[i] = dy[i] * gelu_erf_slope(float(x[i]))
    else:
        raise ValueError("approximate must be 'tanh' or 'none'")


GELU_FORWARD = Twin("gelu_forward", reference=gelu_forward_reference, loop=_gelu_forward_loop)
GELU_BACKWARD = Twin("gelu_backward", reference=gelu_backward_reference, loop=_gelu_backward_loop)


def gelu_forward(x: np.ndarray, approximate: str) -> np.ndarray:
    """GELU of ``x`` (any shape), ``approximate`` in {"tanh", "none"}.

    See :func:`gelu_forward_reference` for both formulas.
    """
    _check_approximate(approximate)
    (x,) = float_arrays(x)
    # Flat in, shape back out: the compiled kernel specializes once per dtype, not per ndim.
    return GELU_FORWARD.pick()(x.reshape(-1), approximate).reshape(x.shape)


def gelu_backward(dy: np.ndarray, x: np.ndarray, approximate: str) -> np.ndarray:
    """GELU backward ``dx = dy * gelu'(x)``; see :func:`gelu_backward_reference`."""
    _check_approximate(approximate)
    dy, x = float_arrays(dy, x)
    if dy.shape != x.shape:
        raise ValueError(f"dy shape {dy.shape} does not match x shape {x.shape}")
    return GELU_BACKWARD.pick()(dy.reshape(-1), x.reshape(-1), approximate).reshape(x.shape)


# ----- ReLU --------------------------------------------------------------------------------


def relu_forward_reference(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)``, element by element; NumPy twin. A NaN stays NaN (for the next norm to
    reject); -0.0 gives 0.0."""
    return np.maximum(x, 0)


@njit(cache=True)
def _relu_forward_kernel(x: np.ndarray, y: np.ndarray) -> None:
    """The loop of :func:`_relu_forward_loop` over flat arrays, writing ``y``: NumPy's
    maximum to the bit, as a select that LLVM vectorizes."""
    for i in range(x.size):
        v = x[i]
        y[i] = v if v > 0 or v != v else 0.0


def _relu_forward_loop(x: np.ndarray) -> np.ndarray:
    """Loop twin of :func:`relu_forward_reference` (allocates, then runs the kernel)."""
    y = np.empty_like(x)
    _relu_forward_kernel(x.reshape(-1), y.reshape(-1))
    return y


RELU_FORWARD = Twin("relu_forward", reference=relu_forward_reference, loop=_relu_forward_loop)


def relu_forward(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)``, any shape; see :func:`relu_forward_reference`."""
    (x,) = float_arrays(x)
    return RELU_FORWARD.pick()(x)


def relu_backward_reference(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient of ReLU read off its output ``y = max(x, 0)``; NumPy twin.

    ``dx = dy`` where ``y > 0`` (exactly where ``x > 0``), else 0.
    """
    return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)


@njit(cache=True)
def _relu_backward_kernel(dy: np.ndarray, y: np.ndarray, dx: np.ndarray) -> None:
    """The loop of :func:`_relu_backward_loop` over flat arrays, writing ``dx``."""
    for i in range(y.size):
        dx[i] = dy[i] if y[i] > 0 else 0.0


def _relu_backward_loop(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Loop twin of :func:`relu_backward_reference`: one pass, no temporary mask."""
    dx = np.empty_like(y)
    # Flat views: one compilation per dtype, whatever the shape.
    _relu_backward_kernel(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


RELU_BACKWARD = Twin("relu_backward", reference=relu_backward_reference, loop=_relu_backward_loop)


def relu_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ReLU backward from the output: ``dx = dy * (y > 0)``, any shape."""
    dy, y = float_arrays(dy, y)
    if dy.shape != y.shape:
        raise ValueError(f"dy shape {dy.shape} does not match y shape {y.shape}")
    return RELU_BACKWARD.pick()(dy, y)


# ----- the logistic sigmoid ---------------------------------------------------------------


def sigmoid_reference(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x), element by element, taken from e^-|x| so that no exponential overflows;
    of ``x``'s dtype."""
    small = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + small), small / (1 + small)).astype(x.dtype, copy=False)


@njit(cache=True)
def sigmoid(x: float) -> float:
    """:func:`sigmoid_reference` of one number, in the same operations."""
    small = math.exp(-abs(x))
    return 1.0 / (1.0 + small) if x >= 0 else small / (1.0 + small)
