"""The feed-forward sublayer with a LayerNorm on its hidden units, as one kernel each way.

Sub-LN and NormFormer put a norm between the FFN's activation and its second linear map:
F(x) = LN(act(x W1 + b1)) W2 + b2, the LN over the d_ff hidden features with its own
``gamma`` and ``beta``. As the composition it is four primitives (linear, activation, norm,
linear), eight kernel calls a pass; here one compiled call runs the forward and one the
backward, with the same loops in the same order as the composition's kernels (the linear
maps' :func:`~lnref.autograd.kernels.linear.matmul_kernel`, LayerNorm's row loops), so the two
agree to the bit. Past the linear map's limit, the NumPy twin runs the composition's kernels
in one call. The residuals are ``hidden`` = x W1 + b1, ``acted`` = act(hidden) (``hidden``
itself for ReLU in the loop twin), ``normed`` = LN(acted) and the norm's ``mean`` and ``rstd``.
"""

from __future__ import annotations

import numpy as np

import lnref.autograd.kernels as kernels
from lnref.autograd.kernels import linear
from lnref.autograd.kernels.checks import check_fit, cotangent, float_arrays, plain_arrays
from lnref.autograd.kernels.feed_forward import (
    FFN_CODES,
    activate,
    activate_rows,
    activation_backward,
    activation_backward_rows,
    check_activation,
)
from lnref.autograd.kernels.linear import linear_grads_kernel, matmul_kernel
from lnref.autograd.kernels.norms import layer_norm_backward_kernel, layer_norm_forward_kernel
from lnref.autograd.kernels.seam import Twin, njit

Arrays = tuple[np.ndarray, ...]


def normed_feed_forward_forward_reference(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    activation: str,
    eps: float,
) -> Arrays:
    """NumPy twin; returns ``(out, hidden, acted, normed, mean, rstd)``::

    hidden = x W1 + b1,  acted = act(hidden),  normed = LN(acted),  out = normed W2 + b2
    """
    hidden = kernels.linear_forward(x, w1, b1)
    acted = activate(hidden, activation)
    normed, mean, rstd = kernels.layer_norm_forward(acted, gamma, beta, eps)
    return kernels.linear_forward(normed, w2, b2), hidden, acted, normed, mean, rstd


def normed_feed_forward_backward_reference(
    dout: np.ndarray,
    x: np.ndarray,
    w1: np.ndarray,
    gamma: np.ndarray,
    w2: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    normed: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    activation: str,
) -> Arrays:
    """NumPy twin of the VJP; returns ``(dx, dw1, db1, dgamma, dbeta, dw2, db2)``: the linear
    maps', the norm's and the activation's VJPs in reverse order."""
    dnormed, dw2, db2 = kernels.linear_backward(dout, normed, w2)
    dacted, dgamma, dbeta = kernels.layer_norm_backward(dnormed, acted, gamma, mean, rstd)
    dhidden = activation_backward(dacted, hidden, acted, activation)
    dx, dw1, db1 = kernels.linear_backward(dhidden, x, w1)
    return dx, dw1, db1, dgamma, dbeta, dw2, db2


@njit(cache=True)
def _normed_feed_forward_forward_kernel(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    activation: int,
    eps: float,
    hidden: np.ndarray,
    acted: np.ndarray,
    normed: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    out: np.ndarray,
) -> None:
    """The whole forward: writes ``hidden``, ``acted`` (which may be ``hidden``), ``normed``,
    ``mean``, ``rstd`` and ``out``; the products through one call site (see feed_forward.py)."""
    for step in range(2):
        if step == 0:
            rows, weight, bias, dest = x, w1, b1, hidden
        else:
            activate_rows(hidden, acted, activation)
            layer_norm_forward_kernel(acted, gamma, beta, eps, normed, mean, rstd)
            rows, weight, bias, dest = normed, w2, b2, out
        matmul_kernel(rows, weight, bias, dest)


@njit(cache=True)
def _normed_feed_forward_backward_kernel(
    dout: np.ndarray,
    x: np.ndarray,
    w1: np.ndarray,
    gamma: np.ndarray,
    w2: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    normed: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    activation: int,
    dnormed: np.ndarray,
    dacted: np.ndarray,
    dx: np.ndarray,
    dw1: np.ndarray,
    db1: np.ndarray,
    dgamma: np.ndarray,
    dbeta: np.ndarray,
    dw2: np.ndarray,
    db2: np.ndarray,
) -> None:
    """The whole backward, writing every gradient (``dgamma``, ``dbeta`` zeroed float64
    accumulators; ``dnormed`` and ``dacted`` scratch, ``dacted`` turned into dhidden in place)."""
    for step in range(2):
        if step == 0:
            drows, rows, weight, drows_in, dweight, dbias = dout, normed, w2, dnormed, dw2, db2
        else:
            layer_norm_backward_kernel(dnormed, acted, gamma, mean, rstd, dacted, dgamma, dbeta)
            activation_backward_rows(dacted, hidden, acted, activation)
            drows, rows, weight, drows_in, dweight, dbias = dacted, x, w1, dx, dw1, db1
        linear_grads_kernel(drows, rows, weight, drows_in, dweight, dbias)


