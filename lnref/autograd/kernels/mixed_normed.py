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
    checked_attention_branch,
    checked_feed_forward_branch,
    path,
)
from lnref.autograd.kernels.checks import FLOAT_DTYPES, check_fit, cotangent, float_arrays
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
    wv: Any, bv: Any, wo: Any, bo: Any, causal: bool, kept: Any, stats: Any, probs: Any, y: Any,
) -> None:  # fmt: skip
    """Writes ``y``, ``probs``, ``kept`` (7, B, T, d): h, s, normed, q, k, v, heads, and
    ``stats`` (2, rows): mean, rstd."""
    h, s, normed, q, k, v, heads = kept[0], kept[1], kept[2], kept[3], kept[4], kept[5], kept[6]
    _width_forward(xs, a_m, h)
    residual_normed._residual_normed_attention_forward_kernel(
        h, gamma, beta, eps, wq, bq, wk, bk, wv, bv, wo, bo, causal, normed, stats[0], stats[1], q, k, v, probs, heads,
        s, False,
    )  # fmt: skip
    _mix_streams_forward_kernel(a_r, b, s, xs, y)


@njit(cache=True)
def _mixed_normed_attention_backward_kernel(
    dy: Any, xs: Any, a_m: Any, a_r: Any, b: Any, h: Any, s: Any, gamma: Any, normed: Any, mean: Any, rstd: Any,
    wq: Any, wk: Any, wv: Any, wo: Any, q: Any, k: Any, v: Any, probs: Any, heads: Any, da_r: Any, db: Any, dw: Any,
    dbias: Any, dgamma: Any, dbeta: Any, da_m: Any, dxs: Any,
) -> None:  # fmt: skip
    """Writes ``dxs``, ``dw`` and ``dbias``, adds into the zeroed ``da_r``, ``db``, ``dgamma``,
    ``dbeta`` and ``da_m``; the cotangents between the three parts are scratch of its own."""
    ds, dxs_depth, dh, dnormed = np.empty_like(s), np.empty_like(xs), np.empty_like(h), np.empty_like(h)
    _mix_streams_backward_kernel(dy, a_r, b, s, xs, da_r, db, ds, dxs_depth)
    residual_normed._residual_normed_attention_backward_kernel(
        ds, h, gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads, dnormed, dw, dbias, dh, dgamma,
        dbeta, False,
    )  # fmt: skip
    _width_backward(dh, xs, a_m, dxs, da_m)
    add_into(dxs_depth, dxs)


@njit(cache=True)
def _mixed_normed_feed_forward_forward_kernel(
    xs: Any, a_m: Any, a_r: Any, b: Any, gamma: Any, beta: Any, eps: float, w1: Any, b1: Any, w2: Any, b2: Any,
    activation: int, kept: Any, stats: Any, hidden: Any, acted: Any, y: Any,
) -> None:  # fmt: skip
    """Writes ``y``, ``hidden``, ``acted``, ``kept`` (3, B, T, d): h, s, normed, and ``stats``
    (2, rows): mean, rstd."""
    h, s, normed = kept[0], kept[1], kept[2]
    _width_forward(xs, a_m, h)
    residual_normed._residual_normed_feed_forward_forward_kernel(
        h, gamma, beta, eps, w1, b1, w2, b2, activation, normed, stats[0], stats[1], hidden, acted, s, False, False
    )
    _mix_streams_forward_kernel(a_r, b, s, xs, y)


@njit(cache=True)
def _mixed_normed_feed_forward_backward_kernel(
    dy: Any, xs: Any, a_m: Any, a_r: Any, b: Any, h: Any, s: Any, gamma: Any, normed: Any, mean: Any, rstd: Any,
    w1: Any, w2: Any, hidden: Any, acted: Any, activation: int, da_r: Any, db: Any, dw1: Any, db1: Any, dw2: Any,
    db2: Any, dgamma: Any, dbeta: Any, da_m: Any, dxs: Any,
) -> None:  # fmt: skip
    """As :func:`_mixed_normed_attention_backward_kernel`, for the FFN."""
    ds, dxs_depth, dh, dnormed = np.empty_like(s), np.empty_like(xs), np.empty_like(h), np.empty_like(h)
    dacted = np.empty_like(acted)
    _mix_streams_backward_kernel(dy, a_r, b, s, xs, da_r, db, ds, dxs_depth)
    residual_normed._residual_normed_feed_forward_backward_kernel(
        ds, h, gamma, normed, mean, rstd, w1, w2, hidden, acted, activation, dacted, dnormed, dw1, db1, dw2, db2, dh,
        dgamma, dbeta, False, False,
    )  # fmt: skip
    _width_backward(dh, xs, a_m, dxs, da_m)
    add_into(dxs_depth, dxs)


