"""A normed sublayer between mixtures of stacked streams, as one kernel each way: a sublayer of
hyper-connections with its width and depth connections.

With the n copies of the stream stacked, ``xs`` (n, B, T, d), the width weights ``a_m`` (n,),
the depth weights ``a_r`` (n, m) and ``b`` (m,), or one set of each per token (as the kernels of
the parts take them: ``a_m`` (B, T, n); ``a_r`` (B, T, n, m) and ``b`` (B, T, m) together), and
S the attention sublayer or the FFN:

    forward:   h = sum_i a_m[i] x_i   (``weighted_sum``),   s = S(LN(h))   (``residual_normed``,
               residual False),   y_c = sum_i a_r[i, c] x_i + b[c] s   (``mix_streams``)
    backward:  da_r, db, ds, dxs = mix_streams' backward at dy,
               dh, dgamma, dbeta, dW = the normed sublayer's backward at ds,
               da_m, dxs_width = weighted_sum's backward at dh,
               dxs = dxs + dxs_width     (the depth term first, as a replay accumulates them)

A replayed pass runs the three as one step (``autograd/stacked_copies.py``); here one compiled
call runs each way, calling the three kernels' own loops in that order, so the fused step and
the three agree to the bit. Past the sublayer's loop limit, or while a test or a benchmark has
put another implementation in the place of one of the parts, the NumPy twin runs the three
public kernels in turn.

The forward returns ``(y, h, s, ...)``, the normed sublayer's residuals after ``s``; the
backward takes the forward's inputs ``xs, a_m, a_r, b``, then ``h, s, gamma`` and those
residuals, and returns the cotangents of the forward's inputs in their order.
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
from lnref.autograd.kernels.seam import Twin, njit
from lnref.autograd.kernels.stream_mixing import (
    MIX_STREAMS_BACKWARD,
    MIX_STREAMS_FORWARD,
    _mix_streams_backward_kernel,
    _mix_streams_forward_kernel,
)
from lnref.autograd.kernels.weighted_sum import (
    WEIGHTED_SUM_BACKWARD,
    WEIGHTED_SUM_FORWARD,
    _weighted_sum_backward_kernel,
    _weighted_sum_forward_kernel,
)

Arrays = tuple[np.ndarray, ...]


# ----- the NumPy twins: the three public kernels in turn -----------------------------


def _forward_reference(branch: str, xs: Any, a_m: np.ndarray, a_r: np.ndarray, b: np.ndarray,
                       gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays,
                       *statics: Any) -> Arrays:  # fmt: skip
    h, _ = kernels.weighted_sum_forward(a_m, xs)
    s, *kept = getattr(kernels, f"residual_normed_{branch}_forward")(h, gamma, beta, eps, weights, *statics, False)
    y, _ = kernels.mix_streams_forward(a_r, b, s, xs)
    return (y, h, s, *kept)


def _backward_reference(branch: str, dy: np.ndarray, xs: Any, a_m: np.ndarray, a_r: np.ndarray,
                        b: np.ndarray, h: np.ndarray, s: np.ndarray, *kept: Any) -> Arrays:  # fmt: skip
    da_r, db, ds, dxs = kernels.mix_streams_backward(dy, (a_r, b, s, xs))
    dh, *grads = getattr(kernels, f"residual_normed_{branch}_backward")(ds, h, *kept, False)
    da_m, dxs_width = kernels.weighted_sum_backward(dh, (a_m.reshape(-1, len(xs)), xs, xs.shape[1:]), a_m.shape)
    return (dxs + dxs_width, da_m, da_r, db, *grads)


def mixed_normed_attention_forward_reference(*args: Any) -> Arrays:
    """NumPy twin; returns ``(y, h, s, normed, mean, rstd, q, k, v, probs, heads)``."""
    return _forward_reference("attention", *args)


def mixed_normed_attention_backward_reference(*args: Any) -> Arrays:
    """NumPy twin; returns ``(dxs, da_m, da_r, db, dgamma, dbeta, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo)``."""
    return _backward_reference("attention", *args)


def mixed_normed_feed_forward_forward_reference(*args: Any) -> Arrays:
    """NumPy twin; returns ``(y, h, s, normed, mean, rstd, hidden, acted)``."""
    return _forward_reference("feed_forward", *args)


def mixed_normed_feed_forward_backward_reference(*args: Any) -> Arrays:
    """NumPy twin; returns ``(dxs, da_m, da_r, db, dgamma, dbeta, dw1, db1, dw2, db2)``."""
    return _backward_reference("feed_forward", *args)


# ----- the compiled kernels ------------------------------------------------------------


@njit(cache=True)
def _width_forward(xs: np.ndarray, a_m: np.ndarray, h: np.ndarray) -> None:
    _weighted_sum_forward_kernel(a_m, xs.reshape((xs.shape[0], h.size // h.shape[-1], h.shape[-1])), 0, h)


@njit(cache=True)
def _width_backward(dh: np.ndarray, xs: np.ndarray, a_m: np.ndarray, dxs_width: np.ndarray, da_m: np.ndarray) -> None:
    _weighted_sum_backward_kernel(
        dh, a_m, xs.reshape((xs.shape[0], dh.size // dh.shape[-1], dh.shape[-1])), 0, dxs_width, da_m
    )


@njit(cache=True)
def _mixed_normed_attention_forward_kernel(
    xs: Any, a_m: Any, a_r: Any, b: Any, gamma: Any, beta: Any, eps: float, wq: Any, bq: Any, wk: Any, bk: Any,
    wv: Any, bv: Any, wo: Any, bo: Any, causal: bool, h: Any, normed: Any, mean: Any, rstd: Any, q: Any, k: Any,
    v: Any, probs: Any, heads: Any, s: Any, y: Any,
) -> None:  # fmt: skip
    _width_forward(xs, a_m, h)
    residual_normed._residual_normed_attention_forward_kernel(
        h, gamma, beta, eps, wq, bq, wk, bk, wv, bv, wo, bo, causal, normed, mean, rstd, q, k, v, probs, heads, s,
        False,
    )  # fmt: skip
    _mix_streams_forward_kernel(a_r, b, s, xs, y)


@njit(cache=True)
def _mixed_normed_attention_backward_kernel(
    dy: Any, xs: Any, a_m: Any, a_r: Any, b: Any, h: Any, s: Any, gamma: Any, normed: Any, mean: Any, rstd: Any,
    wq: Any, wk: Any, wv: Any, wo: Any, q: Any, k: Any, v: Any, probs: Any, heads: Any, da_r: Any, db: Any, ds: Any,
    dxs: Any, dnormed: Any, dw: Any, dbias: Any, dh: Any, dgamma: Any, dbeta: Any, dxs_width: Any, da_m: Any,
) -> None:  # fmt: skip
    _mix_streams_backward_kernel(dy, a_r, b, s, xs, da_r, db, ds, dxs)
    residual_normed._residual_normed_attention_backward_kernel(
        ds, h, gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads, dnormed, dw, dbias, dh, dgamma,
        dbeta, False,
    )  # fmt: skip
    _width_backward(dh, xs, a_m, dxs_width, da_m)
    add_into(dxs, dxs_width)


@njit(cache=True)
def _mixed_normed_feed_forward_forward_kernel(
    xs: Any, a_m: Any, a_r: Any, b: Any, gamma: Any, beta: Any, eps: float, w1: Any, b1: Any, w2: Any, b2: Any,
    activation: int, h: Any, normed: Any, mean: Any, rstd: Any, hidden: Any, acted: Any, s: Any, y: Any,
) -> None:  # fmt: skip
    _width_forward(xs, a_m, h)
    residual_normed._residual_normed_feed_forward_forward_kernel(
        h, gamma, beta, eps, w1, b1, w2, b2, activation, normed, mean, rstd, hidden, acted, s, False, False
    )
    _mix_streams_forward_kernel(a_r, b, s, xs, y)


@njit(cache=True)
def _mixed_normed_feed_forward_backward_kernel(
    dy: Any, xs: Any, a_m: Any, a_r: Any, b: Any, h: Any, s: Any, gamma: Any, normed: Any, mean: Any, rstd: Any,
    w1: Any, w2: Any, hidden: Any, acted: Any, activation: int, da_r: Any, db: Any, ds: Any, dxs: Any, dacted: Any,
    dnormed: Any, dw1: Any, db1: Any, dw2: Any, db2: Any, dh: Any, dgamma: Any, dbeta: Any, dxs_width: Any,
    da_m: Any,
) -> None:  # fmt: skip
    _mix_streams_backward_kernel(dy, a_r, b, s, xs, da_r, db, ds, dxs)
    residual_normed._residual_normed_feed_forward_backward_kernel(
        ds, h, gamma, normed, mean, rstd, w1, w2, hidden, acted, activation, dacted, dnormed, dw1, db1, dw2, db2, dh,
        dgamma, dbeta, False, False,
    )  # fmt: skip
    _width_backward(dh, xs, a_m, dxs_width, da_m)
    add_into(dxs, dxs_width)


# ----- the loop twins: each part's outputs allocated as its own loop twin allocates them -----


def _mixing_outputs(xs: np.ndarray, a_r: np.ndarray) -> Arrays:
    """``h`` and ``s`` (B, T, d) and ``y`` (m, B, T, d)."""
    shape, dtype = xs.shape[1:], xs.dtype
    return np.empty(shape, dtype), np.empty(shape, dtype), np.empty((a_r.shape[-1], *shape), dtype)


def _mixing_grads(xs: np.ndarray, a_m: np.ndarray, a_r: np.ndarray, b: np.ndarray) -> Arrays:
    """``da_r``, ``db``, ``ds``, ``dxs``, ``dh``, ``dxs_width``, ``da_m`` (1 or rows, n): the weights' in
    float64, as the parts' loops accumulate them."""
    shape, dtype = xs.shape[1:], xs.dtype
    da_r, db, ds, dxs = np.zeros(a_r.shape), np.zeros(b.shape), np.empty(shape, dtype), np.empty(xs.shape, dtype)
    return da_r, db, ds, dxs, np.empty(shape, dtype), np.empty(xs.shape, dtype), np.zeros(_width_weights(xs, a_m).shape)


