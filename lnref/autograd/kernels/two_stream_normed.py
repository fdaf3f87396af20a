"""A normed sublayer between two streams, as one kernel each way: a sublayer of SiameseNorm with
its streams' norms and adds.

The state is the two streams stacked, ``state`` (2, B, T, d) = [x, y]: the Post-Norm stream x
(before its norm) and the Pre-Norm stream y. With the streams' norms LN_x and LN_y
(``gamma_x``, ``beta_x``, ``gamma_y``, ``beta_y``), S the attention sublayer or the FFN with
its LayerNorm (``gamma``, ``beta``) and the divisor c (a number):

    forward:   xn = LN_x(x),   u = xn + LN_y(y)   (``add_layer_norm``),
               z = S(LN(u))   (``residual_normed``, residual False),
               out = [xn + z / c, y + z]   (the sum the next norm takes, ``add``)
    backward:  at dout = [g_x, g_y]:
               du, dgamma, dbeta, dW = the normed sublayer's backward at g_x / c + g_y,
               dy_norm, dgamma_y, dbeta_y = LN_y's backward at du,
               dx, dgamma_x, dbeta_x = LN_x's backward at g_x + du,
               dstate = [dx, g_y + dy_norm]

(each sum of two terms, the same in either order). A state of one stream (B, T, d) is the
first sublayer's x, from which both streams start (y = x); its cotangent is (g_y + dy_norm) +
dx, the order in which the tape adds the add's, LN_y's and LN_x's terms.

A replayed pass runs the steps as one (``autograd/two_streams.py``); here one compiled call runs
each way, calling the steps' own loops in their order, so the fused step and the steps agree to
the bit: the quotient is rounded to the arrays' dtype before the sum, as NumPy's division by a
Python number rounds it. Past the sublayer's loop limit, or while a test or a benchmark has put
another implementation in the place of one of the parts, the NumPy twin runs the public kernels
in turn.

The forward returns ``(out, stats, u, ...)``: ``stats`` (4, B T) the streams' norms' ``mean_x,
rstd_x, mean_y, rstd_y``, then the normed sublayer's residuals; the backward takes ``dout,
state, divisor, gamma_x, gamma_y``, those and ``gamma`` before the sublayer's residuals, and
returns the cotangents of the forward's arrays in their order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import lnref.autograd.kernels as kernels
from lnref.autograd.kernels import attention_sublayer, feed_forward, linear, residual_normed
from lnref.autograd.kernels.branches import (
    ATTENTION_PARTS,
    FEED_FORWARD_PARTS,
    add_into,
    attention_work,
    checked_attention_branch,
    checked_feed_forward_branch,
    path,
)
from lnref.autograd.kernels.checks import check_fit, cotangent, float_arrays
from lnref.autograd.kernels.norms import layer_norm_backward_kernel, layer_norm_forward_kernel
from lnref.autograd.kernels.seam import Twin, njit, twin

Arrays = tuple[np.ndarray, ...]


# ----- the NumPy twins: the public kernels in turn ---------------------------------------


def _streams(state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): the two rows of a stacked state, or its one stream twice."""
    return (state[0], state[1]) if state.ndim == 4 else (state, state)


def _forward_reference(branch: str, state: np.ndarray, divisor: float, gamma_x: np.ndarray, beta_x: np.ndarray,
                       gamma_y: np.ndarray, beta_y: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                       weights: Arrays, *statics: Any) -> Arrays:  # fmt: skip
    x, y = _streams(state)
    d = x.shape[-1]
    xn, mean_x, rstd_x = kernels.layer_norm_forward(x.reshape(-1, d), gamma_x, beta_x, eps)
    normed_y, mean_y, rstd_y = kernels.layer_norm_forward(y.reshape(-1, d), gamma_y, beta_y, eps)
    xn = xn.reshape(x.shape)
    u = xn + normed_y.reshape(x.shape)
    z, *kept = getattr(kernels, f"residual_normed_{branch}_forward")(u, gamma, beta, eps, weights, *statics, False)
    stats = np.stack((mean_x, rstd_x, mean_y, rstd_y))
    return (np.stack((xn + z / divisor, y + z)), stats, u, *kept)


