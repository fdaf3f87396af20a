"""The replay's fused steps of a sublayer between mixtures of stacked copies: hyper-connections'
width connection, normed sublayer and depth connections as one primitive.

``stacked_copies.py`` puts each in the place of the three steps it stands for, on copies
stacked (n, B, T, d): ``weighted_sum(a_m, xs, stacked=True)``, the normed sublayer
``residual_normed_S(h, gamma, beta, W..., residual=False)`` (itself the fusion of a norm and S,
the attention or the FFN) and ``mix_streams(a_r, b, s, xs, stacked=True, transpose=...)``. The
weights are shared, a_m (n,), a_r (n, m), b (m,) (static hyper-connections), or one set per
token, (B, T, n), (B, T, n, m), (B, T, m) (dynamic ones, mHC's H_pre, H_res, H_post); with
``transpose=True`` a_r's last two axes are swapped first, as ``mix_streams`` swaps them (mHC's
H_res, whose rows are the weights), and its cotangent swapped back. The kernels
(``kernels/mixed_normed.py``) call the three steps' loops in their order, so a fused step gives
their bits; its VJP is theirs, in the order a replay runs them, the copies' cotangent the depth
connections' term plus the width connection's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lnref.autograd import kernels
from lnref.autograd.checks import kernel_error
from lnref.autograd.primitive import defprimitive


def depth_weights(a_r: Any, transpose: bool) -> Any:
    """The depth connections' weights as the kernels take them, (..., n, m): ``a_r``, or its last
    two axes swapped into a new array, as ``mix_streams`` swaps them."""
    return np.ascontiguousarray(np.swapaxes(a_r, -1, -2)) if transpose else a_r


def _depth_cotangent(grads: Any, transpose: bool) -> tuple[Any, ...]:
    """The kernels' cotangents with a_r's (the third) swapped back where its axes were swapped
    (the kernels' own tuple where they were not)."""
    if not transpose:
        return grads
    dxs, da_m, da_r, *rest = grads
    return (dxs, da_m, depth_weights(da_r, transpose), *rest)


def _mixed_normed_attention_fwd(
    xs: np.ndarray,
    a_m: np.ndarray,
    a_r: np.ndarray,
    b: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    *weights: np.ndarray,
    eps: float = 1e-5,
    n_heads: int,
    causal: bool = False,
    transpose: bool = False,
) -> tuple[np.ndarray, Any]:
    """y = mix_streams(a_r, b, A(LN(h)), xs), h = sum_i a_m[i] xs[i]: a self-attention sublayer
    A (``weights``: wq, bq, wk, bk, wv, bv, wo, bo) with a LayerNorm (``gamma``, ``beta``) on
    its input, between the width connection (weights ``a_m`` (n,)) and the depth connections
    (``a_r`` (n, m), ``b`` (m,); with ``transpose=True``, ``a_r`` (m, n), its rows the weights)
    of the copies ``xs`` (n, B, T, d); y (m, B, T, d). The weights may instead be one set per
    token, ``a_m`` (B, T, n), ``a_r`` (B, T, n, m) and ``b`` (B, T, m).

    VJP, with s = A(LN(h)):
        da_r, db, ds, dxs_depth = ``mix_streams``' VJP at dy
        dh, dgamma, dbeta, dW = ``residual_normed_attention``'s VJP at ds
        da_m, dxs_width = ``weighted_sum``'s VJP at dh
        dxs = dxs_depth + dxs_width
    """
    if transpose:
        a_r = depth_weights(a_r, transpose)
    try:
        y, h, s, normed, mean, rstd, q, k, v, probs, heads = kernels.mixed_normed_attention_forward(
            xs, a_m, a_r, b, gamma, beta, eps, weights, n_heads, causal
        )
    except (TypeError, ValueError) as error:
        raise kernel_error("mixed_normed_attention", error, xs, a_m, a_r, b, gamma, beta, *weights) from None
    wq, _, wk, _, wv, _, wo, _ = weights
    return y, (transpose, (xs, a_m, a_r, b, h, s, gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads))


def _mixed_normed_attention_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    # (dxs, da_m, da_r, db, dgamma, dbeta, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo): the op's inputs in order.
    transpose, kept = residuals
    return _depth_cotangent(kernels.mixed_normed_attention_backward(dout, *kept), transpose)


mixed_normed_attention = defprimitive(
    "mixed_normed_attention", _mixed_normed_attention_fwd, _mixed_normed_attention_vjp
)


def _mixed_normed_feed_forward_fwd(
    xs: np.ndarray,
    a_m: np.ndarray,
    a_r: np.ndarray,
    b: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    *,
    eps: float = 1e-5,
    activation: str = "relu",
    transpose: bool = False,
) -> tuple[np.ndarray, Any]:
    """y = mix_streams(a_r, b, F(LN(h)), xs), h = sum_i a_m[i] xs[i]: the FFN F (``w1``, ``b1``,
    ``w2``, ``b2``) with a LayerNorm on its input, between the copies' width and depth
    connections, as :func:`mixed_normed_attention`; the fusion of ``weighted_sum``,
    ``residual_normed_feed_forward`` (residual False) and ``mix_streams``, with their VJPs in
    the same order.
    """
    weights = (w1, b1, w2, b2)
    if transpose:
        a_r = depth_weights(a_r, transpose)
    try:
        y, h, s, normed, mean, rstd, hidden, acted = kernels.mixed_normed_feed_forward_forward(
            xs, a_m, a_r, b, gamma, beta, eps, weights, activation
        )
    except (TypeError, ValueError) as error:
        raise kernel_error("mixed_normed_feed_forward", error, xs, a_m, a_r, b, gamma, beta, *weights) from None
    return y, (transpose, (xs, a_m, a_r, b, h, s, gamma, normed, mean, rstd, w1, w2, hidden, acted, activation))


def _mixed_normed_feed_forward_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    transpose, kept = residuals
    return _depth_cotangent(kernels.mixed_normed_feed_forward_backward(dout, *kept), transpose)


mixed_normed_feed_forward = defprimitive(
    "mixed_normed_feed_forward", _mixed_normed_feed_forward_fwd, _mixed_normed_feed_forward_vjp
)