# ----- the loop twins ----------------------------------------------------------------------
# The arrays of one shape that a forward keeps are the rows of one allocation (one allocation
# and one argument of the compiled call, where each would be its own); the cotangents passed
# between the three parts are the compiled kernel's own scratch, never seen by Python. The
# weights' cotangents are float64 accumulators, zeroed, as the parts' loops keep them, then
# rounded to the copies' dtype as the parts' loop twins round them.


def _accumulators(width: np.ndarray, a_r: np.ndarray, b: np.ndarray, d: int) -> Arrays:
    """``da_r``, ``db``, ``dgamma``, ``dbeta`` and ``da_m``, shaped as ``width``, zeroed float64."""
    return np.zeros(a_r.shape), np.zeros(b.shape), np.zeros(d), np.zeros(d), np.zeros(width.shape)


def _rounded(dtype: np.dtype, a_m: np.ndarray, da_m: np.ndarray, *grads: np.ndarray) -> Arrays:
    """``(da_m, *grads)``, ``da_m`` shaped as ``a_m``, in ``dtype``."""
    da_m = da_m.reshape(a_m.shape)
    if dtype is FLOAT_DTYPES[1] or dtype == FLOAT_DTYPES[1]:
        return (da_m, *grads)
    return (da_m.astype(dtype), *(g.astype(dtype) for g in grads))


def _mixed_normed_attention_forward_loop(xs: np.ndarray, a_m: np.ndarray, a_r: np.ndarray, b: np.ndarray,
                                         gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays,
                                         n_heads: int, causal: bool) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_mixed_normed_attention_forward_kernel``)."""
    n, batch, t_len, d = xs.shape
    dtype = xs.dtype
    kept, stats = np.empty((7, batch, t_len, d), dtype), np.empty((2, batch * t_len), dtype)
    probs = np.zeros((batch, n_heads, t_len, t_len), dtype)
    y = np.empty((a_r.shape[-1], batch, t_len, d), dtype)
    wq, bq, wk, bk, wv, bv, wo, bo = weights
    _mixed_normed_attention_forward_kernel(
        xs, a_m.reshape(-1, n), a_r, b, gamma, beta, eps, wq, bq, wk, bk, wv, bv, wo, bo, causal, kept, stats, probs, y
    )
    h, s, normed, q, k, v, heads = kept
    mean, rstd = stats
    return y, h, s, normed, mean, rstd, q, k, v, probs, heads


def _mixed_normed_attention_backward_loop(dy: np.ndarray, xs: np.ndarray, a_m: np.ndarray, a_r: np.ndarray,
                                          b: np.ndarray, h: np.ndarray, s: np.ndarray, gamma: np.ndarray,
                                          normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray, wq: np.ndarray,
                                          wk: np.ndarray, wv: np.ndarray, wo: np.ndarray, q: np.ndarray,
                                          k: np.ndarray, v: np.ndarray, probs: np.ndarray,
                                          heads: np.ndarray) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_mixed_normed_attention_backward_kernel``)."""
    dtype, d, width = xs.dtype, xs.shape[-1], a_m.reshape(-1, len(xs))  # (1, n) shared, (rows, n) per token
    da_r, db, dgamma, dbeta, da_m = _accumulators(width, a_r, b, d)
    dxs, dw, dbias = np.empty(xs.shape, dtype), np.empty((4, d, d), dtype), np.empty((4, d), dtype)
    _mixed_normed_attention_backward_kernel(
        dy, xs, width, a_r, b, h, s, gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs,
        heads, da_r, db, dw, dbias, dgamma, dbeta, da_m, dxs,
    )  # fmt: skip
    dwq, dwk, dwv, dwo = dw
    dbq, dbk, dbv, dbo = dbias
    return (dxs, *_rounded(dtype, a_m, da_m, da_r, db, dgamma, dbeta), dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo)