def _backward_reference(branch: str, dout: np.ndarray, state: np.ndarray, divisor: float, gamma_x: np.ndarray,
                        gamma_y: np.ndarray, stats: np.ndarray, u: np.ndarray, *kept: Any) -> Arrays:  # fmt: skip
    x, y = _streams(state)
    mean_x, rstd_x, mean_y, rstd_y = stats
    d = u.shape[-1]
    du, *grads = getattr(kernels, f"residual_normed_{branch}_backward")(dout[0] / divisor + dout[1], u, *kept, False)
    dy, dgamma_y, dbeta_y = kernels.layer_norm_backward(
        du.reshape(-1, d), y.reshape(-1, d), gamma_y, mean_y, rstd_y, residuals_checked=True
    )
    dy = dout[1] + dy.reshape(u.shape)
    dx, dgamma_x, dbeta_x = kernels.layer_norm_backward(
        (dout[0] + du).reshape(-1, d), x.reshape(-1, d), gamma_x, mean_x, rstd_x, residuals_checked=True
    )
    dx = dx.reshape(u.shape)
    dstate = np.stack((dx, dy)) if state.ndim == 4 else dy + dx
    return (dstate, dgamma_x, dbeta_x, dgamma_y, dbeta_y, *grads)


def two_stream_normed_attention_forward_reference(*args: Any) -> Arrays:
    """NumPy twin; returns ``(out, stats, u, normed, mean, rstd, q, k, v, probs, heads)``."""
    return _forward_reference("attention", *args)


def two_stream_normed_attention_backward_reference(*args: Any) -> Arrays:
    """NumPy twin; returns ``(dstate, dgamma_x, dbeta_x, dgamma_y, dbeta_y, dgamma, dbeta, dwq,
    dbq, dwk, dbk, dwv, dbv, dwo, dbo)``."""
    return _backward_reference("attention", *args)


def two_stream_normed_feed_forward_forward_reference(*args: Any) -> Arrays:
    """NumPy twin; returns ``(out, stats, u, normed, mean, rstd, hidden, acted)``."""
    return _forward_reference("feed_forward", *args)


def two_stream_normed_feed_forward_backward_reference(*args: Any) -> Arrays:
    """NumPy twin; returns ``(dstate, dgamma_x, dbeta_x, dgamma_y, dbeta_y, dgamma, dbeta, dw1,
    db1, dw2, db2)``."""
    return _backward_reference("feed_forward", *args)


# ----- the compiled kernels ------------------------------------------------------------