def _width_weights(xs: np.ndarray, a_m: np.ndarray) -> np.ndarray:
    """``a_m`` as the width connection's kernel takes it: (1, n) shared, (rows, n) per token."""
    return a_m.reshape(-1, len(xs))


def _in_dtype(grads: Arrays, dtype: np.dtype) -> Arrays:
    """The float64 accumulators rounded to ``dtype``, as the parts' loop twins round them."""
    return grads if dtype == np.float64 else tuple(g.astype(dtype) for g in grads)


def _mixed_normed_attention_forward_loop(xs: np.ndarray, a_m: np.ndarray, a_r: np.ndarray, b: np.ndarray,
                                         gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays,
                                         n_heads: int, causal: bool) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_mixed_normed_attention_forward_kernel``)."""
    (batch, t_len, _), dtype = xs.shape[1:], xs.dtype
    h, s, y = _mixing_outputs(xs, a_r)
    normed, q, k, v, heads = (np.empty(h.shape, dtype) for _ in range(5))
    mean, rstd = np.empty(batch * t_len, dtype), np.empty(batch * t_len, dtype)
    probs = np.zeros((batch, n_heads, t_len, t_len), dtype)
    wq, bq, wk, bk, wv, bv, wo, bo = weights
    _mixed_normed_attention_forward_kernel(
        xs, _width_weights(xs, a_m), a_r, b, gamma, beta, eps, wq, bq, wk, bk, wv, bv, wo, bo, causal, h, normed, mean,
        rstd, q, k, v, probs, heads, s, y,
    )  # fmt: skip
    return y, h, s, normed, mean, rstd, q, k, v, probs, heads


def _mixed_normed_attention_backward_loop(dy: np.ndarray, xs: np.ndarray, a_m: np.ndarray, a_r: np.ndarray,
                                          b: np.ndarray, h: np.ndarray, s: np.ndarray, gamma: np.ndarray,
                                          *kept: np.ndarray) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_mixed_normed_attention_backward_kernel``)."""
    dtype, d = xs.dtype, xs.shape[-1]
    da_r, db, ds, dxs, dh, dxs_width, da_m = _mixing_grads(xs, a_m, a_r, b)
    dnormed, dw, dbias = np.empty(h.shape, dtype), np.empty((4, d, d), dtype), np.empty((4, d), dtype)
    dgamma, dbeta = np.zeros(d), np.zeros(d)
    normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads = kept
    _mixed_normed_attention_backward_kernel(
        dy, xs, _width_weights(xs, a_m), a_r, b, h, s, gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads,
        da_r, db, ds, dxs, dnormed, dw, dbias, dh, dgamma, dbeta, dxs_width, da_m,
    )  # fmt: skip
    grads = (da_m.reshape(a_m.shape), da_r, db, dgamma, dbeta)
    dweights = (dw[0], dbias[0], dw[1], dbias[1], dw[2], dbias[2], dw[3], dbias[3])
    return (dxs_width, *_in_dtype(grads, dtype), *dweights)


