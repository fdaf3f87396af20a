"""A residual branch with a LayerNorm on its input, y = a + S(LN(a)), as one kernel each way;
with ``residual`` False, the branch alone, y = S(LN(a)).

Pre-LN's two branches, and any scheme's branch of that shape, are three primitives: the norm,
the sublayer S (the attention sublayer or the FFN) and the residual add, six kernel calls a
pass. A replayed pass fuses them (``autograd/fusion.py``); here one compiled call runs the
forward and one the backward, calling the composition's own loops in the composition's order
(LayerNorm's row loops, the sublayer's whole-sublayer kernel, then the add), so the fused
branch and the three primitives agree to the bit. Past the sublayer's loop limit, or while a
test or a benchmark has put another implementation in the place of one of the three kernels,
the NumPy twin runs the composition's public kernels in one call.

Arguments: ``a`` (B, T, d), the norm's ``gamma`` and ``beta`` (d,) and ``eps``, then the
sublayer's weights as ``attention_sublayer`` and ``feed_forward`` take them (self-attention
only). The residuals are the norm's output ``normed`` and its ``mean`` and ``rstd``, then the
sublayer's own.

    forward:   normed = LN(a),   y = a + S(normed)     (residual False: y = S(normed))
    backward:  dnormed, dW = the sublayer's VJP at dy,   da_ln, dgamma, dbeta = LN's VJP at dnormed
               da = dy + da_ln          (the add's cotangent first, as the tape accumulates it;
                                         residual False: da = da_ln)

The flag ``residual`` comes last, after the forward's arguments and after the backward's
residuals; the FFN's branch takes one more after it, ``normed_skip``: the skip carries the
normed value, y = LN(a) + F(LN(a)) (HybridNorm's Post-Norm FFN), whose backward adds dy to
dnormed before the norm's VJP (the skip's term first, as the tape accumulates it) instead of
to da.
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


# ----- the attention branch ------------------------------------------------------------


def residual_normed_attention_forward_reference(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, n_heads: int, causal: bool,
    residual: bool,
) -> Arrays:  # fmt: skip
    """NumPy twin: the three kernels in turn; returns ``(y, normed, mean, rstd, q, k, v,
    probs, heads)``."""
    rows, mean, rstd = kernels.layer_norm_forward(a.reshape(-1, a.shape[-1]), gamma, beta, eps)
    normed = rows.reshape(a.shape)
    wq, bq, wk, bk, wv, bv, wo, bo = weights
    out, *kept = kernels.attention_sublayer_forward(normed, None, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal)
    return (a + out if residual else out, normed, mean, rstd, *kept)


def residual_normed_attention_backward_reference(
    dy: np.ndarray,
    a: np.ndarray,
    gamma: np.ndarray,
    normed: np.ndarray,
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
    residual: bool,
) -> Arrays:
    """NumPy twin; returns ``(da, dgamma, dbeta, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo)``."""
    dnormed, _, *dweights = kernels.attention_sublayer_backward(
        dy, normed, None, wq, wk, wv, wo, q, k, v, probs, heads, residuals_checked=True
    )
    d = a.shape[-1]
    da, dgamma, dbeta = kernels.layer_norm_backward(
        cast(np.ndarray, dnormed).reshape(-1, d), a.reshape(-1, d), gamma, mean, rstd, residuals_checked=True
    )
    da = da.reshape(a.shape)
    return (dy + da if residual else da, dgamma, dbeta, *cast(Arrays, dweights))


@njit(cache=True)
def _residual_normed_attention_forward_kernel(
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
    normed: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    probs: np.ndarray,
    heads: np.ndarray,
    y: np.ndarray,
    residual: bool,
) -> None:
    n_batch, t_len, d = a.shape
    n_rows = n_batch * t_len
    layer_norm_forward_kernel(a.reshape((n_rows, d)), gamma, beta, eps, normed.reshape((n_rows, d)), mean, rstd)
    attention_sublayer._attention_sublayer_forward_kernel(
        normed, normed, wq, bq, wk, bk, wv, bv, wo, bo, causal, q, k, v, probs, heads, y
    )
    if residual:
        add_into(a, y)


@njit(cache=True)
def _residual_normed_attention_backward_kernel(
    dy: np.ndarray,
    a: np.ndarray,
    gamma: np.ndarray,
    normed: np.ndarray,
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
    dnormed: np.ndarray,
    dw: np.ndarray,
    db: np.ndarray,
    da: np.ndarray,
    dgamma: np.ndarray,
    dbeta: np.ndarray,
    residual: bool,
) -> None:
    n_batch, t_len, d = a.shape
    n_rows = n_batch * t_len
    attention_sublayer._attention_sublayer_backward_kernel(
        dy, normed, normed, wq, wk, wv, wo, q, k, v, probs, heads, False, dnormed, dnormed, dw, db
    )
    layer_norm_backward_kernel(
        dnormed.reshape((n_rows, d)), a.reshape((n_rows, d)), gamma, mean, rstd, da.reshape((n_rows, d)), dgamma, dbeta
    )
    if residual:
        add_into(dy, da)


RESIDUAL_NORMED_ATTENTION_FORWARD, RESIDUAL_NORMED_ATTENTION_BACKWARD = attention_twins(
    "residual_normed_attention",
    (residual_normed_attention_forward_reference, residual_normed_attention_backward_reference),
    _residual_normed_attention_forward_kernel,
    _residual_normed_attention_backward_kernel,
)


# ----- the feed-forward branch ---------------------------------------------------------


def residual_normed_feed_forward_forward_reference(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, activation: str, residual: bool,
    normed_skip: bool = False,
) -> Arrays:  # fmt: skip
    """NumPy twin; returns ``(y, normed, mean, rstd, hidden, acted)``."""
    rows, mean, rstd = kernels.layer_norm_forward(a.reshape(-1, a.shape[-1]), gamma, beta, eps)
    w1, b1, w2, b2 = weights
    out, hidden, acted = kernels.feed_forward_forward(rows, w1, b1, w2, b2, activation)
    out, normed = out.reshape(a.shape), rows.reshape(a.shape)
    return (normed if normed_skip else a) + out if residual else out, normed, mean, rstd, hidden, acted


def residual_normed_feed_forward_backward_reference(
    dy: np.ndarray,
    a: np.ndarray,
    gamma: np.ndarray,
    normed: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    w1: np.ndarray,
    w2: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    activation: str,
    residual: bool,
    normed_skip: bool = False,
) -> Arrays:
    """NumPy twin; returns ``(da, dgamma, dbeta, dw1, db1, dw2, db2)``."""
    d = a.shape[-1]
    dnormed, *dweights = kernels.feed_forward_backward(
        dy.reshape(-1, d), normed.reshape(-1, d), w1, w2, hidden, acted, activation, residuals_checked=True
    )
    if residual and normed_skip:
        dnormed = dy.reshape(-1, d) + dnormed
    da, dgamma, dbeta = kernels.layer_norm_backward(
        dnormed, a.reshape(-1, d), gamma, mean, rstd, residuals_checked=True
    )
    da = da.reshape(a.shape)
    return (dy + da if residual and not normed_skip else da, dgamma, dbeta, *dweights)


@njit(cache=True)
def _residual_normed_feed_forward_forward_kernel(
    a: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    activation: int,
    normed: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    y: np.ndarray,
    residual: bool,
    normed_skip: bool = False,
) -> None:
    rows = (mean.size, a.shape[-1])
    normed_rows = normed.reshape(rows)
    layer_norm_forward_kernel(a.reshape(rows), gamma, beta, eps, normed_rows, mean, rstd)
    feed_forward._feed_forward_forward_kernel(normed_rows, w1, b1, w2, b2, activation, hidden, acted, y.reshape(rows))
    if residual:
        add_into(normed if normed_skip else a, y)


@njit(cache=True)
def _residual_normed_feed_forward_backward_kernel(
    dy: np.ndarray,
    a: np.ndarray,
    gamma: np.ndarray,
    normed: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    w1: np.ndarray,
    w2: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    activation: int,
    dacted: np.ndarray,
    dnormed: np.ndarray,
    dw1: np.ndarray,
    db1: np.ndarray,
    dw2: np.ndarray,
    db2: np.ndarray,
    da: np.ndarray,
    dgamma: np.ndarray,
    dbeta: np.ndarray,
    residual: bool,
    normed_skip: bool = False,
) -> None:
    rows = (mean.size, a.shape[-1])
    dnormed_rows = dnormed.reshape(rows)
    feed_forward._feed_forward_backward_kernel(
        dy.reshape(rows),
        normed.reshape(rows),
        w1,
        w2,
        hidden,
        acted,
        activation,
        dacted,
        dnormed_rows,
        dw1,
        db1,
        dw2,
        db2,
    )
    if residual and normed_skip:  # the skip's cotangent first, as the tape accumulates it
        add_into(dy, dnormed)
    layer_norm_backward_kernel(dnormed_rows, a.reshape(rows), gamma, mean, rstd, da.reshape(rows), dgamma, dbeta)
    if residual and not normed_skip:
        add_into(dy, da)


RESIDUAL_NORMED_FEED_FORWARD_FORWARD, RESIDUAL_NORMED_FEED_FORWARD_BACKWARD = feed_forward_twins(
    "residual_normed_feed_forward",
    (residual_normed_feed_forward_forward_reference, residual_normed_feed_forward_backward_reference),
    _residual_normed_feed_forward_forward_kernel,
    _residual_normed_feed_forward_backward_kernel,
)


# ----- the public kernels ------------------------------------------------------------


def residual_normed_attention_forward(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, n_heads: int, causal: bool,
    residual: bool = True,
) -> Arrays:  # fmt: skip
    """y = a + A(LN(a)) (``residual`` False: A(LN(a))), A the self-attention sublayer of
    ``weights`` (wq, bq, wk, bk, wv, bv, wo, bo); returns ``(y, normed, mean, rstd, q, k, v,
    probs, heads)``."""
    a, gamma, beta, *checked = checked_attention_branch(a, gamma, beta, weights, n_heads, causal)
    forward = path(RESIDUAL_NORMED_ATTENTION_FORWARD, ATTENTION_PARTS[0], *attention_work(a))
    return forward(a, gamma, beta, float(eps), tuple(checked), n_heads, bool(causal), bool(residual))


def residual_normed_attention_backward(dy: np.ndarray, a: np.ndarray, *residuals: np.ndarray) -> Arrays:
    """The VJP of :func:`residual_normed_attention_forward` at ``dy``, from its input ``a`` and
    residuals (``gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads``: the
    forward's own, unchanged, then its flag ``residual``); returns ``(da, dgamma, dbeta, dwq,
    dbq, dwk, dbk, dwv, dbv, dwo, dbo)``."""
    dy = cotangent(dy, a.dtype, a.shape)
    backward = path(RESIDUAL_NORMED_ATTENTION_BACKWARD, ATTENTION_PARTS[1], *attention_work(a))
    return backward(dy, a, *residuals)


def residual_normed_feed_forward_forward(
    a: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float,
    weights: Arrays,
    activation: str,
    residual: bool = True,
    normed_skip: bool = False,
) -> Arrays:
    """y = a + F(LN(a)) (``residual`` False: F(LN(a)); ``normed_skip``: LN(a) + F(LN(a))), F
    the FFN of ``weights`` (w1, b1, w2, b2); returns ``(y, normed, mean, rstd, hidden, acted)``."""
    a, gamma, beta, *checked = checked_feed_forward_branch(a, gamma, beta, weights, activation)
    forward = path(RESIDUAL_NORMED_FEED_FORWARD_FORWARD, FEED_FORWARD_PARTS[0], a.size // a.shape[-1] * checked[0].size)
    return forward(a, gamma, beta, float(eps), tuple(checked), activation, bool(residual), bool(normed_skip))


def residual_normed_feed_forward_backward(dy: np.ndarray, a: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP of :func:`residual_normed_feed_forward_forward` at ``dy``, from its input ``a``
    and residuals (``gamma, normed, mean, rstd, w1, w2, hidden, acted, activation``: the
    forward's own, unchanged, then its flags ``residual`` and ``normed_skip``); returns ``(da, dgamma,
    dbeta, dw1, db1, dw2, db2)``."""
    dy = cotangent(dy, a.dtype, a.shape)
    work = a.size // a.shape[-1] * residuals[4].size
    return path(RESIDUAL_NORMED_FEED_FORWARD_BACKWARD, FEED_FORWARD_PARTS[1], work)(dy, a, *residuals)