@njit(cache=True)
def _sum_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out <- a + b, element by element."""
    a_flat, b_flat, out_flat = a.ravel(), b.ravel(), out.ravel()
    for i in range(out_flat.size):
        out_flat[i] = a_flat[i] + b_flat[i]


@njit(cache=True)
def _divide_into(a: Any, divisor: Any, out: np.ndarray) -> None:
    """out <- a / divisor, element by element (``divisor`` of the arrays' dtype, as NumPy rounds it)."""
    a_flat, out_flat = a.ravel(), out.ravel()
    for i in range(out_flat.size):
        out_flat[i] = a_flat[i] / divisor


@njit(cache=True)
def _streams_forward(
    x: Any, y: Any, gamma_x: Any, beta_x: Any, gamma_y: Any, beta_y: Any, eps: float, stats: Any, xn: Any, u: Any
) -> None:
    """xn = LN_x(x), u = xn + LN_y(y); the norms' means and reciprocal deviations into ``stats``'
    rows."""
    rows = (stats.shape[1], x.shape[-1])
    layer_norm_forward_kernel(x.reshape(rows), gamma_x, beta_x, eps, xn.reshape(rows), stats[0], stats[1])
    layer_norm_forward_kernel(y.reshape(rows), gamma_y, beta_y, eps, u.reshape(rows), stats[2], stats[3])
    add_into(xn, u)


@njit(cache=True)
def _streams_out(y: Any, divisor: Any, out: Any) -> None:
    """out = [xn + z / divisor, y + z] in place of out = [xn, z], the quotient of the arrays'
    dtype (``divisor``'s) before the sum, as NumPy rounds it."""
    xn, z = out[0].ravel(), out[1].ravel()
    for i in range(xn.size):
        quotient = z[i] / divisor
        xn[i] = xn[i] + quotient
    add_into(y, out[1])


@njit(cache=True)
def _branch_cotangent(dout: Any, divisor: Any, dz: Any) -> None:
    """dz = dout[0] / divisor + dout[1]: the next norm's term of z and the add's."""
    _divide_into(dout[0], divisor, dz)
    add_into(dout[1], dz)


@njit(cache=True)
def _streams_backward(
    dout: Any, x: Any, y: Any, stacked: bool, gamma_x: Any, gamma_y: Any, stats: Any, work: Any, dparts: Any,
    dnorms: Any,
) -> None:  # fmt: skip
    """From du = ``work[1]``, the cotangent of u: the state's, into the rows of ``dparts``
    (stacked: dx, dy; else dx, the first row, with the second scratch), ``work[2]`` scratch; the
    streams' norms' into the rows of the float64 accumulators ``dnorms``, dgamma_x, dbeta_x,
    dgamma_y, dbeta_y."""
    du, dxn, dx, dy = work[1], work[2], dparts[0], dparts[1]
    rows = (stats.shape[1], du.shape[-1])
    layer_norm_backward_kernel(du.reshape(rows), y.reshape(rows), gamma_y, stats[2], stats[3], dy.reshape(rows),
                               dnorms[2], dnorms[3])  # fmt: skip
    add_into(dout[1], dy)
    _sum_into(dout[0], du, dxn)
    layer_norm_backward_kernel(dxn.reshape(rows), x.reshape(rows), gamma_x, stats[0], stats[1], dx.reshape(rows),
                               dnorms[0], dnorms[1])  # fmt: skip
    if not stacked:
        add_into(dy, dx)  # the add's and LN_y's terms first, as the tape adds them


@njit(cache=True)
def _two_stream_normed_attention_forward_kernel(
    x: Any, y: Any, divisor: Any, gamma_x: Any, beta_x: Any, gamma_y: Any, beta_y: Any, gamma: Any, beta: Any,
    eps: float, wq: Any, bq: Any, wk: Any, bk: Any, wv: Any, bv: Any, wo: Any, bo: Any, causal: bool, stats: Any,
    u: Any, normed: Any, mean: Any, rstd: Any, q: Any, k: Any, v: Any, probs: Any, heads: Any, out: Any,
) -> None:  # fmt: skip
    _streams_forward(x, y, gamma_x, beta_x, gamma_y, beta_y, eps, stats, out[0], u)
    residual_normed._residual_normed_attention_forward_kernel(
        u, gamma, beta, eps, wq, bq, wk, bk, wv, bv, wo, bo, causal, normed, mean, rstd, q, k, v, probs, heads, out[1],
        False,
    )  # fmt: skip
    _streams_out(y, divisor, out)


@njit(cache=True)
def _two_stream_normed_attention_backward_kernel(
    dout: Any, x: Any, y: Any, divisor: Any, stacked: bool, gamma_x: Any, gamma_y: Any, stats: Any, u: Any,
    gamma: Any, normed: Any, mean: Any, rstd: Any, wq: Any, wk: Any, wv: Any, wo: Any, q: Any, k: Any, v: Any,
    probs: Any, heads: Any, dnormed: Any, dw: Any, dbias: Any, dgamma: Any, dbeta: Any, work: Any, dparts: Any,
    dnorms: Any,
) -> None:  # fmt: skip
    _branch_cotangent(dout, divisor, work[0])
    residual_normed._residual_normed_attention_backward_kernel(
        work[0], u, gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads, dnormed, dw, dbias, work[1],
        dgamma, dbeta, False,
    )  # fmt: skip
    _streams_backward(dout, x, y, stacked, gamma_x, gamma_y, stats, work, dparts, dnorms)


@njit(cache=True)
def _two_stream_normed_feed_forward_forward_kernel(
    x: Any, y: Any, divisor: Any, gamma_x: Any, beta_x: Any, gamma_y: Any, beta_y: Any, gamma: Any, beta: Any,
    eps: float, w1: Any, b1: Any, w2: Any, b2: Any, activation: int, stats: Any, u: Any, normed: Any, mean: Any,
    rstd: Any, hidden: Any, acted: Any, out: Any,
) -> None:  # fmt: skip
    _streams_forward(x, y, gamma_x, beta_x, gamma_y, beta_y, eps, stats, out[0], u)
    residual_normed._residual_normed_feed_forward_forward_kernel(
        u, gamma, beta, eps, w1, b1, w2, b2, activation, normed, mean, rstd, hidden, acted, out[1], False, False
    )
    _streams_out(y, divisor, out)


@njit(cache=True)
def _two_stream_normed_feed_forward_backward_kernel(
    dout: Any, x: Any, y: Any, divisor: Any, stacked: bool, gamma_x: Any, gamma_y: Any, stats: Any, u: Any,
    gamma: Any, normed: Any, mean: Any, rstd: Any, w1: Any, w2: Any, hidden: Any, acted: Any, activation: int,
    dacted: Any, dnormed: Any, dw1: Any, db1: Any, dw2: Any, db2: Any, dgamma: Any, dbeta: Any, work: Any,
    dparts: Any, dnorms: Any,
) -> None:  # fmt: skip
    _branch_cotangent(dout, divisor, work[0])
    residual_normed._residual_normed_feed_forward_backward_kernel(
        work[0], u, gamma, normed, mean, rstd, w1, w2, hidden, acted, activation, dacted, dnormed, dw1, db1, dw2, db2,
        work[1], dgamma, dbeta, False, False,
    )  # fmt: skip
    _streams_backward(dout, x, y, stacked, gamma_x, gamma_y, stats, work, dparts, dnorms)


# ----- the loop twins: each part's outputs allocated as its own loop twin allocates them -----


def _stream_outputs(state: np.ndarray, divisor: float) -> tuple[tuple[np.ndarray, np.ndarray, Any], Arrays]:
    """The kernels' first arguments, ``(x, y, divisor)``, the divisor of the arrays' dtype (as
    NumPy divides by a Python number), and the streams' outputs ``(stats, u, out)``, out
    holding xn and z before the sums."""
    dtype, shape = state.dtype, state.shape[-3:]
    x, y = _streams(state)
    outputs = (np.empty((4, shape[0] * shape[1]), dtype), np.empty(shape, dtype), np.empty((2, *shape), dtype))
    return (x, y, dtype.type(divisor)), outputs


def _stream_grads(state: np.ndarray, divisor: float, u: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray, Any, bool],
                                                                             Arrays]:  # fmt: skip
    """The kernels' first arguments after ``dout``, ``(x, y, divisor, stacked)``; ``work`` (3, B,
    T, d), the scratch of the sublayer's cotangent, u's and xn's; ``dparts`` (2, B, T, d), the
    state's cotangent (stacked) or its first row; ``dnorms`` (4, d), the streams' norms' float64
    accumulators."""
    dtype = state.dtype
    grads = (np.empty((3, *u.shape), dtype), np.empty((2, *u.shape), dtype), np.zeros((4, u.shape[-1])))
    return (*_streams(state), dtype.type(divisor), state.ndim == 4), grads


