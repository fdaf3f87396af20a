"""A LayerNorm of a residual sum whose skip is scaled, y = LN(w * a + S(a)), as one kernel each way.

Post-LN with a weighted skip (w per feature, or one number for every feature) is four
primitives: the skip's product ``mul``, the sublayer S (the attention sublayer or the FFN), the
residual add and the norm. A replayed pass fuses them (``autograd/fusion.py``); here, as in
``normed_sum.py`` (the same branch with w = 1), one compiled call runs the forward and one the
backward, calling the composition's own loops in the composition's order, so the fused branch
and the four primitives agree to the bit; past the sublayer's loop limit, or while another
implementation stands in the norm's or the sublayer's place, the NumPy twin runs the
composition's public kernels in one call.

Arguments: ``a`` (B, T, d), the skip's scale ``w`` (d,) (a number as d copies of it), the
norm's ``gamma`` and ``beta`` (d,) and ``eps``, then the sublayer's weights (self-attention
only). The residuals are ``normed_sum.py``'s: the sublayer's own, the sum ``total`` and the
norm's ``mean`` and ``rstd``.

    forward:   total = w * a + S(a),   y = LN(total)
    backward:  dtotal, dgamma, dbeta = LN's VJP at dy,   da_s, dW = the sublayer's VJP at dtotal
               da = w * dtotal + da_s

The backward hands back ``dtotal`` too: w's cotangent, the sum over the rows of dtotal * a, is
the caller's to take with NumPy's sum, as the product's VJP takes it (its order of additions
is NumPy's, not a loop's).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

import lnref.autograd.kernels as kernels
from lnref.autograd.kernels import attention_sublayer, feed_forward, linear
from lnref.autograd.kernels.branches import (
    ATTENTION_PARTS,
    FEED_FORWARD_PARTS,
    attention_work,
    checked_attention_branch,
    checked_feed_forward_branch,
    path,
)
from lnref.autograd.kernels.checks import check_fit, cotangent, float_arrays
from lnref.autograd.kernels.normed_sum import norm_backward, normed
from lnref.autograd.kernels.norms import layer_norm_backward_kernel, layer_norm_forward_kernel
from lnref.autograd.kernels.seam import Twin, njit

Arrays = tuple[np.ndarray, ...]


@njit(cache=True)
def scaled_add_into(a: np.ndarray, w: np.ndarray, y: np.ndarray) -> None:
    """y <- w * a + y, element by element, w over a's last axis (the scaled skip's product,
    then the residual add)."""
    d = w.size
    a_flat, y_flat = a.ravel(), y.ravel()
    for row in range(y_flat.size // d):
        for j in range(row * d, row * d + d):
            y_flat[j] = a_flat[j] * w[j - row * d] + y_flat[j]


# ----- the attention branch ------------------------------------------------------------


def normed_scaled_sum_attention_forward_reference(
    a: np.ndarray, w: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, n_heads: int,
    causal: bool,
) -> Arrays:  # fmt: skip
    """NumPy twin: the kernels in turn; returns ``(y, total, mean, rstd, q, k, v, probs, heads)``."""
    wq, bq, wk, bk, wv, bv, wo, bo = weights
    out, *kept = kernels.attention_sublayer_forward(a, None, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal)
    total = a * w + out
    y, mean, rstd = normed(total, gamma, beta, eps)
    return (y, total, mean, rstd, *kept)


def normed_scaled_sum_attention_backward_reference(
    dy: np.ndarray, a: np.ndarray, w: np.ndarray, gamma: np.ndarray, total: np.ndarray, mean: np.ndarray,
    rstd: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, wo: np.ndarray, q: np.ndarray, k: np.ndarray,
    v: np.ndarray, probs: np.ndarray, heads: np.ndarray,
) -> Arrays:  # fmt: skip
    """NumPy twin; returns ``(da, dtotal, dgamma, dbeta, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo)``."""
    dtotal, dgamma, dbeta = norm_backward(dy, total, gamma, mean, rstd)
    da, _, *dweights = kernels.attention_sublayer_backward(
        dtotal, a, None, wq, wk, wv, wo, q, k, v, probs, heads, residuals_checked=True
    )
    return (dtotal * w + cast(np.ndarray, da), dtotal, dgamma, dbeta, *cast(Arrays, dweights))


@njit(cache=True)
def _normed_scaled_sum_attention_forward_kernel(
    a: np.ndarray, w: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, wq: np.ndarray, bq: np.ndarray,
    wk: np.ndarray, bk: np.ndarray, wv: np.ndarray, bv: np.ndarray, wo: np.ndarray, bo: np.ndarray, causal: bool,
    total: np.ndarray, mean: np.ndarray, rstd: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
    probs: np.ndarray, heads: np.ndarray, y: np.ndarray,
) -> None:  # fmt: skip
    rows = (mean.size, a.shape[-1])
    attention_sublayer._attention_sublayer_forward_kernel(
        a, a, wq, bq, wk, bk, wv, bv, wo, bo, causal, q, k, v, probs, heads, total
    )
    scaled_add_into(a, w, total)
    layer_norm_forward_kernel(total.reshape(rows), gamma, beta, eps, y.reshape(rows), mean, rstd)


@njit(cache=True)
def _normed_scaled_sum_attention_backward_kernel(
    dy: np.ndarray, a: np.ndarray, w: np.ndarray, gamma: np.ndarray, total: np.ndarray, mean: np.ndarray,
    rstd: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, wo: np.ndarray, q: np.ndarray, k: np.ndarray,
    v: np.ndarray, probs: np.ndarray, heads: np.ndarray, dtotal: np.ndarray, dw: np.ndarray, db: np.ndarray,
    da: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray,
) -> None:  # fmt: skip
    rows = (mean.size, a.shape[-1])
    layer_norm_backward_kernel(
        dy.reshape(rows), total.reshape(rows), gamma, mean, rstd, dtotal.reshape(rows), dgamma, dbeta
    )
    attention_sublayer._attention_sublayer_backward_kernel(
        dtotal, a, a, wq, wk, wv, wo, q, k, v, probs, heads, False, da, da, dw, db
    )
    scaled_add_into(dtotal, w, da)


def _normed_scaled_sum_attention_forward_loop(
    a: np.ndarray, w: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, n_heads: int,
    causal: bool,
) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_normed_scaled_sum_attention_forward_kernel``)."""
    (batch, t_len, _), dtype = a.shape, a.dtype
    total, q, k, v, heads, y = (np.empty(a.shape, dtype) for _ in range(6))
    mean, rstd = np.empty(batch * t_len, dtype), np.empty(batch * t_len, dtype)
    probs = np.zeros((batch, n_heads, t_len, t_len), dtype)
    wq, bq, wk, bk, wv, bv, wo, bo = weights
    _normed_scaled_sum_attention_forward_kernel(
        a, w, gamma, beta, eps, wq, bq, wk, bk, wv, bv, wo, bo, causal, total, mean, rstd, q, k, v, probs, heads, y
    )
    return y, total, mean, rstd, q, k, v, probs, heads