def _normed_feed_forward_forward_loop(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    activation: str,
    eps: float,
) -> Arrays:
    """Loop twin of :func:`normed_feed_forward_forward_reference` (allocates, runs the kernel)."""
    dtype, rows, d_ff = x.dtype, x.shape[0], w1.shape[1]
    hidden = np.empty((rows, d_ff), dtype)
    acted = hidden if activation == "relu" else np.empty_like(hidden)  # ReLU in place
    normed, mean, rstd = np.empty_like(hidden), np.empty(rows, dtype), np.empty(rows, dtype)
    out = np.empty((rows, w2.shape[1]), dtype)
    code = FFN_CODES[activation]
    _normed_feed_forward_forward_kernel(
        x, w1, b1, gamma, beta, w2, b2, code, eps, hidden, acted, normed, mean, rstd, out
    )
    return out, hidden, acted, normed, mean, rstd


def _normed_feed_forward_backward_loop(
    dout: np.ndarray,
    x: np.ndarray,
    w1: np.ndarray,
    gamma: np.ndarray,
    w2: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    normed: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    activation: str,
) -> Arrays:
    """Loop twin of :func:`normed_feed_forward_backward_reference` (allocates, runs the kernel)."""
    dtype, d_ff = x.dtype, w1.shape[1]
    dnormed, dacted, dx = np.empty_like(hidden), np.empty_like(hidden), np.empty(x.shape, dtype)
    dw1, db1 = np.empty(w1.shape, dtype), np.empty(d_ff, dtype)
    dw2, db2 = np.empty(w2.shape, dtype), np.empty(w2.shape[1], dtype)
    dgamma, dbeta = np.zeros(d_ff), np.zeros(d_ff)  # float64 column sums, as LayerNorm's loop keeps
    code = FFN_CODES[activation]
    _normed_feed_forward_backward_kernel(
        dout,
        x,
        w1,
        gamma,
        w2,
        hidden,
        acted,
        normed,
        mean,
        rstd,
        code,
        dnormed,
        dacted,
        dx,
        dw1,
        db1,
        dgamma,
        dbeta,
        dw2,
        db2,
    )
    return dx, dw1, db1, dgamma.astype(dtype, copy=False), dbeta.astype(dtype, copy=False), dw2, db2


# The loops are the FFN's and LayerNorm's: the FFN's limit, on the work of the first product.
NORMED_FEED_FORWARD_FORWARD = Twin(
    "normed_feed_forward_forward",
    reference=normed_feed_forward_forward_reference,
    loop=_normed_feed_forward_forward_loop,
    loop_pays_up_to=linear.LOOP_PAYS_UP_TO,
)
NORMED_FEED_FORWARD_BACKWARD = Twin(
    "normed_feed_forward_backward",
    reference=normed_feed_forward_backward_reference,
    loop=_normed_feed_forward_backward_loop,
    loop_pays_up_to=linear.LOOP_PAYS_UP_TO,
)


def normed_feed_forward_forward(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    activation: str,
    eps: float,
) -> Arrays:
    """The forward on rows ``x`` (n, d); returns ``(out, hidden, acted, normed, mean, rstd)``.
    See :func:`normed_feed_forward_forward_reference`."""
    check_activation(activation)
    x, w1, b1, gamma, beta, w2, b2 = float_arrays(x, w1, b1, gamma, beta, w2, b2)
    check_fit(
        x.ndim == 2
        and w1.ndim == 2
        and w2.ndim == 2
        and x.shape[1] == w1.shape[0]
        and b1.shape == gamma.shape == beta.shape == w1.shape[1:]
        and w2.shape[0] == w1.shape[1]
        and b2.shape == w2.shape[1:],
        *("x", x, "w1", w1, "b1", b1, "gamma", gamma, "beta", beta, "w2", w2, "b2", b2),
    )
    forward = NORMED_FEED_FORWARD_FORWARD.pick(x.shape[0] * w1.size)
    return forward(x, w1, b1, gamma, beta, w2, b2, activation, float(eps))


def normed_feed_forward_backward(
    dout: np.ndarray,
    x: np.ndarray,
    w1: np.ndarray,
    gamma: np.ndarray,
    w2: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    normed: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    activation: str,
) -> Arrays:
    """The VJP; returns ``(dx, dw1, db1, dgamma, dbeta, dw2, db2)``. The arguments after
    ``dout`` are the forward's inputs and residuals, unchanged (only ``dout`` is checked, see
    :func:`~lnref.autograd.kernels.checks.cotangent`)."""
    if not plain_arrays(x, w1, gamma, w2, hidden, acted, normed, mean, rstd):
        raise TypeError("normed_feed_forward_backward takes the forward's own arrays back")
    dout = cotangent(dout, x.dtype, (x.shape[0], w2.shape[1]))
    backward = NORMED_FEED_FORWARD_BACKWARD.pick(x.shape[0] * w1.size)
    return backward(dout, x, w1, gamma, w2, hidden, acted, normed, mean, rstd, activation)