def _cotangents(dparts: np.ndarray, stacked: bool, dnorms: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray) -> Arrays:
    """The state's cotangent and the norms' parameters', the float64 accumulators rounded to the
    state's dtype as the parts' loop twins round them."""
    if dparts.dtype != dnorms.dtype:
        dnorms, dgamma, dbeta = dnorms.astype(dparts.dtype), dgamma.astype(dparts.dtype), dbeta.astype(dparts.dtype)
    return (dparts if stacked else dparts[0], dnorms[0], dnorms[1], dnorms[2], dnorms[3], dgamma, dbeta)


def _two_stream_normed_attention_forward_loop(state: np.ndarray, divisor: float, gamma_x: np.ndarray,
                                              beta_x: np.ndarray, gamma_y: np.ndarray, beta_y: np.ndarray,
                                              gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays,
                                              n_heads: int, causal: bool) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_two_stream_normed_attention_forward_kernel``)."""
    streams, (stats, u, out) = _stream_outputs(state, divisor)
    (batch, t_len, _), dtype = u.shape, u.dtype
    normed, q, k, v, heads = (np.empty(u.shape, dtype) for _ in range(5))
    mean, rstd = np.empty(batch * t_len, dtype), np.empty(batch * t_len, dtype)
    probs = np.zeros((batch, n_heads, t_len, t_len), dtype)
    wq, bq, wk, bk, wv, bv, wo, bo = weights
    _two_stream_normed_attention_forward_kernel(
        *streams, gamma_x, beta_x, gamma_y, beta_y, gamma, beta, eps, wq, bq, wk, bk, wv, bv, wo, bo, causal, stats, u,
        normed, mean, rstd, q, k, v, probs, heads, out,
    )  # fmt: skip
    return out, stats, u, normed, mean, rstd, q, k, v, probs, heads


def _two_stream_normed_attention_backward_loop(dout: np.ndarray, state: np.ndarray, divisor: float,
                                               gamma_x: np.ndarray, gamma_y: np.ndarray, stats: np.ndarray,
                                               u: np.ndarray, gamma: np.ndarray,
                                               *kept: np.ndarray) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_two_stream_normed_attention_backward_kernel``)."""
    normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads = kept
    streams, (work, dparts, dnorms) = _stream_grads(state, divisor, u)
    dtype, d = u.dtype, u.shape[-1]
    dnormed, dw, dbias = np.empty(u.shape, dtype), np.empty((4, d, d), dtype), np.empty((4, d), dtype)
    dgamma, dbeta = np.zeros(d), np.zeros(d)
    _two_stream_normed_attention_backward_kernel(
        dout, *streams, gamma_x, gamma_y, stats, u, gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads,
        dnormed, dw, dbias, dgamma, dbeta, work, dparts, dnorms,
    )  # fmt: skip
    dweights = (dw[0], dbias[0], dw[1], dbias[1], dw[2], dbias[2], dw[3], dbias[3])
    return (*_cotangents(dparts, streams[3], dnorms, dgamma, dbeta), *dweights)