def _normed_scaled_sum_attention_backward_loop(
    dy: np.ndarray, a: np.ndarray, w: np.ndarray, gamma: np.ndarray, total: np.ndarray, mean: np.ndarray,
    rstd: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, wo: np.ndarray, q: np.ndarray, k: np.ndarray,
    v: np.ndarray, probs: np.ndarray, heads: np.ndarray,
) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_normed_scaled_sum_attention_backward_kernel``)."""
    dtype, d = a.dtype, a.shape[-1]
    dtotal, da = np.empty(a.shape, dtype), np.empty(a.shape, dtype)
    dw, db = np.empty((4, d, d), dtype), np.empty((4, d), dtype)
    dgamma, dbeta = np.zeros(d), np.zeros(d)  # float64 accumulators, as LayerNorm's loop keeps them
    _normed_scaled_sum_attention_backward_kernel(
        dy, a, w, gamma, total, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads, dtotal, dw, db, da, dgamma, dbeta
    )
    dgamma, dbeta = dgamma.astype(dtype, copy=False), dbeta.astype(dtype, copy=False)
    return (da, dtotal, dgamma, dbeta, dw[0], db[0], dw[1], db[1], dw[2], db[2], dw[3], db[3])


NORMED_SCALED_SUM_ATTENTION_FORWARD = Twin(
    "normed_scaled_sum_attention_forward",
    reference=normed_scaled_sum_attention_forward_reference,
    loop=_normed_scaled_sum_attention_forward_loop,
    loop_pays_up_to=attention_sublayer.LOOP_PAYS_UP_TO,
)
NORMED_SCALED_SUM_ATTENTION_BACKWARD = Twin(
    "normed_scaled_sum_attention_backward",
    reference=normed_scaled_sum_attention_backward_reference,
    loop=_normed_scaled_sum_attention_backward_loop,
    loop_pays_up_to=attention_sublayer.LOOP_PAYS_UP_TO,
)


# ----- the feed-forward branch ---------------------------------------------------------


def normed_scaled_sum_feed_forward_forward_reference(
    a: np.ndarray, w: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, activation: str
) -> Arrays:
    """NumPy twin; returns ``(y, total, mean, rstd, hidden, acted)``."""
    w1, b1, w2, b2 = weights
    out, hidden, acted = kernels.feed_forward_forward(a.reshape(-1, a.shape[-1]), w1, b1, w2, b2, activation)
    total = a * w + out.reshape(a.shape)
    y, mean, rstd = normed(total, gamma, beta, eps)
    return y, total, mean, rstd, hidden, acted


def normed_scaled_sum_feed_forward_backward_reference(
    dy: np.ndarray, a: np.ndarray, w: np.ndarray, gamma: np.ndarray, total: np.ndarray, mean: np.ndarray,
    rstd: np.ndarray, w1: np.ndarray, w2: np.ndarray, hidden: np.ndarray, acted: np.ndarray, activation: str,
) -> Arrays:  # fmt: skip
    """NumPy twin; returns ``(da, dtotal, dgamma, dbeta, dw1, db1, dw2, db2)``."""
    d = a.shape[-1]
    dtotal, dgamma, dbeta = norm_backward(dy, total, gamma, mean, rstd)
    da, *dweights = kernels.feed_forward_backward(
        dtotal.reshape(-1, d), a.reshape(-1, d), w1, w2, hidden, acted, activation, residuals_checked=True
    )
    return (dtotal * w + da.reshape(a.shape), dtotal, dgamma, dbeta, *dweights)


@njit(cache=True)
def _normed_scaled_sum_feed_forward_forward_kernel(
    a: np.ndarray, w: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, w1: np.ndarray, b1: np.ndarray,
    w2: np.ndarray, b2: np.ndarray, activation: int, total: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
    hidden: np.ndarray, acted: np.ndarray, y: np.ndarray,
) -> None:  # fmt: skip
    rows = (mean.size, a.shape[-1])
    feed_forward._feed_forward_forward_kernel(
        a.reshape(rows), w1, b1, w2, b2, activation, hidden, acted, total.reshape(rows)
    )
    scaled_add_into(a, w, total)
    layer_norm_forward_kernel(total.reshape(rows), gamma, beta, eps, y.reshape(rows), mean, rstd)


@njit(cache=True)
def _normed_scaled_sum_feed_forward_backward_kernel(
    dy: np.ndarray, a: np.ndarray, w: np.ndarray, gamma: np.ndarray, total: np.ndarray, mean: np.ndarray,
    rstd: np.ndarray, w1: np.ndarray, w2: np.ndarray, hidden: np.ndarray, acted: np.ndarray, activation: int,
    dacted: np.ndarray, dtotal: np.ndarray, dw1: np.ndarray, db1: np.ndarray, dw2: np.ndarray, db2: np.ndarray,
    da: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray,
) -> None:  # fmt: skip
    rows = (mean.size, a.shape[-1])
    layer_norm_backward_kernel(
        dy.reshape(rows), total.reshape(rows), gamma, mean, rstd, dtotal.reshape(rows), dgamma, dbeta
    )
    feed_forward._feed_forward_backward_kernel(
        dtotal.reshape(rows), a.reshape(rows), w1, w2, hidden, acted, activation, dacted, da.reshape(rows), dw1, db1,
        dw2, db2,
    )  # fmt: skip
    scaled_add_into(dtotal, w, da)


def _normed_scaled_sum_feed_forward_forward_loop(
    a: np.ndarray, w: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, activation: str
) -> Arrays:
    """Loop twin (allocates, then runs ``_normed_scaled_sum_feed_forward_forward_kernel``)."""
    w1, b1, w2, b2 = weights
    dtype, rows = a.dtype, a.size // a.shape[-1]
    total, y = np.empty(a.shape, dtype), np.empty(a.shape, dtype)
    mean, rstd = np.empty(rows, dtype), np.empty(rows, dtype)
    hidden = np.empty((rows, w1.shape[1]), dtype)
    acted = hidden if activation == "relu" else np.empty_like(hidden)  # ReLU in place, as the FFN's loop
    code = feed_forward.FFN_CODES[activation]
    _normed_scaled_sum_feed_forward_forward_kernel(
        a, w, gamma, beta, eps, w1, b1, w2, b2, code, total, mean, rstd, hidden, acted, y
    )
    return y, total, mean, rstd, hidden, acted


def _normed_scaled_sum_feed_forward_backward_loop(
    dy: np.ndarray, a: np.ndarray, w: np.ndarray, gamma: np.ndarray, total: np.ndarray, mean: np.ndarray,
    rstd: np.ndarray, w1: np.ndarray, w2: np.ndarray, hidden: np.ndarray, acted: np.ndarray, activation: str,
) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_normed_scaled_sum_feed_forward_backward_kernel``)."""
    dtype, d = a.dtype, a.shape[-1]
    dacted, dtotal, da = np.empty(acted.shape, dtype), np.empty(a.shape, dtype), np.empty(a.shape, dtype)
    dw1, db1 = np.empty(w1.shape, dtype), np.empty(w1.shape[1], dtype)
    dw2, db2 = np.empty(w2.shape, dtype), np.empty(w2.shape[1], dtype)
    dgamma, dbeta = np.zeros(d), np.zeros(d)  # float64 accumulators, as LayerNorm's loop keeps them
    code = feed_forward.FFN_CODES[activation]
    _normed_scaled_sum_feed_forward_backward_kernel(
        dy, a, w, gamma, total, mean, rstd, w1, w2, hidden, acted, code, dacted, dtotal, dw1, db1, dw2, db2, da,
        dgamma, dbeta,
    )  # fmt: skip
    dgamma, dbeta = dgamma.astype(dtype, copy=False), dbeta.astype(dtype, copy=False)
    return da, dtotal, dgamma, dbeta, dw1, db1, dw2, db2