def _mixed_normed_feed_forward_forward_loop(xs: np.ndarray, a_m: np.ndarray, a_r: np.ndarray, b: np.ndarray,
                                            gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays,
                                            activation: str) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_mixed_normed_feed_forward_forward_kernel``)."""
    w1, b1, w2, b2 = weights
    n, batch, t_len, d = xs.shape
    dtype, rows = xs.dtype, batch * t_len
    kept, stats = np.empty((3, batch, t_len, d), dtype), np.empty((2, rows), dtype)
    hidden = np.empty((rows, w1.shape[1]), dtype)
    acted = hidden if activation == "relu" else np.empty_like(hidden)  # ReLU in place, as the FFN's loop
    y = np.empty((a_r.shape[-1], batch, t_len, d), dtype)
    _mixed_normed_feed_forward_forward_kernel(
        xs, a_m.reshape(-1, n), a_r, b, gamma, beta, eps, w1, b1, w2, b2, feed_forward.FFN_CODES[activation], kept,
        stats, hidden, acted, y,
    )  # fmt: skip
    h, s, normed = kept
    mean, rstd = stats
    return y, h, s, normed, mean, rstd, hidden, acted


def _mixed_normed_feed_forward_backward_loop(dy: np.ndarray, xs: np.ndarray, a_m: np.ndarray, a_r: np.ndarray,
                                             b: np.ndarray, h: np.ndarray, s: np.ndarray, gamma: np.ndarray,
                                             normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray, w1: np.ndarray,
                                             w2: np.ndarray, hidden: np.ndarray, acted: np.ndarray,
                                             activation: str) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_mixed_normed_feed_forward_backward_kernel``)."""
    dtype, d, width = xs.dtype, xs.shape[-1], a_m.reshape(-1, len(xs))  # (1, n) shared, (rows, n) per token
    da_r, db, dgamma, dbeta, da_m = _accumulators(width, a_r, b, d)
    dxs = np.empty(xs.shape, dtype)
    dw1, db1 = np.empty(w1.shape, dtype), np.empty(w1.shape[1], dtype)
    dw2, db2 = np.empty(w2.shape, dtype), np.empty(w2.shape[1], dtype)
    _mixed_normed_feed_forward_backward_kernel(
        dy, xs, width, a_r, b, h, s, gamma, normed, mean, rstd, w1, w2, hidden, acted,
        feed_forward.FFN_CODES[activation], da_r, db, dw1, db1, dw2, db2, dgamma, dbeta, da_m, dxs,
    )  # fmt: skip
    return (dxs, *_rounded(dtype, a_m, da_m, da_r, db, dgamma, dbeta), dw1, db1, dw2, db2)


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


def _plain_mixing(xs: Any, a_m: Any, a_r: Any, b: Any, gamma: Any, beta: Any, weights: Arrays) -> int:
    """The copies' width d where every argument is a C-contiguous ndarray of the copies' float
    dtype, xs (n, B, T, d), the mixtures' weights fit as :func:`_checked_mixing` asks, and gamma
    and beta are (d,); else 0, and the full checks decide (they raise the errors)."""
    if type(xs) is not np.ndarray or xs.dtype not in FLOAT_DTYPES or xs.ndim != 4:
        return 0
    dtype = xs.dtype
    for array in (xs, a_m, a_r, b, gamma, beta, *weights):
        if type(array) is not np.ndarray or array.dtype is not dtype and array.dtype != dtype:
            return 0
        if not array.flags.c_contiguous:
            return 0
    n, batch, t_len, d = xs.shape
    m = a_r.shape[-1] if a_r.ndim >= 2 else 0
    if a_m.ndim == 1:
        fits = a_m.shape == (n,) and a_r.shape == (n, m) and b.shape == (m,)
    else:
        fits = a_m.shape == (batch, t_len, n) and a_r.shape == (batch, t_len, n, m) and b.shape == (batch, t_len, m)
    return d if fits and n >= 1 and m >= 1 and gamma.shape == beta.shape == (d,) else 0


def _attention_work(xs: np.ndarray) -> tuple[int, int]:
    """The attention sublayer's measures of work on each copy of ``xs`` (n, B, T, d)."""
    _, batch, t_len, d = xs.shape
    return attention_sublayer.attention_sublayer_work(batch, t_len, t_len, d)