def _two_stream_normed_feed_forward_forward_loop(state: np.ndarray, divisor: float, gamma_x: np.ndarray,
                                                 beta_x: np.ndarray, gamma_y: np.ndarray, beta_y: np.ndarray,
                                                 gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays,
                                                 activation: str) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_two_stream_normed_feed_forward_forward_kernel``)."""
    streams, (stats, u, out) = _stream_outputs(state, divisor)
    w1, b1, w2, b2 = weights
    dtype, rows = u.dtype, u.size // u.shape[-1]
    normed, mean, rstd = np.empty(u.shape, dtype), np.empty(rows, dtype), np.empty(rows, dtype)
    hidden = np.empty((rows, w1.shape[1]), dtype)
    acted = hidden if activation == "relu" else np.empty_like(hidden)  # ReLU in place, as the FFN's loop
    _two_stream_normed_feed_forward_forward_kernel(
        *streams, gamma_x, beta_x, gamma_y, beta_y, gamma, beta, eps, w1, b1, w2, b2,
        feed_forward.FFN_CODES[activation], stats, u, normed, mean, rstd, hidden, acted, out,
    )  # fmt: skip
    return out, stats, u, normed, mean, rstd, hidden, acted


def _two_stream_normed_feed_forward_backward_loop(dout: np.ndarray, state: np.ndarray, divisor: float,
                                                  gamma_x: np.ndarray, gamma_y: np.ndarray, stats: np.ndarray,
                                                  u: np.ndarray, gamma: np.ndarray, normed: np.ndarray,
                                                  mean: np.ndarray, rstd: np.ndarray, w1: np.ndarray,
                                                  w2: np.ndarray, hidden: np.ndarray, acted: np.ndarray,
                                                  activation: str) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_two_stream_normed_feed_forward_backward_kernel``)."""
    streams, (work, dparts, dnorms) = _stream_grads(state, divisor, u)
    dtype, d = u.dtype, u.shape[-1]
    dacted, dnormed = np.empty(acted.shape, dtype), np.empty(u.shape, dtype)
    dw1, db1 = np.empty(w1.shape, dtype), np.empty(w1.shape[1], dtype)
    dw2, db2 = np.empty(w2.shape, dtype), np.empty(w2.shape[1], dtype)
    dgamma, dbeta = np.zeros(d), np.zeros(d)
    _two_stream_normed_feed_forward_backward_kernel(
        dout, *streams, gamma_x, gamma_y, stats, u, gamma, normed, mean, rstd, w1, w2, hidden, acted,
        feed_forward.FFN_CODES[activation], dacted, dnormed, dw1, db1, dw2, db2, dgamma, dbeta, work, dparts, dnorms,
    )  # fmt: skip
    return (*_cotangents(dparts, streams[3], dnorms, dgamma, dbeta), dw1, db1, dw2, db2)