NORMED_SCALED_SUM_FEED_FORWARD_FORWARD = Twin(
    "normed_scaled_sum_feed_forward_forward",
    reference=normed_scaled_sum_feed_forward_forward_reference,
    loop=_normed_scaled_sum_feed_forward_forward_loop,
    loop_pays_up_to=linear.LOOP_PAYS_UP_TO,
)
NORMED_SCALED_SUM_FEED_FORWARD_BACKWARD = Twin(
    "normed_scaled_sum_feed_forward_backward",
    reference=normed_scaled_sum_feed_forward_backward_reference,
    loop=_normed_scaled_sum_feed_forward_backward_loop,
    loop_pays_up_to=linear.LOOP_PAYS_UP_TO,
)


# ----- the public kernels --------------------------------------------------------------


def _checked_scale(a: np.ndarray, w: Any) -> np.ndarray:
    """``w`` as a float array of a's dtype and shape (d,), or an error."""
    (w,) = float_arrays(w, a)[:1]
    check_fit(w.shape == a.shape[-1:], "a", a, "w", w)
    return w


def normed_scaled_sum_attention_forward(
    a: np.ndarray, w: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, n_heads: int,
    causal: bool,
) -> Arrays:  # fmt: skip
    """y = LN(w * a + A(a)), A the self-attention sublayer of ``weights`` (wq, bq, wk, bk, wv,
    bv, wo, bo), w (d,); returns ``(y, total, mean, rstd, q, k, v, probs, heads)``."""
    a, gamma, beta, *checked = checked_attention_branch(a, gamma, beta, weights, n_heads, causal)
    forward = path(NORMED_SCALED_SUM_ATTENTION_FORWARD, ATTENTION_PARTS[0], *attention_work(a))
    return forward(a, _checked_scale(a, w), gamma, beta, float(eps), tuple(checked), n_heads, bool(causal))


