"""The fast path: a whole attention or feed-forward sublayer as one primitive.

Each is the same function as a composition of ``ops`` primitives (``nn.attention`` and
``nn.ffn`` spell the compositions out), run as one tape record with one hand-written VJP,
which saves the tape's work between the pieces. The model takes them only where its sublayer
is the plain composition or has the pieces one of them computes (``lnref/views.py``
chooses): the FFN with a LayerNorm on its hidden units (``normed_feed_forward``) or a scaled
hidden layer (``scaled_feed_forward``), self-attention with norms and scales around its core
(``heads_pieces_attention``) or with L2-normalized, scaled queries and keys
(``l2_heads_attention``); tests hold each to its composition. ``fused_branches.py`` holds
the replay's fused steps, a branch with its norm, built on these.
Both directions run in ``kernels``: one compiled call each way for small sublayers,
NumPy/BLAS products around the attention kernels otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lnref.autograd import kernels
from lnref.autograd.checks import kernel_error
from lnref.autograd.primitive import defprimitive

# The activations the fused FFN computes (the model's names: "gelu" the exact erf form,
# "gelu_tanh" the tanh approximation); any other takes the composition.
FFN_ACTIVATIONS = kernels.FFN_ACTIVATIONS


def _attention_sublayer_fwd(
    x: np.ndarray,
    memory: np.ndarray | None,
    wq: np.ndarray,
    bq: np.ndarray,
    wk: np.ndarray,
    bk: np.ndarray,
    wv: np.ndarray,
    bv: np.ndarray,
    wo: np.ndarray,
    bo: np.ndarray,
    *,
    n_heads: int,
    causal: bool = False,
) -> tuple[np.ndarray, Any]:
    """A(x) = MHA(x Wq + bq, s Wk + bk, s Wv + bv) Wo + bo,   s = x, or ``memory`` if given,

    with MHA the attention core ``ops.multi_head_attention``. x is (B, T, d), the memory
    (B, S, d), every W (d, d), every b (d,). VJP, with H the merged heads:
        dWo = H^T dA,   dbo = sum over rows of dA,   dH = dA Wo^T
        dQ, dK, dV = the attention core's backward at dH
        dWq = x^T dQ, dWk = s^T dK, dWv = s^T dV, db = row sums of dQ, dK, dV
        dx  = dQ Wq^T + dK Wk^T + dV Wv^T               (self-attention)
        dx  = dQ Wq^T,  dmemory = dK Wk^T + dV Wv^T     (cross-attention)
    """
    try:
        out, q, k, v, probs, heads = kernels.attention_sublayer_forward(
            x, memory, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"attention_sublayer: {error}") from None
    return out, (x, memory, wq, wk, wv, wo, q, k, v, probs, heads)


def _attention_sublayer_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    # (dx, dmemory, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo): the op's inputs in order.
    return tuple(kernels.attention_sublayer_backward(dout, *residuals, residuals_checked=True))


attention_sublayer = defprimitive("attention_sublayer", _attention_sublayer_fwd, _attention_sublayer_vjp)


def _feed_forward_fwd(
    x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, *, activation: str = "relu"
) -> tuple[np.ndarray, Any]:
    """F(x) = act(x W1 + b1) W2 + b2, act ReLU, the exact GELU x Phi(x) (``"gelu"``) or its
    tanh approximation (``"gelu_tanh"``).

    VJP, with h = x W1 + b1 and a = act(h):
        dW2 = a^T dF,   db2 = sum over rows of dF,   da = dF W2^T
        dh  = act'(h) * da        (ReLU: da where a > 0; exact GELU: Phi(h) + h phi(h))
        dW1 = x^T dh,   db1 = sum over rows of dh,   dx = dh W1^T
    """
    if activation not in FFN_ACTIVATIONS:
        raise ValueError(f"feed_forward: activation must be one of {', '.join(FFN_ACTIVATIONS)}, got {activation!r}")
    if np.ndim(x) < 1 or np.ndim(w1) != 2 or np.ndim(w2) != 2:
        raise ValueError(f"feed_forward: x, W1, W2 of shapes {np.shape(x)}, {np.shape(w1)}, {np.shape(w2)} do not fit")
    rows = np.reshape(x, (-1, np.shape(x)[-1]))
    try:
        out, hidden, acted = kernels.feed_forward_forward(rows, w1, b1, w2, b2, activation)
    except (TypeError, ValueError) as error:
        raise kernel_error("feed_forward", error, x, w1, b1, w2, b2) from None
    return out.reshape(*np.shape(x)[:-1], w2.shape[1]), (np.shape(x), rows, w1, w2, hidden, acted, activation)


def _feed_forward_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    x_shape, rows, w1, w2, hidden, acted, activation = residuals
    dx, dw1, db1, dw2, db2 = kernels.feed_forward_backward(
        dout.reshape(-1, dout.shape[-1]), rows, w1, w2, hidden, acted, activation, residuals_checked=True
    )
    return dx.reshape(x_shape), dw1, db1, dw2, db2


feed_forward = defprimitive("feed_forward", _feed_forward_fwd, _feed_forward_vjp)


def _normed_feed_forward_fwd(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    *,
    activation: str = "relu",
    eps: float = 1e-5,
) -> tuple[np.ndarray, Any]:
    """F(x) = LN(act(x W1 + b1)) W2 + b2, the LayerNorm (gain ``gamma``, shift ``beta``) over
    the d_ff hidden features: ``nn.ffn`` with a ``hidden_norm`` of the layernorm kind.

    VJP, with h = x W1 + b1, a = act(h), n = LN(a):
        dW2 = n^T dF,   db2 = sum over rows of dF,   dn = dF W2^T
        da, dgamma, dbeta = LayerNorm's VJP at dn     (``ops.layer_norm``)
        dh  = act'(h) * da,   dW1 = x^T dh,   db1 = sum over rows of dh,   dx = dh W1^T
    """
    if activation not in FFN_ACTIVATIONS:
        raise ValueError(f"normed_feed_forward: activation must be one of {', '.join(FFN_ACTIVATIONS)}")
    if np.ndim(x) < 1 or np.ndim(w1) != 2 or np.ndim(w2) != 2:
        raise ValueError(f"normed_feed_forward: x, W1, W2 of shapes {np.shape(x)}, {np.shape(w1)}, {np.shape(w2)}")
    rows = np.reshape(x, (-1, np.shape(x)[-1]))
    try:
        out, *kept = kernels.normed_feed_forward_forward(rows, w1, b1, gamma, beta, w2, b2, activation, eps)
    except (TypeError, ValueError) as error:
        raise kernel_error("normed_feed_forward", error, x, w1, b1, gamma, beta, w2, b2) from None
    return out.reshape(*np.shape(x)[:-1], w2.shape[1]), (np.shape(x), rows, w1, gamma, w2, *kept, activation)


def _normed_feed_forward_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    x_shape, rows, *kept = residuals
    dx, *grads = kernels.normed_feed_forward_backward(dout.reshape(-1, dout.shape[-1]), rows, *kept)
    return (dx.reshape(x_shape), *grads)


normed_feed_forward = defprimitive("normed_feed_forward", _normed_feed_forward_fwd, _normed_feed_forward_vjp)


def _scaled_feed_forward_fwd(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    scale: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    *,
    scale_factor: float = 1.0,
    activation: str = "relu",
) -> tuple[np.ndarray, Any]:
    """F(x) = act((x W1 + b1) * s) W2 + b2 with s = c * ``scale`` (d_ff,), c =
    ``scale_factor`` a constant: ``nn.ffn`` with a ``hidden_scale``.

    VJP, with h = x W1 + b1, z = h * s, a = act(z):
        dW2 = a^T dF,   db2 = sum over rows of dF,   da = dF W2^T,   dz = act'(z) * da
        dscale = c * (sum over rows of dz * h),   dh = dz * s
        dW1 = x^T dh,   db1 = sum over rows of dh,   dx = dh W1^T
    """
    if activation not in FFN_ACTIVATIONS:
        raise ValueError(f"scaled_feed_forward: activation must be one of {', '.join(FFN_ACTIVATIONS)}")
    if np.ndim(x) < 1 or np.ndim(w1) != 2 or np.ndim(w2) != 2:
        raise ValueError(f"scaled_feed_forward: x, W1, W2 of shapes {np.shape(x)}, {np.shape(w1)}, {np.shape(w2)}")
    rows = np.reshape(x, (-1, np.shape(x)[-1]))
    try:
        out, *kept = kernels.scaled_feed_forward_forward(rows, w1, b1, scale, scale_factor, w2, b2, activation)
    except (TypeError, ValueError) as error:
        raise kernel_error("scaled_feed_forward", error, x, w1, b1, scale, w2, b2) from None
    residuals = (np.shape(x), rows, w1, scale, rows.dtype.type(scale_factor), w2, *kept, activation)
    return out.reshape(*np.shape(x)[:-1], w2.shape[1]), residuals


def _scaled_feed_forward_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    x_shape, *kept = residuals
    dx, dw1, db1, dscale, dw2, db2 = kernels.scaled_feed_forward_backward(dout.reshape(-1, dout.shape[-1]), *kept)
    return dx.reshape(x_shape), dw1, db1, dscale, dw2, db2


scaled_feed_forward = defprimitive("scaled_feed_forward", _scaled_feed_forward_fwd, _scaled_feed_forward_vjp)


def _heads_pieces_attention_fwd(
    x: np.ndarray,
    wq: np.ndarray,
    bq: np.ndarray,
    wk: np.ndarray,
    bk: np.ndarray,
    wv: np.ndarray,
    bv: np.ndarray,
    wo: np.ndarray,
    bo: np.ndarray,
    q_gamma: np.ndarray | None,
    q_beta: np.ndarray | None,
    k_gamma: np.ndarray | None,
    k_beta: np.ndarray | None,
    v_gamma: np.ndarray | None,
    v_beta: np.ndarray | None,
    scale: np.ndarray | None,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    *,
    n_heads: int,
    causal: bool = False,
    eps: float = 1e-5,
) -> tuple[np.ndarray, Any]:
    """Self-attention with pieces around its core: ``nn.attention`` with a ``q_norm``,
    ``k_norm``, ``v_norm`` of the layernorm kind on each head's Dh features (``q_gamma``,
    ``q_beta``, ...), a ``head_scale`` (``scale``, one per head) and a ``heads_norm`` of the
    layernorm kind over all d features (``gamma``, ``beta``), each None where absent:

        A(x) = LN(MHA(N_q(x Wq + bq), N_k(x Wk + bk), N_v(x Wv + bv)) * c) Wo + bo

    VJP, with H the merged heads, S = H * c, N = LN(S) and P_q = x Wq + bq (P_k, P_v alike):
        dWo = N^T dA,  dbo = sum over rows of dA,  dN = dA Wo^T
        dS, dgamma, dbeta = LayerNorm's VJP at dN
        dc_h = sum of dS * H over head h's features,  dH = dS * c
        dQ, dK, dV = the attention core's backward at dH (Q = N_q(P_q), K, V alike)
        dP_q, dq_gamma, dq_beta = the head norm's VJP at dQ (LayerNorm's, per head; dK, dV alike)
        dWq = x^T dP_q, dbq = row sums of dP_q, ...,  dx = dP_q Wq^T + dP_k Wk^T + dP_v Wv^T
    """
    x = np.ascontiguousarray(x)
    weights, biases, pieces = stacked_weights_and_pieces(
        "heads_pieces_attention",
        x,
        (wq, bq, wk, bk, wv, bv, wo, bo),
        given := (q_gamma, q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, gamma, beta),
    )
    q_g, q_b, k_g, k_b, v_g, v_b, c, g, b = pieces
    try:
        out, *kept = kernels.heads_pieces_attention_forward(
            x, weights, biases, q_g, q_b, k_g, k_b, v_g, v_b, c, g, b, n_heads, causal, eps
        )
    except (TypeError, ValueError) as error:
        raise kernel_error("heads_pieces_attention", error, x, weights, *pieces) from None
    return out, (x, weights, q_g, k_g, v_g, c, g, *kept, [a is not None for a in given])


def stacked_weights_and_pieces(
    op: str, x: np.ndarray, weights: tuple[Any, ...], pieces: tuple[Any, ...]
) -> tuple[Any, ...]:
    """(Wq, Wk, Wv, Wo as one (4, d, d) block, the biases as one (4, d), the pieces with an
    empty array for each absent one): the arguments of the kernels of the attention with pieces.
    Weights of two dtypes are refused here: stacking them would cast them to one."""
    wq, bq, wk, bk, wv, bv, wo, bo = weights
    dtype = np.asarray(wq).dtype
    for w in weights[1:]:
        if np.asarray(w).dtype != dtype:
            raise ValueError(f"{op}: all kernel inputs must share one dtype, got {dtype} and {np.asarray(w).dtype}")
    try:  # np.array copies the four into one block as np.stack does, in one call
        stacked, biases = np.array((wq, wk, wv, wo)), np.array((bq, bk, bv, bo))
    except ValueError:  # ragged: the kernel's check names the shapes
        stacked, biases = np.asarray(wq), np.asarray(bq)
    empty = np.empty(0, x.dtype)
    return stacked, biases, tuple([empty if a is None else a for a in pieces])


def heads_pieces_cotangents(dw: np.ndarray, db: np.ndarray, dpieces: Any, given: Any) -> tuple[Any, ...]:
    """The stacked weights' gradients as the attention's arguments take them, then the pieces'
    (None for an absent piece)."""
    pieces = [grad if present else None for grad, present in zip(dpieces, given)]
    return (dw[0], db[0], dw[1], db[1], dw[2], db[2], dw[3], db[3], *pieces)


def _heads_pieces_attention_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    *kept, given = residuals
    dx, dw, db, *dpieces = kernels.heads_pieces_attention_backward(dout, *kept)
    return (dx, *heads_pieces_cotangents(dw, db, dpieces, given))


heads_pieces_attention = defprimitive(
    "heads_pieces_attention", _heads_pieces_attention_fwd, _heads_pieces_attention_vjp
)


def _l2_heads_attention_fwd(
    x: np.ndarray,
    wq: np.ndarray,
    bq: np.ndarray,
    wk: np.ndarray,
    bk: np.ndarray,
    wv: np.ndarray,
    bv: np.ndarray,
    wo: np.ndarray,
    bo: np.ndarray,
    q_gain: np.ndarray,
    k_gain: np.ndarray,
    *,
    q_factor: float = 1.0,
    k_factor: float = 1.0,
    n_heads: int,
    causal: bool = False,
) -> tuple[np.ndarray, Any]:
    """Self-attention whose queries and keys are L2-normalized per head and scaled:
    ``nn.attention`` with a ``q_norm`` and a ``k_norm`` that are ``pieces.HeadL2Norm``s, of
    gains g_q = c_q ``q_gain`` and g_k = c_k ``k_gain`` (d,), each cut into heads, the
    constants c static:

        A(x) = MHA(N_q(x Wq + bq), N_k(x Wk + bk), x Wv + bv) Wo + bo,   N(p)_h = p_h / ||p_h|| * g_h

    VJP, with H the merged heads, P = x Wq + bq, u_h = P_h / ||P_h|| (the keys' alike):
        dWo = H^T dA,  dbo = sum over rows of dA,  dH = dA Wo^T
        dQ, dK, dV = the attention core's backward at dH
        dq_gain = c_q * (sum over rows of dQ * u),   dU = dQ * g_q
        dP_h = (dU_h - u_h <u_h, dU_h>) / ||P_h||
        dWq = x^T dP, dbq = row sums of dP (k, v alike),  dx = dP Wq^T + dP_k Wk^T + dV Wv^T
    """
    x = np.ascontiguousarray(x)
    try:
        out, *kept = kernels.l2_heads_attention_forward(
            x, wq, bq, wk, bk, wv, bv, wo, bo, q_gain, k_gain, q_factor, k_factor, n_heads, causal
        )
    except (TypeError, ValueError) as error:
        raise kernel_error("l2_heads_attention", error, x, wq, wk, wv, wo, q_gain, k_gain) from None
    factors = (x.dtype.type(q_factor), x.dtype.type(k_factor))
    return out, (x, wq, wk, wv, wo, q_gain, k_gain, *factors, *kept)


def _l2_heads_attention_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    dx, dw, db, dgains = kernels.l2_heads_attention_backward(dout, *residuals)
    return (dx, dw[0], db[0], dw[1], db[1], dw[2], db[2], dw[3], db[3], dgains[0], dgains[1])


l2_heads_attention = defprimitive("l2_heads_attention", _l2_heads_attention_fwd, _l2_heads_attention_vjp)
