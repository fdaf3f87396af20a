"""The replay's fused steps of two streams stacked: SiameseNorm's sublayer with its streams'
norms and adds as one primitive, and the readout's sum of the streams' norms as another.

``two_streams.py`` puts each in the place of the steps it stands for, on the streams stacked,
(2, B, T, d) = [x, y]: the Post-Norm stream x before its norm and the Pre-Norm stream y. A
sublayer's steps are the norm of x (``layer_norm_of_sum``, whose sum the step before makes),
``add_layer_norm(xn, y, gamma_y, beta_y)``, the normed sublayer ``residual_normed_S(u, gamma,
beta, W..., residual=False)``, ``add(y, z)`` and the next norm's sum xn + z / c; the readout's
are the two norms. The kernels (``kernels/two_stream_normed.py``) call the steps' loops in their
order, so a fused step gives their bits; its VJP is theirs, in the order a replay runs them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lnref.autograd import kernels
from lnref.autograd.checks import check_eps, is_number, kernel_error
from lnref.autograd.primitive import defprimitive


def _check_scalars(op: str, eps: float, divisor: Any, state: Any) -> None:
    """Refuse an eps that is not finite and positive, and a divisor that is not a number."""
    if not 0 < eps < math.inf:  # (False for NaN too)
        check_eps(op, eps, state)
    if not is_number(divisor):
        raise ValueError(f"{op}: divisor must be a number, got {divisor!r}")


def _two_stream_normed_attention_fwd(
    state: np.ndarray,
    gamma_x: np.ndarray,
    beta_x: np.ndarray,
    gamma_y: np.ndarray,
    beta_y: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    wq: np.ndarray,
    bq: np.ndarray,
    wk: np.ndarray,
    bk: np.ndarray,
    wv: np.ndarray,
    bv: np.ndarray,
    wo: np.ndarray,
    bo: np.ndarray,
    *,
    divisor: float,
    eps: float = 1e-5,
    n_heads: int,
    causal: bool = False,
) -> tuple[np.ndarray, Any]:
    """out = [xn + z / divisor, y + z]: a self-attention sublayer A (wq, bq, wk, bk, wv, bv, wo,
    bo) with a LayerNorm (``gamma``, ``beta``) on its input, between two streams stacked,
    ``state`` (2, B, T, d) = [x, y], with xn = LN_x(x) and z = A(LN(xn + LN_y(y))); LN_x and LN_y
    the streams' norms (``gamma_x``, ``beta_x``, ``gamma_y``, ``beta_y``). A ``state`` of one
    stream (B, T, d) is the x both streams start from (y = x).

    VJP, at dout = [g_x, g_y], with u = xn + LN_y(y):
        du, dgamma, dbeta, dW = ``residual_normed_attention``'s VJP at g_x / divisor + g_y
        dy, dgamma_y, dbeta_y = ``layer_norm``'s VJP at du (on y)
        dx, dgamma_x, dbeta_x = ``layer_norm``'s VJP at g_x + du (on x)
        dstate = [dx, g_y + dy]      (one stream: (g_y + dy) + dx)
    """
    weights = (wq, bq, wk, bk, wv, bv, wo, bo)
    _check_scalars("two_stream_normed_attention", eps, divisor, state)
    try:
        out, *kept = kernels.two_stream_normed_attention_forward(
            state, divisor, gamma_x, beta_x, gamma_y, beta_y, gamma, beta, eps, weights, n_heads, causal
        )
    except (TypeError, ValueError) as error:
        raise kernel_error("two_stream_normed_attention", error, state, gamma_x, gamma_y, gamma, *weights) from None
    stats, u, normed, mean, rstd, q, k, v, probs, heads = kept
    streams = (state, divisor, gamma_x, gamma_y, stats, u)
    return out, (*streams, gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads)


def _two_stream_normed_attention_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    # (dstate, dgamma_x, dbeta_x, dgamma_y, dbeta_y, dgamma, dbeta, dwq, ..., dbo): the op's inputs in order.
    return tuple(kernels.two_stream_normed_attention_backward(dout, *residuals))


two_stream_normed_attention = defprimitive(
    "two_stream_normed_attention", _two_stream_normed_attention_fwd, _two_stream_normed_attention_vjp
)


def _two_stream_normed_feed_forward_fwd(
    state: np.ndarray,
    gamma_x: np.ndarray,
    beta_x: np.ndarray,
    gamma_y: np.ndarray,
    beta_y: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    *,
    divisor: float,
    eps: float = 1e-5,
    activation: str = "relu",
) -> tuple[np.ndarray, Any]:
    """out = [xn + z / divisor, y + z] around the FFN F (``w1``, ``b1``, ``w2``, ``b2``) with a
    LayerNorm on its input, as :func:`two_stream_normed_attention`: the fusion of the norm of x,
    ``add_layer_norm``, ``residual_normed_feed_forward`` (residual False), ``add`` and the next
    norm's sum, with their VJPs in the same order.
    """
    weights = (w1, b1, w2, b2)
    _check_scalars("two_stream_normed_feed_forward", eps, divisor, state)
    try:
        out, *kept = kernels.two_stream_normed_feed_forward_forward(
            state, divisor, gamma_x, beta_x, gamma_y, beta_y, gamma, beta, eps, weights, activation
        )
    except (TypeError, ValueError) as error:
        raise kernel_error("two_stream_normed_feed_forward", error, state, gamma_x, gamma_y, gamma, *weights) from None
    stats, u, normed, mean, rstd, hidden, acted = kept
    streams = (state, divisor, gamma_x, gamma_y, stats, u)
    return out, (*streams, gamma, normed, mean, rstd, w1, w2, hidden, acted, activation)


def _two_stream_normed_feed_forward_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    return tuple(kernels.two_stream_normed_feed_forward_backward(dout, *residuals))


two_stream_normed_feed_forward = defprimitive(
    "two_stream_normed_feed_forward", _two_stream_normed_feed_forward_fwd, _two_stream_normed_feed_forward_vjp
)


def _two_stream_merge_fwd(
    state: np.ndarray, gamma_x: np.ndarray, beta_x: np.ndarray, gamma_y: np.ndarray, beta_y: np.ndarray, *,
    eps: float = 1e-5,
) -> tuple[np.ndarray, Any]:  # fmt: skip
    """u = LN_x(x) + LN_y(y) of two streams stacked, ``state`` (2, B, T, d) = [x, y]
    (SiameseNorm's readout before its last norm): the fusion of the norm of x (whose sum the
    step before makes) and ``add_layer_norm``, with their kernels and their sum.

    VJP:  dx, dgamma_x, dbeta_x = ``layer_norm``'s VJP at du (on x),
          dy, dgamma_y, dbeta_y = ``layer_norm``'s VJP at du (on y),   dstate = [dx, dy]
    """
    if not 0 < eps < math.inf:  # (False for NaN too)
        check_eps("two_stream_merge", eps, state)
    if type(state) is not np.ndarray or state.ndim < 2 or state.shape[0] != 2:
        raise ValueError(f"two_stream_merge: state must be two streams stacked, got shape {np.shape(state)}")
    rows = state.reshape(2, -1, state.shape[-1])
    try:
        normed_x, mean_x, rstd_x = kernels.layer_norm_forward(rows[0], gamma_x, beta_x, eps)
        normed_y, mean_y, rstd_y = kernels.layer_norm_forward(rows[1], gamma_y, beta_y, eps)
    except (TypeError, ValueError) as error:
        raise kernel_error("two_stream_merge", error, state, gamma_x, beta_x, gamma_y, beta_y) from None
    u = (normed_x + normed_y).reshape(state.shape[1:])
    return u, (rows, gamma_x, gamma_y, mean_x, rstd_x, mean_y, rstd_y)


def _two_stream_merge_vjp(du: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    rows, gamma_x, gamma_y, mean_x, rstd_x, mean_y, rstd_y = residuals
    du_rows = du.reshape(rows.shape[1:])
    dx, dgamma_x, dbeta_x = kernels.layer_norm_backward(
        du_rows, rows[0], gamma_x, mean_x, rstd_x, residuals_checked=True
    )
    dy, dgamma_y, dbeta_y = kernels.layer_norm_backward(
        du_rows, rows[1], gamma_y, mean_y, rstd_y, residuals_checked=True
    )
    return np.stack((dx, dy)).reshape((2, *du.shape)), dgamma_x, dbeta_x, dgamma_y, dbeta_y


two_stream_merge = defprimitive("two_stream_merge", _two_stream_merge_fwd, _two_stream_merge_vjp)