TWO_STREAM_NORMED_ATTENTION_FORWARD, TWO_STREAM_NORMED_ATTENTION_BACKWARD = (
    Twin(f"two_stream_normed_attention_{way}", reference=reference, loop=loop,
         loop_pays_up_to=attention_sublayer.LOOP_PAYS_UP_TO)
    for way, reference, loop in (
        ("forward", two_stream_normed_attention_forward_reference, _two_stream_normed_attention_forward_loop),
        ("backward", two_stream_normed_attention_backward_reference, _two_stream_normed_attention_backward_loop),
    )
)  # fmt: skip
TWO_STREAM_NORMED_FEED_FORWARD_FORWARD, TWO_STREAM_NORMED_FEED_FORWARD_BACKWARD = (
    Twin(f"two_stream_normed_feed_forward_{way}", reference=reference, loop=loop,
         loop_pays_up_to=linear.LOOP_PAYS_UP_TO)
    for way, reference, loop in (
        ("forward", two_stream_normed_feed_forward_forward_reference, _two_stream_normed_feed_forward_forward_loop),
        ("backward", two_stream_normed_feed_forward_backward_reference, _two_stream_normed_feed_forward_backward_loop),
    )
)  # fmt: skip
# The parts each fused kernel stands for, each way (the sublayer's LayerNorm's twins are the streams' norms'
# too): while one of them is overridden, its NumPy twin runs.
PARTS = {
    TWO_STREAM_NORMED_ATTENTION_FORWARD: (twin("residual_normed_attention_forward"), *ATTENTION_PARTS[0]),
    TWO_STREAM_NORMED_ATTENTION_BACKWARD: (twin("residual_normed_attention_backward"), *ATTENTION_PARTS[1]),
    TWO_STREAM_NORMED_FEED_FORWARD_FORWARD: (twin("residual_normed_feed_forward_forward"), *FEED_FORWARD_PARTS[0]),
    TWO_STREAM_NORMED_FEED_FORWARD_BACKWARD: (twin("residual_normed_feed_forward_backward"), *FEED_FORWARD_PARTS[1]),
}


# ----- the public kernels --------------------------------------------------------------


def _checked_streams(state: Any, gamma_x: Any, beta_x: Any, gamma_y: Any, beta_y: Any) -> Any:
    """``(state, gamma_x, beta_x, gamma_y, beta_y)`` as float arrays of one dtype, the state
    (2, B, T, d) or (B, T, d) and the norms' parameters (d,); or an error."""
    arrays = state, gamma_x, beta_x, gamma_y, beta_y = float_arrays(state, gamma_x, beta_x, gamma_y, beta_y)
    shape = state.shape
    if not (len(shape) == 3 or len(shape) == 4 and shape[0] == 2) or not (
        gamma_x.shape == beta_x.shape == gamma_y.shape == beta_y.shape == shape[-1:]
    ):
        check_fit(False, "state", state, "gamma_x", gamma_x, "beta_x", beta_x, "gamma_y", gamma_y, "beta_y", beta_y)
    return arrays