def _mixed_normed_feed_forward_forward_loop(xs: np.ndarray, a_m: np.ndarray, a_r: np.ndarray, b: np.ndarray,
                                            gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays,
                                            activation: str) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_mixed_normed_feed_forward_forward_kernel``)."""
    w1, b1, w2, b2 = weights
    dtype, rows = xs.dtype, xs[0].size // xs.shape[-1]
    h, s, y = _mixing_outputs(xs, a_r)
    normed, mean, rstd = np.empty(h.shape, dtype), np.empty(rows, dtype), np.empty(rows, dtype)
    hidden = np.empty((rows, w1.shape[1]), dtype)
    acted = hidden if activation == "relu" else np.empty_like(hidden)  # ReLU in place, as the FFN's loop
    _mixed_normed_feed_forward_forward_kernel(
        xs, _width_weights(xs, a_m), a_r, b, gamma, beta, eps, w1, b1, w2, b2, feed_forward.FFN_CODES[activation], h,
        normed, mean, rstd, hidden, acted, s, y,
    )  # fmt: skip
    return y, h, s, normed, mean, rstd, hidden, acted


def _mixed_normed_feed_forward_backward_loop(dy: np.ndarray, xs: np.ndarray, a_m: np.ndarray, a_r: np.ndarray,
                                             b: np.ndarray, h: np.ndarray, s: np.ndarray, gamma: np.ndarray,
                                             normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray, w1: np.ndarray,
                                             w2: np.ndarray, hidden: np.ndarray, acted: np.ndarray,
                                             activation: str) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_mixed_normed_feed_forward_backward_kernel``)."""
    dtype, d = xs.dtype, xs.shape[-1]
    da_r, db, ds, dxs, dh, dxs_width, da_m = _mixing_grads(xs, a_m, a_r, b)
    dacted, dnormed = np.empty(acted.shape, dtype), np.empty(h.shape, dtype)
    dw1, db1 = np.empty(w1.shape, dtype), np.empty(w1.shape[1], dtype)
    dw2, db2 = np.empty(w2.shape, dtype), np.empty(w2.shape[1], dtype)
    dgamma, dbeta = np.zeros(d), np.zeros(d)
    _mixed_normed_feed_forward_backward_kernel(
        dy, xs, _width_weights(xs, a_m), a_r, b, h, s, gamma, normed, mean, rstd, w1, w2, hidden, acted,
        feed_forward.FFN_CODES[activation], da_r, db, ds, dxs, dacted, dnormed, dw1, db1, dw2, db2, dh, dgamma, dbeta,
        dxs_width, da_m,
    )  # fmt: skip
    grads = (da_m.reshape(a_m.shape), da_r, db, dgamma, dbeta)
    return (dxs_width, *_in_dtype(grads, dtype), dw1, db1, dw2, db2)