def mixed_normed_attention_forward(xs: Any, a_m: Any, a_r: Any, b: Any, gamma: Any, beta: Any, eps: float,
                                   weights: Arrays, n_heads: int, causal: bool) -> Arrays:  # fmt: skip
    """y = mix_streams(a_r, b, A(LN(sum_i a_m[i] x_i)), xs), A the self-attention sublayer of
    ``weights`` (wq, bq, wk, bk, wv, bv, wo, bo), the mixtures' weights shared or per token;
    returns ``(y, h, s, normed, mean, rstd, q, k, v, probs, heads)``."""
    d = _plain_mixing(xs, a_m, a_r, b, gamma, beta, weights) if len(weights) == 8 else 0
    if not (
        d
        and weights[0].shape == weights[2].shape == weights[4].shape == weights[6].shape == (d, d)
        and weights[1].shape == weights[3].shape == weights[5].shape == weights[7].shape == (d,)
        and type(n_heads) is int
        and n_heads >= 1
        and d % n_heads == 0
    ):  # the common case decided in these comparisons; the full checks name what does not fit
        xs, a_m, a_r, b = _checked_mixing(xs, a_m, a_r, b)
        _, gamma, beta, *checked = checked_attention_branch(xs[0], gamma, beta, weights, n_heads, causal)
        weights = tuple(checked)
    fused = MIXED_NORMED_ATTENTION_FORWARD
    forward = path(fused, PARTS[fused], *_attention_work(xs))
    return forward(xs, a_m, a_r, b, gamma, beta, float(eps), tuple(weights), n_heads, bool(causal))


def mixed_normed_attention_backward(dy: np.ndarray, xs: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP of :func:`mixed_normed_attention_forward` at ``dy`` from its ``xs`` and residuals
    (``a_m, a_r, b, h, s, gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads``,
    unchanged); returns ``(dxs, da_m, da_r, db, dgamma, dbeta, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo)``."""
    dy = cotangent(dy, xs.dtype, (residuals[1].shape[-1], *xs.shape[1:]))
    fused = MIXED_NORMED_ATTENTION_BACKWARD
    return path(fused, PARTS[fused], *_attention_work(xs))(dy, xs, *residuals)


def mixed_normed_feed_forward_forward(xs: Any, a_m: Any, a_r: Any, b: Any, gamma: Any, beta: Any, eps: float,
                                      weights: Arrays, activation: str) -> Arrays:  # fmt: skip
    """y = mix_streams(a_r, b, F(LN(sum_i a_m[i] x_i)), xs), F the FFN of ``weights`` (w1, b1,
    w2, b2), the mixtures' weights shared or per token; returns ``(y, h, s, normed, mean, rstd,
    hidden, acted)``."""
    d = _plain_mixing(xs, a_m, a_r, b, gamma, beta, weights) if len(weights) == 4 else 0
    if d:
        w1, b1, w2, b2 = weights
        hidden = w1.shape[-1]
        d = d if w1.shape == (d, hidden) and b1.shape == (hidden,) and w2.shape == (hidden, d) else 0
        d = d if b2.shape == (d,) and activation in feed_forward.FFN_ACTIVATIONS else 0
    if not d:  # the full checks name what does not fit
        xs, a_m, a_r, b = _checked_mixing(xs, a_m, a_r, b)
        _, gamma, beta, *checked = checked_feed_forward_branch(xs[0], gamma, beta, weights, activation)
        weights = tuple(checked)
    fused = MIXED_NORMED_FEED_FORWARD_FORWARD
    forward = path(fused, PARTS[fused], xs.size // len(xs) // xs.shape[-1] * weights[0].size)
    return forward(xs, a_m, a_r, b, gamma, beta, float(eps), tuple(weights), activation)


def mixed_normed_feed_forward_backward(dy: np.ndarray, xs: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP of :func:`mixed_normed_feed_forward_forward` at ``dy`` from its ``xs`` and residuals
    (``a_m, a_r, b, h, s, gamma, normed, mean, rstd, w1, w2, hidden, acted, activation``,
    unchanged); returns ``(dxs, da_m, da_r, db, dgamma, dbeta, dw1, db1, dw2, db2)``."""
    dy = cotangent(dy, xs.dtype, (residuals[1].shape[-1], *xs.shape[1:]))
    work = xs.size // len(xs) // xs.shape[-1] * residuals[9].size
    fused = MIXED_NORMED_FEED_FORWARD_BACKWARD
    return path(fused, PARTS[fused], work)(dy, xs, *residuals)
