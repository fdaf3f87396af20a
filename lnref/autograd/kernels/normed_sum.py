"""A LayerNorm of a residual sum, y = LN(a + S(a)), as one kernel each way.

Post-LN's two branches, and any scheme's branch of that shape, are three primitives: the
sublayer S (the attention sublayer or the FFN), the residual add and the norm. A replayed pass
fuses them (``autograd/fusion.py``); here one compiled call runs the forward and one the
backward, calling the composition's own loops in the composition's order (the sublayer's
whole-sublayer kernel, the add, LayerNorm's row loops), so the fused branch and the three
primitives agree to the bit. As in ``residual_normed.py``, past the sublayer's loop limit, or
while another implementation stands in one of the three kernels' place, the NumPy twin runs
the composition's public kernels in one call.

Arguments: ``a`` (B, T, d), the norm's ``gamma`` and ``beta`` (d,) and ``eps``, then the
sublayer's weights (self-attention only). The residuals are the sublayer's own, the sum
``total`` and the norm's ``mean`` and ``rstd``.

    forward:   total = a + S(a),   y = LN(total)
    backward:  dtotal, dgamma, dbeta = LN's VJP at dy,   da_s, dW = the sublayer's VJP at dtotal
               da = dtotal + da_s          (the add's cotangent first, as the tape accumulates it)
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

import lnref.autograd.kernels as kernels
from lnref.autograd.kernels import attention_sublayer, feed_forward
from lnref.autograd.kernels.branches import (
    ATTENTION_PARTS,
    FEED_FORWARD_PARTS,
    add_into,
    attention_twins,
    attention_work,
    checked_attention_branch,
    checked_feed_forward_branch,
    feed_forward_twins,
    path,
)
from lnref.autograd.kernels.checks import cotangent
from lnref.autograd.kernels.norms import layer_norm_backward_kernel, layer_norm_forward_kernel
from lnref.autograd.kernels.seam import njit

Arrays = tuple[np.ndarray, ...]


def normed(total: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> Arrays:
    """(LN(total) of total's shape, mean, rstd) through the public kernel."""
    rows, mean, rstd = kernels.layer_norm_forward(total.reshape(-1, total.shape[-1]), gamma, beta, eps)
    return rows.reshape(total.shape), mean, rstd


def norm_backward(dy: np.ndarray, total: np.ndarray, gamma: np.ndarray, mean: np.ndarray, rstd: np.ndarray) -> Arrays:
    d = total.shape[-1]
    dtotal, dgamma, dbeta = kernels.layer_norm_backward(
        dy.reshape(-1, d), total.reshape(-1, d), gamma, mean, rstd, residuals_checked=True
    )
    return dtotal.reshape(total.shape), dgamma, dbeta


# ----- the attention branch ------------------------------------------------------------


def normed_sum_attention_forward_reference(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, n_heads: int, causal: bool
) -> Arrays:
    """NumPy twin: the three kernels in turn; returns ``(y, total, mean, rstd, q, k, v, probs,
    heads)``."""
    wq, bq, wk, bk, wv, bv, wo, bo = weights
    out, *kept = kernels.attention_sublayer_forward(a, None, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal)
    total = a + out
    y, mean, rstd = normed(total, gamma, beta, eps)
    return (y, total, mean, rstd, *kept)


def normed_sum_attention_backward_reference(
    dy: np.ndarray,
    a: np.ndarray,
    gamma: np.ndarray,
    total: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    wq: np.ndarray,
    wk: np.ndarray,
    wv: np.ndarray,
    wo: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    probs: np.ndarray,
    heads: np.ndarray,
) -> Arrays:
    """NumPy twin; returns ``(da, dgamma, dbeta, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo)``."""
    dtotal, dgamma, dbeta = norm_backward(dy, total, gamma, mean, rstd)
    da, _, *dweights = kernels.attention_sublayer_backward(
        dtotal, a, None, wq, wk, wv, wo, q, k, v, probs, heads, residuals_checked=True
    )
    return (dtotal + cast(np.ndarray, da), dgamma, dbeta, *cast(Arrays, dweights))


@njit(cache=True)
def _normed_sum_attention_forward_kernel(
    a: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float,
    wq: np.ndarray,
    bq: np.ndarray,
    wk: np.ndarray,
    bk: np.ndarray,
    wv: np.ndarray,
    bv: np.ndarray,
    wo: np.ndarray,
    bo: np.ndarray,
    causal: bool,
    total: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    probs: np.ndarray,
    heads: np.ndarray,
    y: np.ndarray,
) -> None:
    n_batch, t_len, d = a.shape
    n_rows = n_batch * t_len
    attention_sublayer._attention_sublayer_forward_kernel(
        a, a, wq, bq, wk, bk, wv, bv, wo, bo, causal, q, k, v, probs, heads, total
    )
    add_into(a, total)
    layer_norm_forward_kernel(total.reshape((n_rows, d)), gamma, beta, eps, y.reshape((n_rows, d)), mean, rstd)


@njit(cache=True)
def _normed_sum_attention_backward_kernel(
    dy: np.ndarray,
    a: np.ndarray,
    gamma: np.ndarray,
    total: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    wq: np.ndarray,
    wk: np.ndarray,
    wv: np.ndarray,
    wo: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    probs: np.ndarray,
    heads: np.ndarray,
    dtotal: np.ndarray,
    dw: np.ndarray,
    db: np.ndarray,
    da: np.ndarray,
    dgamma: np.ndarray,
    dbeta: np.ndarray,
) -> None:
    n_batch, t_len, d = a.shape
    n_rows = n_batch * t_len
    layer_norm_backward_kernel(
        dy.reshape((n_rows, d)),
        total.reshape((n_rows, d)),
        gamma,
        mean,
        rstd,
        dtotal.reshape((n_rows, d)),
        dgamma,
        dbeta,
    )
    attention_sublayer._attention_sublayer_backward_kernel(
        dtotal, a, a, wq, wk, wv, wo, q, k, v, probs, heads, False, da, da, dw, db
    )
    add_into(dtotal, da)


NORMED_SUM_ATTENTION_FORWARD, NORMED_SUM_ATTENTION_BACKWARD = attention_twins(
    "normed_sum_attention",
    (normed_sum_attention_forward_reference, normed_sum_attention_backward_reference),
    _normed_sum_attention_forward_kernel,
    _normed_sum_attention_backward_kernel,
)


# ----- the feed-forward branch ---------------------------------------------------------


def normed_sum_feed_forward_forward_reference(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, activation: str
) -> Arrays:
    """NumPy twin; returns ``(y, total, mean, rstd, hidden, acted)``."""
    w1, b1, w2, b2 = weights
    out, hidden, acted = kernels.feed_forward_forward(a.reshape(-1, a.shape[-1]), w1, b1, w2, b2, activation)
    total = a + out.reshape(a.shape)
    y, mean, rstd = normed(total, gamma, beta, eps)
    return y, total, mean, rstd, hidden, acted


def normed_sum_feed_forward_backward_reference(
    dy: np.ndarray,
    a: np.ndarray,
    gamma: np.ndarray,
    total: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    w1: np.ndarray,
    w2: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    activation: str,
) -> Arrays:
    """NumPy twin; returns ``(da, dgamma, dbeta, dw1, db1, dw2, db2)``."""
    d = a.shape[-1]
    dtotal, dgamma, dbeta = norm_backward(dy, total, gamma, mean, rstd)
    da, *dweights = kernels.feed_forward_backward(
        dtotal.reshape(-1, d), a.reshape(-1, d), w1, w2, hidden, acted, activation, residuals_checked=True
    )
    return (dtotal + da.reshape(a.shape), dgamma, dbeta, *dweights)


@njit(cache=True)
def _normed_sum_feed_forward_forward_kernel(
    a: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    activation: int,
    total: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    y: np.ndarray,
) -> None:
    rows = (mean.size, a.shape[-1])
    feed_forward._feed_forward_forward_kernel(
        a.reshape(rows), w1, b1, w2, b2, activation, hidden, acted, total.reshape(rows)
    )
    add_into(a, total)
    layer_norm_forward_kernel(total.reshape(rows), gamma, beta, eps, y.reshape(rows), mean, rstd)


@njit(cache=True)
def _normed_sum_feed_forward_backward_kernel(
    dy: np.ndarray,
    a: np.ndarray,
    gamma: np.ndarray,
    total: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    w1: np.ndarray,
    w2: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    activation: int,
    dacted: np.ndarray,
    dtotal: np.ndarray,
    dw1: np.ndarray,
    db1: np.ndarray,
    dw2: np.ndarray,
    db2: np.ndarray,
    da: np.ndarray,
    dgamma: np.ndarray,
    dbeta: np.ndarray,
) -> None:
    rows = (mean.size, a.shape[-1])
    layer_norm_backward_kernel(
        dy.reshape(rows), total.reshape(rows), gamma, mean, rstd, dtotal.reshape(rows), dgamma, dbeta
    )
    feed_forward._feed_forward_backward_kernel(
        dtotal.reshape(rows),
        a.reshape(rows),
        w1,
        w2,
        hidden,
        acted,
        activation,
        dacted,
        da.reshape(rows),
        dw1,
        db1,
        dw2,
        db2,
    )
    add_into(dtotal, da)


NORMED_SUM_FEED_FORWARD_FORWARD, NORMED_SUM_FEED_FORWARD_BACKWARD = feed_forward_twins(
    "normed_sum_feed_forward",
    (normed_sum_feed_forward_forward_reference, normed_sum_feed_forward_backward_reference),
    _normed_sum_feed_forward_forward_kernel,
    _normed_sum_feed_forward_backward_kernel,
)


# ----- the public kernels --------------------------------------------------------------


def normed_sum_attention_forward(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, n_heads: int, causal: bool
) -> Arrays:
    """y = LN(a + A(a)), A the self-attention sublayer of ``weights`` (wq, bq, wk, bk, wv, bv,
    wo, bo); returns ``(y, total, mean, rstd, q, k, v, probs, heads)``."""
    a, gamma, beta, *checked = checked_attention_branch(a, gamma, beta, weights, n_heads, causal)
    forward = path(NORMED_SUM_ATTENTION_FORWARD, ATTENTION_PARTS[0], *attention_work(a))
    return forward(a, gamma, beta, float(eps), tuple(checked), n_heads, bool(causal))


def normed_sum_attention_backward(dy: np.ndarray, a: np.ndarray, *residuals: np.ndarray) -> Arrays:
    """The VJP of :func:`normed_sum_attention_forward` at ``dy``, from its input ``a`` and
    residuals (``gamma, total, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads``: the
    forward's own, unchanged); returns ``(da, dgamma, dbeta, dwq, dbq, dwk, dbk, dwv, dbv,
    dwo, dbo)``."""
    dy = cotangent(dy, a.dtype, a.shape)
    return path(NORMED_SUM_ATTENTION_BACKWARD, ATTENTION_PARTS[1], *attention_work(a))(dy, a, *residuals)


def normed_sum_feed_forward_forward(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, activation: str
) -> Arrays:
    """y = LN(a + F(a)), F the FFN of ``weights`` (w1, b1, w2, b2); returns ``(y, total, mean,
    rstd, hidden, acted)``."""
    a, gamma, beta, *checked = checked_feed_forward_branch(a, gamma, beta, weights, activation)
    forward = path(NORMED_SUM_FEED_FORWARD_FORWARD, FEED_FORWARD_PARTS[0], a.size // a.shape[-1] * checked[0].size)
    return forward(a, gamma, beta, float(eps), tuple(checked), activation)


def normed_sum_feed_forward_backward(dy: np.ndarray, a: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP of :func:`normed_sum_feed_forward_forward` at ``dy``, from its input ``a`` and
    residuals (``gamma, total, mean, rstd, w1, w2, hidden, acted, activation``: the forward's
    own, unchanged); returns ``(da, dgamma, dbeta, dw1, db1, dw2, db2)``."""
    dy = cotangent(dy, a.dtype, a.shape)
    work = a.size // a.shape[-1] * residuals[4].size
    return path(NORMED_SUM_FEED_FORWARD_BACKWARD, FEED_FORWARD_PARTS[1], work)(dy, a, *residuals)