MIXED_NORMED_ATTENTION_FORWARD, MIXED_NORMED_ATTENTION_BACKWARD = (
    Twin(f"mixed_normed_attention_{way}", reference=reference, loop=loop,
         loop_pays_up_to=attention_sublayer.LOOP_PAYS_UP_TO)
    for way, reference, loop in (
        ("forward", mixed_normed_attention_forward_reference, _mixed_normed_attention_forward_loop),
        ("backward", mixed_normed_attention_backward_reference, _mixed_normed_attention_backward_loop),
    )
)  # fmt: skip
MIXED_NORMED_FEED_FORWARD_FORWARD, MIXED_NORMED_FEED_FORWARD_BACKWARD = (
    Twin(f"mixed_normed_feed_forward_{way}", reference=reference, loop=loop, loop_pays_up_to=linear.LOOP_PAYS_UP_TO)
    for way, reference, loop in (
        ("forward", mixed_normed_feed_forward_forward_reference, _mixed_normed_feed_forward_forward_loop),
        ("backward", mixed_normed_feed_forward_backward_reference, _mixed_normed_feed_forward_backward_loop),
    )
)
# The parts each fused kernel stands for, each way: while one of them is overridden, its NumPy twin runs.
PARTS = {
    MIXED_NORMED_ATTENTION_FORWARD: (
        WEIGHTED_SUM_FORWARD, residual_normed.RESIDUAL_NORMED_ATTENTION_FORWARD, *ATTENTION_PARTS[0],
        MIX_STREAMS_FORWARD,
    ),
    MIXED_NORMED_ATTENTION_BACKWARD: (
        WEIGHTED_SUM_BACKWARD, residual_normed.RESIDUAL_NORMED_ATTENTION_BACKWARD, *ATTENTION_PARTS[1],
        MIX_STREAMS_BACKWARD,
    ),
    MIXED_NORMED_FEED_FORWARD_FORWARD: (
        WEIGHTED_SUM_FORWARD, residual_normed.RESIDUAL_NORMED_FEED_FORWARD_FORWARD, *FEED_FORWARD_PARTS[0],
        MIX_STREAMS_FORWARD,
    ),
    MIXED_NORMED_FEED_FORWARD_BACKWARD: (
        WEIGHTED_SUM_BACKWARD, residual_normed.RESIDUAL_NORMED_FEED_FORWARD_BACKWARD, *FEED_FORWARD_PARTS[1],
        MIX_STREAMS_BACKWARD,
    ),
}  # fmt: skip