def two_stream_normed_attention_forward(state: Any, divisor: float, gamma_x: Any, beta_x: Any, gamma_y: Any,
                                        beta_y: Any, gamma: Any, beta: Any, eps: float, weights: Arrays,
                                        n_heads: int, causal: bool) -> Arrays:  # fmt: skip
    """The two streams' step around A, the self-attention sublayer of ``weights`` (wq, bq, wk,
    bk, wv, bv, wo, bo); returns ``(out, stats, u, normed, mean, rstd, q, k, v, probs, heads)``."""
    state, *norms = _checked_streams(state, gamma_x, beta_x, gamma_y, beta_y)
    x = state if state.ndim == 3 else state[0]
    _, gamma, beta, *checked = checked_attention_branch(x, gamma, beta, weights, n_heads, causal)
    fused = TWO_STREAM_NORMED_ATTENTION_FORWARD
    forward = path(fused, PARTS[fused], *attention_work(x))
    return forward(state, divisor, *norms, gamma, beta, float(eps), tuple(checked), n_heads, bool(causal))


def two_stream_normed_attention_backward(dout: np.ndarray, state: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP of :func:`two_stream_normed_attention_forward` at ``dout`` from its ``state`` and
    residuals (``divisor, gamma_x, gamma_y, stats, u, gamma, normed, mean, rstd, wq, wk, wv, wo,
    q, k, v, probs, heads``, unchanged); returns ``(dstate, dgamma_x, dbeta_x, dgamma_y, dbeta_y,
    dgamma, dbeta, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo)``."""
    u = residuals[4]
    dout = cotangent(dout, state.dtype, (2, *u.shape))
    fused = TWO_STREAM_NORMED_ATTENTION_BACKWARD
    return path(fused, PARTS[fused], *attention_work(u))(dout, state, *residuals)


def two_stream_normed_feed_forward_forward(state: Any, divisor: float, gamma_x: Any, beta_x: Any, gamma_y: Any,
                                           beta_y: Any, gamma: Any, beta: Any, eps: float, weights: Arrays,
                                           activation: str) -> Arrays:  # fmt: skip
    """The two streams' step around F, the FFN of ``weights`` (w1, b1, w2, b2); returns ``(out,
    stats, u, normed, mean, rstd, hidden, acted)``."""
    state, *norms = _checked_streams(state, gamma_x, beta_x, gamma_y, beta_y)
    x = state if state.ndim == 3 else state[0]
    _, gamma, beta, *checked = checked_feed_forward_branch(x, gamma, beta, weights, activation)
    fused = TWO_STREAM_NORMED_FEED_FORWARD_FORWARD
    forward = path(fused, PARTS[fused], x.size // x.shape[-1] * checked[0].size)
    return forward(state, divisor, *norms, gamma, beta, float(eps), tuple(checked), activation)


def two_stream_normed_feed_forward_backward(dout: np.ndarray, state: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP of :func:`two_stream_normed_feed_forward_forward` at ``dout`` from its ``state`` and
    residuals (``divisor, gamma_x, gamma_y, stats, u, gamma, normed, mean, rstd, w1, w2, hidden,
    acted, activation``, unchanged); returns ``(dstate, dgamma_x, dbeta_x, dgamma_y, dbeta_y,
    dgamma, dbeta, dw1, db1, dw2, db2)``."""
    u = residuals[4]
    dout = cotangent(dout, state.dtype, (2, *u.shape))
    work = u.size // u.shape[-1] * residuals[9].size
    fused = TWO_STREAM_NORMED_FEED_FORWARD_BACKWARD
    return path(fused, PARTS[fused], work)(dout, state, *residuals)
