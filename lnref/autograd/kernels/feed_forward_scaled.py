"""The feed-forward sublayer with a scale on its hidden units, as one kernel each way.

``nn.ffn`` with a ``hidden_scale`` s = c t, one factor per hidden unit before the
activation, a stored scale t (d_ff,) times a constant c (nGPT's s_u), on rows ``x`` (n, d):

    hidden = x W1 + b1,   scaled = hidden * s,   acted = act(scaled),   out = acted W2 + b2

As the composition that is four primitives; here one compiled call each way, with the
loops of ``feed_forward.py`` (the products' :func:`~lnref.autograd.kernels.linear.matmul_kernel`,
the activation's rows) and the scale's pass between them, in the composition's order. Past
the linear loop kernels' size the NumPy twin runs the composition's kernels. Residuals:
``hidden``, ``scaled`` and ``acted``; for ReLU the loops write ``acted`` over ``scaled`` (only
the GELUs' backward reads ``scaled``) and return that one array for both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import lnref.autograd.kernels as kernels
from lnref.autograd.kernels import linear
from lnref.autograd.kernels.checks import check_fit, cotangent, float_arrays
from lnref.autograd.kernels.feed_forward import (
    FFN_CODES,
    activate,
    activate_rows,
    activation_backward,
    activation_backward_rows,
    check_activation,
)
from lnref.autograd.kernels.linear import linear_grads_kernel, matmul_kernel
from lnref.autograd.kernels.seam import Twin, njit

Arrays = tuple[np.ndarray, ...]


def scaled_feed_forward_forward_reference(
    x: np.ndarray, w1: np.ndarray, b1: np.ndarray, t: np.ndarray, c: float, w2: np.ndarray, b2: np.ndarray,
    activation: str,
) -> Arrays:  # fmt: skip
    """NumPy twin; returns ``(out, hidden, scaled, acted)``."""
    hidden = kernels.linear_forward(x, w1, b1)
    scaled = hidden * (t * c)
    acted = activate(scaled, activation)
    return kernels.linear_forward(acted, w2, b2), hidden, scaled, acted


def scaled_feed_forward_backward_reference(
    dout: np.ndarray, x: np.ndarray, w1: np.ndarray, t: np.ndarray, c: float, w2: np.ndarray,
    hidden: np.ndarray, scaled: np.ndarray, acted: np.ndarray, activation: str,
) -> Arrays:  # fmt: skip
    """NumPy twin of the VJP; returns ``(dx, dw1, db1, dt, dw2, db2)``::

    dacted, dW2, db2 = linear VJP at dout
    dscaled = act'(scaled) * dacted
    dt = c (sum over rows of dscaled * hidden),   dhidden = dscaled * s
    dx, dW1, db1 = linear VJP at dhidden
    """
    dacted, dw2, db2 = kernels.linear_backward(dout, acted, w2)
    dscaled = activation_backward(dacted, scaled, acted, activation)
    dt = (dscaled * hidden).sum(axis=0) * c
    dx, dw1, db1 = kernels.linear_backward(dscaled * (t * c), x, w1)
    return dx, dw1, db1, dt, dw2, db2


@njit(cache=True)
def _scaled_feed_forward_forward_kernel(
    x: np.ndarray, w1: np.ndarray, b1: np.ndarray, t: np.ndarray, c: float, w2: np.ndarray, b2: np.ndarray,
    activation: int, hidden: np.ndarray, scaled: np.ndarray, acted: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """The whole forward: writes ``hidden``, ``scaled``, ``acted`` (which may be ``scaled``)
    and ``out``."""
    for step in range(2):  # one call site of the product (see feed_forward.py)
        if step == 0:
            rows, weight, bias, dest = x, w1, b1, hidden
        else:
            for r in range(hidden.shape[0]):
                for j in range(hidden.shape[1]):
                    scaled[r, j] = hidden[r, j] * (t[j] * c)
            activate_rows(scaled, acted, activation)
            rows, weight, bias, dest = acted, w2, b2, out
        matmul_kernel(rows, weight, bias, dest)


@njit(cache=True)
def _scaled_feed_forward_backward_kernel(
    dout: np.ndarray, x: np.ndarray, w1: np.ndarray, t: np.ndarray, c: float, w2: np.ndarray,
    hidden: np.ndarray, scaled: np.ndarray, acted: np.ndarray, activation: int,
    dacted: np.ndarray, dx: np.ndarray, dw1: np.ndarray, db1: np.ndarray, dt: np.ndarray,
    dw2: np.ndarray, db2: np.ndarray,
) -> None:  # fmt: skip
    """The whole backward (``dacted`` scratch: dacted, dscaled, then dhidden in place; the
    gradient of the scale summed in float64, then multiplied by ``c`` into ``dt``)."""
    total = np.zeros(t.size)
    for step in range(2):  # one call site of the product's gradients
        if step == 0:
            drows, rows, weight, drows_in, dweight, dbias = dout, acted, w2, dacted, dw2, db2
        else:
            activation_backward_rows(dacted, scaled, acted, activation)
            for r in range(dacted.shape[0]):
                for j in range(dacted.shape[1]):
                    total[j] += dacted[r, j] * hidden[r, j]
                    dacted[r, j] = dacted[r, j] * (t[j] * c)
            for j in range(t.size):
                dt[j] = total[j] * c
            drows, rows, weight, drows_in, dweight, dbias = dacted, x, w1, dx, dw1, db1
        linear_grads_kernel(drows, rows, weight, drows_in, dweight, dbias)


def _scaled_feed_forward_forward_loop(
    x: np.ndarray, w1: np.ndarray, b1: np.ndarray, t: np.ndarray, c: float, w2: np.ndarray, b2: np.ndarray,
    activation: str,
) -> Arrays:  # fmt: skip
    """Loop twin of :func:`scaled_feed_forward_forward_reference` (allocates, runs the kernel)."""
    dtype, rows = x.dtype, x.shape[0]
    hidden, scaled = np.empty((rows, w1.shape[1]), dtype), np.empty((rows, w1.shape[1]), dtype)
    acted = scaled if activation == "relu" else np.empty_like(scaled)  # ReLU in place
    out = np.empty((rows, w2.shape[1]), dtype)
    _scaled_feed_forward_forward_kernel(x, w1, b1, t, c, w2, b2, FFN_CODES[activation], hidden, scaled, acted, out)
    return out, hidden, scaled, acted


def _scaled_feed_forward_backward_loop(
    dout: np.ndarray, x: np.ndarray, w1: np.ndarray, t: np.ndarray, c: float, w2: np.ndarray,
    hidden: np.ndarray, scaled: np.ndarray, acted: np.ndarray, activation: str,
) -> Arrays:  # fmt: skip
    """Loop twin of :func:`scaled_feed_forward_backward_reference` (allocates, runs the kernel)."""
    dtype = x.dtype
    dacted, dx = np.empty(acted.shape, dtype), np.empty(x.shape, dtype)
    dw1, db1, dt = np.empty(w1.shape, dtype), np.empty(w1.shape[1], dtype), np.empty(t.shape, dtype)
    dw2, db2 = np.empty(w2.shape, dtype), np.empty(w2.shape[1], dtype)
    code = FFN_CODES[activation]
    _scaled_feed_forward_backward_kernel(
        dout, x, w1, t, c, w2, hidden, scaled, acted, code, dacted, dx, dw1, db1, dt, dw2, db2
    )
    return dx, dw1, db1, dt, dw2, db2


# The FFN's loops, and the same limit (on the work of the first product, rows * d * d_ff).
SCALED_FEED_FORWARD_FORWARD = Twin(
    "scaled_feed_forward_forward",
    reference=scaled_feed_forward_forward_reference,
    loop=_scaled_feed_forward_forward_loop,
    loop_pays_up_to=linear.LOOP_PAYS_UP_TO,
)
SCALED_FEED_FORWARD_BACKWARD = Twin(
    "scaled_feed_forward_backward",
    reference=scaled_feed_forward_backward_reference,
    loop=_scaled_feed_forward_backward_loop,
    loop_pays_up_to=linear.LOOP_PAYS_UP_TO,
)


def scaled_feed_forward_forward(
    x: np.ndarray, w1: np.ndarray, b1: np.ndarray, t: np.ndarray, c: float, w2: np.ndarray, b2: np.ndarray,
    activation: str,
) -> Arrays:  # fmt: skip
    """The forward on rows ``x`` (n, d), the scale ``t`` (d_ff,) used times the constant ``c``;
    returns ``(out, hidden, scaled, acted)``. See :func:`scaled_feed_forward_forward_reference`.
    ``c`` takes the arrays' dtype, as a Python number in a product with them does."""
    check_activation(activation)
    x, w1, b1, t, w2, b2 = float_arrays(x, w1, b1, t, w2, b2)
    check_fit(
        x.ndim == 2
        and w1.ndim == 2
        and w2.ndim == 2
        and x.shape[1] == w1.shape[0]
        and b1.shape == t.shape == w1.shape[1:]
        and w2.shape[0] == w1.shape[1]
        and b2.shape == w2.shape[1:],
        *("x", x, "w1", w1, "b1", b1, "t", t, "w2", w2, "b2", b2),
    )
    return SCALED_FEED_FORWARD_FORWARD.pick(x.shape[0] * w1.size)(x, w1, b1, t, t.dtype.type(c), w2, b2, activation)


def scaled_feed_forward_backward(dout: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP at ``dout``; ``residuals`` are ``(x, w1, t, c, w2)`` as the forward took them,
    then ``hidden, scaled, acted`` as it returned them, unchanged, then the activation. Returns
    ``(dx, dw1, db1, dt, dw2, db2)``."""
    x, w1, _, _, w2 = residuals[:5]
    dout = cotangent(dout, x.dtype, (x.shape[0], w2.shape[1]))
    return SCALED_FEED_FORWARD_BACKWARD.pick(x.shape[0] * w1.size)(dout, *residuals)