# ----- the public kernels --------------------------------------------------------------


def _checked_mixing(xs: Any, a_m: Any, a_r: Any, b: Any) -> Any:
    """``(xs, a_m, a_r, b)`` as float arrays of one dtype, xs (n, B, T, d), a_m (n,) or (B, T, n),
    and a_r (n, m) and b (m,) or a_r (B, T, n, m) and b (B, T, m), or an error."""
    xs, a_m, a_r, b = float_arrays(xs, a_m, a_r, b)
    n = xs.shape[0] if xs.ndim == 4 else -1
    tokens = xs.shape[1:-1]
    m = a_r.shape[-1] if a_r.ndim >= 2 else 0
    width_fits = a_m.shape in ((n,), (*tokens, n))
    depth_fits = (a_r.shape, b.shape) in (((n, m), (m,)), ((*tokens, n, m), (*tokens, m)))
    check_fit(n >= 1 and m >= 1 and width_fits and depth_fits, "xs", xs, "a_m", a_m, "a_r", a_r, "b", b)
    return xs, a_m, a_r, b


def mixed_normed_attention_forward(xs: Any, a_m: Any, a_r: Any, b: Any, gamma: Any, beta: Any, eps: float,
                                   weights: Arrays, n_heads: int, causal: bool) -> Arrays:  # fmt: skip
    """y = mix_streams(a_r, b, A(LN(sum_i a_m[i] x_i)), xs), A the self-attention sublayer of
    ``weights`` (wq, bq, wk, bk, wv, bv, wo, bo), the mixtures' weights shared or per token;
    returns ``(y, h, s, normed, mean, rstd, q, k, v, probs, heads)``."""
    xs, a_m, a_r, b = _checked_mixing(xs, a_m, a_r, b)
    _, gamma, beta, *checked = checked_attention_branch(xs[0], gamma, beta, weights, n_heads, causal)
    fused = MIXED_NORMED_ATTENTION_FORWARD
    forward = path(fused, PARTS[fused], *attention_work(xs[0]))
    return forward(xs, a_m, a_r, b, gamma, beta, float(eps), tuple(checked), n_heads, bool(causal))


def mixed_normed_attention_backward(dy: np.ndarray, xs: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP of :func:`mixed_normed_attention_forward` at ``dy`` from its ``xs`` and residuals
    (``a_m, a_r, b, h, s, gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads``,
    unchanged); returns ``(dxs, da_m, da_r, db, dgamma, dbeta, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo)``."""
    dy = cotangent(dy, xs.dtype, (residuals[1].shape[-1], *xs.shape[1:]))
    fused = MIXED_NORMED_ATTENTION_BACKWARD
    return path(fused, PARTS[fused], *attention_work(xs[0]))(dy, xs, *residuals)


def mixed_normed_feed_forward_forward(xs: Any, a_m: Any, a_r: Any, b: Any, gamma: Any, beta: Any, eps: float,
                                      weights: Arrays, activation: str) -> Arrays:  # fmt: skip
    """y = mix_streams(a_r, b, F(LN(sum_i a_m[i] x_i)), xs), F the FFN of ``weights`` (w1, b1,
    w2, b2), the mixtures' weights shared or per token; returns ``(y, h, s, normed, mean, rstd,
    hidden, acted)``."""
    xs, a_m, a_r, b = _checked_mixing(xs, a_m, a_r, b)
    _, gamma, beta, *checked = checked_feed_forward_branch(xs[0], gamma, beta, weights, activation)
    fused = MIXED_NORMED_FEED_FORWARD_FORWARD
    forward = path(fused, PARTS[fused], xs[0].size // xs.shape[-1] * checked[0].size)
    return forward(xs, a_m, a_r, b, gamma, beta, float(eps), tuple(checked), activation)


def mixed_normed_feed_forward_backward(dy: np.ndarray, xs: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP of :func:`mixed_normed_feed_forward_forward` at ``dy`` from its ``xs`` and residuals
    (``a_m, a_r, b, h, s, gamma, normed, mean, rstd, w1, w2, hidden, acted, activation``,
    unchanged); returns ``(dxs, da_m, da_r, db, dgamma, dbeta, dw1, db1, dw2, db2)``."""
    dy = cotangent(dy, xs.dtype, (residuals[1].shape[-1], *xs.shape[1:]))
    work = xs[0].size // xs.shape[-1] * residuals[9].size
    fused = MIXED_NORMED_FEED_FORWARD_BACKWARD
    return path(fused, PARTS[fused], work)(dy, xs, *residuals)