def normed_scaled_sum_attention_backward(dy: np.ndarray, a: np.ndarray, *residuals: np.ndarray) -> Arrays:
    """The VJP of :func:`normed_scaled_sum_attention_forward` at ``dy``, from its input ``a``
    and residuals (``w, gamma, total, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads``: the
    forward's own, unchanged); returns ``(da, dtotal, dgamma, dbeta, dwq, dbq, dwk, dbk, dwv,
    dbv, dwo, dbo)``."""
    dy = cotangent(dy, a.dtype, a.shape)
    return path(NORMED_SCALED_SUM_ATTENTION_BACKWARD, ATTENTION_PARTS[1], *attention_work(a))(dy, a, *residuals)


def normed_scaled_sum_feed_forward_forward(
    a: np.ndarray, w: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, activation: str
) -> Arrays:
    """y = LN(w * a + F(a)), F the FFN of ``weights`` (w1, b1, w2, b2), w (d,); returns ``(y,
    total, mean, rstd, hidden, acted)``."""
    a, gamma, beta, *checked = checked_feed_forward_branch(a, gamma, beta, weights, activation)
    work = a.size // a.shape[-1] * checked[0].size
    forward = path(NORMED_SCALED_SUM_FEED_FORWARD_FORWARD, FEED_FORWARD_PARTS[0], work)
    return forward(a, _checked_scale(a, w), gamma, beta, float(eps), tuple(checked), activation)


def normed_scaled_sum_feed_forward_backward(dy: np.ndarray, a: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP of :func:`normed_scaled_sum_feed_forward_forward` at ``dy``, from its input
    ``a`` and residuals (``w, gamma, total, mean, rstd, w1, w2, hidden, acted, activation``:
    the forward's own, unchanged); returns ``(da, dtotal, dgamma, dbeta, dw1, db1, dw2,
    db2)``."""
    dy = cotangent(dy, a.dtype, a.shape)
    work = a.size // a.shape[-1] * residuals[5].size
    return path(NORMED_SCALED_SUM_FEED_FORWARD_BACKWARD, FEED_FORWARD_PARTS[1], work)(dy, a, *residuals)
