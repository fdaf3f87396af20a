"""The self-attention with norms and a scale around its core (``attention_heads_pieces.py``) as
a residual branch with a LayerNorm on its input, y = a + S(LN(a)), one kernel each way; with
``residual`` False, the branch alone, y = S(LN(a)).

``residual_normed.py`` fuses the plain sublayers, ``residual_normed_feed_forward_normed.py`` the
FFN with a norm on its hidden units. A replayed pass fuses the norm, S and the add
(``autograd/fusion.py``); one compiled call runs the forward and one the backward, calling
the composition's own loops in the composition's order (LayerNorm's row loops, S's
whole-sublayer kernel, then the add), so the fused branch and the three primitives agree to
the bit. Past S's loop limit, or while another implementation stands in one of the kernels'
place, the NumPy twin runs the composition's public kernels in one call.

Arguments: ``a`` (B, T, d), the input norm's ``gamma`` and ``beta`` (d,) and ``eps``, then S's
arguments as its own public kernel takes them. The residuals are the norm's output ``normed``
and its ``mean`` and ``rstd``, then S's own; the flag ``residual`` comes last.

    forward:   normed = LN(a),   y = a + S(normed)     (residual False: y = S(normed))
    backward:  dnormed, dW = S's VJP at dy,   da_ln, dgamma, dbeta = LN's VJP at dnormed
               da = dy + da_ln          (the add's cotangent first, as the tape accumulates it;
                                         residual False: da = da_ln)
"""

from __future__ import annotations

from typing import Any

import numpy as np

import lnref.autograd.kernels as kernels
from lnref.autograd.kernels import attention_heads_pieces, attention_sublayer, norms, seam
from lnref.autograd.kernels.branches import add_into, input_norm, input_norm_backward, path
from lnref.autograd.kernels.checks import check_fit, cotangent
from lnref.autograd.kernels.norms import layer_norm_backward_kernel, layer_norm_forward_kernel
from lnref.autograd.kernels.seam import Twin, njit

Arrays = tuple[np.ndarray, ...]


# ----- the self-attention with pieces around its core ----------------------------------
#
# Its fused branch may also normalize the attention's output before the add (``out_gamma``,
# ``out_beta``, empty where absent): y = a + LN_out(A(LN(a))), a norm after the branch
# (NormFormer's). The residuals then hold the branch's output ``branch`` and that norm's
# ``out_mean`` and ``out_rstd`` (empty where absent).


def residual_normed_heads_pieces_attention_forward_reference(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: np.ndarray, biases: np.ndarray,
    pieces: Arrays, out_norm: Arrays, n_heads: int, causal: bool, heads_eps: float, out_eps: float, residual: bool,
) -> Arrays:  # fmt: skip
    """NumPy twin: the kernels in turn; ``weights``, ``biases`` and ``pieces`` (q_gamma,
    q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, heads_gamma, heads_beta; empty where
    absent) as ``heads_pieces_attention_forward`` takes them, its norms' eps ``heads_eps``;
    ``out_norm`` (out_gamma, out_beta) with ``out_eps``; returns ``(y, normed, mean, rstd,
    branch, out_mean, out_rstd)`` and then all the attention's kernel returns after its output."""
    rows, mean, rstd = input_norm(a, gamma, beta, eps)
    normed = rows.reshape(a.shape)
    q_gamma, q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, heads_gamma, heads_beta = pieces
    out, *kept = kernels.heads_pieces_attention_forward(
        normed, weights, biases, q_gamma, q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, heads_gamma, heads_beta,
        n_heads, causal, heads_eps,
    )  # fmt: skip
    out_gamma, out_beta = out_norm
    branch = out_mean = out_rstd = np.empty(0, a.dtype)
    if out_gamma.size:
        branch = out
        out_rows, out_mean, out_rstd = input_norm(branch, out_gamma, out_beta, out_eps)
        out = out_rows.reshape(a.shape)
    return (a + out if residual else out), normed, mean, rstd, branch, out_mean, out_rstd, *kept


def residual_normed_heads_pieces_attention_backward_reference(
    dy: np.ndarray, a: np.ndarray, gamma: np.ndarray, normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
    out_gamma: np.ndarray, branch: np.ndarray, out_mean: np.ndarray, out_rstd: np.ndarray, *attention: Any,
) -> Arrays:  # fmt: skip
    """NumPy twin; ``attention`` are ``heads_pieces_attention_backward``'s residuals after its
    input, then the flag ``residual``; returns ``(da, dgamma, dbeta, dout_gamma, dout_beta,
    dweights, dbiases)`` and the pieces' gradients, in the pieces' order (empty where absent)."""
    *kept, residual = attention
    dbranch, dout_gamma, dout_beta = dy, np.empty(0, a.dtype), np.empty(0, a.dtype)
    if out_gamma.size:
        dbranch, dout_gamma, dout_beta = input_norm_backward(dy, dy, branch, out_gamma, out_mean, out_rstd, False)
    dnormed, *dattention = kernels.heads_pieces_attention_backward(dbranch, normed, *kept)
    da, dgamma, dbeta = input_norm_backward(dy, dnormed, a, gamma, mean, rstd, residual)
    return (da, dgamma, dbeta, dout_gamma, dout_beta, *dattention)


@njit(cache=True)
def _residual_normed_heads_pieces_attention_forward_kernel(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: np.ndarray, biases: np.ndarray,
    q_gamma: np.ndarray, q_beta: np.ndarray, k_gamma: np.ndarray, k_beta: np.ndarray,
    v_gamma: np.ndarray, v_beta: np.ndarray, scale: np.ndarray, heads_gamma: np.ndarray, heads_beta: np.ndarray,
    out_gamma: np.ndarray, out_beta: np.ndarray, causal: bool, heads_eps: float, out_eps: float, residual: bool,
    normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray, branch: np.ndarray, out_mean: np.ndarray,
    out_rstd: np.ndarray, y: np.ndarray, qkv: np.ndarray, qkv_normed: np.ndarray, head_stats: np.ndarray,
    probs: np.ndarray, heads: np.ndarray, shaped: np.ndarray, heads_normed: np.ndarray, heads_mean: np.ndarray,
    heads_rstd: np.ndarray,
) -> None:  # fmt: skip
    """The flags before the outputs, the attention's own (its residuals) last; the attention
    writes ``branch``, which is ``y`` itself where its output is not normed."""
    rows = (mean.size, a.shape[-1])
    layer_norm_forward_kernel(a.reshape(rows), gamma, beta, eps, normed.reshape(rows), mean, rstd)
    attention_heads_pieces._heads_pieces_attention_forward_kernel(
        normed, weights, biases, q_gamma, q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, heads_gamma, heads_beta,
        causal, heads_eps, qkv, qkv_normed, head_stats, probs, heads, shaped, heads_normed, heads_mean, heads_rstd,
        branch,
    )  # fmt: skip
    if out_gamma.size:
        layer_norm_forward_kernel(
            branch.reshape(rows), out_gamma, out_beta, out_eps, y.reshape(rows), out_mean, out_rstd
        )
    if residual:
        add_into(a, y)


@njit(cache=True)
def _residual_normed_heads_pieces_attention_backward_kernel(
    dy: np.ndarray, a: np.ndarray, gamma: np.ndarray, normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
    out_gamma: np.ndarray, branch: np.ndarray, out_mean: np.ndarray, out_rstd: np.ndarray, residual: bool,
    da: np.ndarray, dbranch: np.ndarray, dnormed: np.ndarray, dweights: np.ndarray, dbiases: np.ndarray,
    dgamma: np.ndarray, dbeta: np.ndarray, dout_gamma: np.ndarray, dout_beta: np.ndarray, dq_gamma: np.ndarray,
    dq_beta: np.ndarray, dk_gamma: np.ndarray, dk_beta: np.ndarray, dv_gamma: np.ndarray, dv_beta: np.ndarray,
    dscale: np.ndarray, dheads_gamma: np.ndarray, dheads_beta: np.ndarray, weights: np.ndarray,
    q_gamma: np.ndarray, k_gamma: np.ndarray, v_gamma: np.ndarray, scale: np.ndarray, heads_gamma: np.ndarray,
    qkv: np.ndarray, qkv_normed: np.ndarray, head_stats: np.ndarray, probs: np.ndarray, heads: np.ndarray,
    shaped: np.ndarray, heads_normed: np.ndarray, heads_mean: np.ndarray, heads_rstd: np.ndarray,
) -> None:  # fmt: skip
    """The inputs and the flag, then the gradients (``dbranch`` scratch where the output is
    normed, else ``dy`` itself), then the forward's residuals (the attention's own) last."""
    rows = (mean.size, a.shape[-1])
    dattended = dy
    if out_gamma.size:
        layer_norm_backward_kernel(
            dy.reshape(rows), branch.reshape(rows), out_gamma, out_mean, out_rstd, dbranch.reshape(rows), dout_gamma,
            dout_beta,
        )  # fmt: skip
        dattended = dbranch
    attention_heads_pieces._heads_pieces_attention_backward_kernel(
        dattended, normed, weights, q_gamma, k_gamma, v_gamma, scale, heads_gamma, qkv, qkv_normed, head_stats, probs,
        heads, shaped, heads_normed, heads_mean, heads_rstd, dnormed, dweights, dbiases, dq_gamma, dq_beta, dk_gamma,
        dk_beta, dv_gamma, dv_beta, dscale, dheads_gamma, dheads_beta,
    )  # fmt: skip
    layer_norm_backward_kernel(
        dnormed.reshape(rows), a.reshape(rows), gamma, mean, rstd, da.reshape(rows), dgamma, dbeta
    )
    if residual:
        add_into(dy, da)


def _residual_normed_heads_pieces_attention_forward_loop(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: np.ndarray, biases: np.ndarray,
    pieces: Arrays, out_norm: Arrays, n_heads: int, causal: bool, heads_eps: float, out_eps: float, residual: bool,
) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_residual_normed_heads_pieces_attention_forward_kernel``)."""
    q_gamma, q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, heads_gamma, heads_beta = pieces
    out_gamma, out_beta = out_norm
    dtype, n_rows, out_normed = a.dtype, a.shape[0] * a.shape[1], bool(out_gamma.size)
    normed, mean, rstd = np.empty(a.shape, dtype), np.empty(n_rows, dtype), np.empty(n_rows, dtype)
    *kept, y = attention_heads_pieces.heads_pieces_forward_arrays(
        a, n_heads, q_gamma, k_gamma, v_gamma, scale, heads_gamma
    )
    empty = np.empty(0, dtype)
    branch, out_mean, out_rstd = y, empty, empty
    if out_normed:
        branch, out_mean, out_rstd = np.empty(a.shape, dtype), np.empty(n_rows, dtype), np.empty(n_rows, dtype)
    _residual_normed_heads_pieces_attention_forward_kernel(
        a, gamma, beta, eps, weights, biases, q_gamma, q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, heads_gamma,
        heads_beta, out_gamma, out_beta, causal, heads_eps, out_eps, residual, normed, mean, rstd, branch, out_mean,
        out_rstd, y, *kept,
    )  # fmt: skip
    return y, normed, mean, rstd, branch if out_normed else empty, out_mean, out_rstd, *kept


def _residual_normed_heads_pieces_attention_backward_loop(
    dy: np.ndarray, a: np.ndarray, gamma: np.ndarray, normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
    out_gamma: np.ndarray, branch: np.ndarray, out_mean: np.ndarray, out_rstd: np.ndarray, *attention: Any,
) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_residual_normed_heads_pieces_attention_backward_kernel``)."""
    *kept, residual = attention
    weights, q_gamma, k_gamma, v_gamma, scale, heads_gamma = kept[:6]
    dtype, shape = a.dtype, a.shape
    dnormed, da = np.empty(shape, dtype), np.empty(shape, dtype)
    dbranch = np.empty(shape, dtype) if out_gamma.size else dy
    dweights, dbiases = np.empty(weights.shape, dtype), np.empty(weights.shape[:2], dtype)
    # float64 accumulators, as LayerNorm's loop keeps them: dgamma, dbeta, dout_gamma, dout_beta,
    # then the pieces' in their order (an absent piece's one shared empty)
    absent = np.zeros(0)
    grads = [np.zeros(gamma.size), np.zeros(gamma.size), absent, absent, absent, absent, absent, absent, absent,
             absent, absent, absent, absent]  # fmt: skip
    for i, piece in enumerate((out_gamma, q_gamma, k_gamma, v_gamma)):
        if piece.size:
            grads[2 + 2 * i], grads[3 + 2 * i] = np.zeros(piece.size), np.zeros(piece.size)
    if scale.size:
        grads[10] = np.zeros(scale.size)
    if heads_gamma.size:
        grads[11], grads[12] = np.zeros(heads_gamma.size), np.zeros(heads_gamma.size)
    _residual_normed_heads_pieces_attention_backward_kernel(
        dy, a, gamma, normed, mean, rstd, out_gamma, branch, out_mean, out_rstd, residual, da, dbranch, dnormed,
        dweights, dbiases, *grads, *kept,
    )  # fmt: skip
    if dtype != grads[0].dtype:
        grads = [g.astype(dtype) for g in grads]
    return (da, *grads[:4], dweights, dbiases, *grads[4:])


# The loops are the attention sublayer kernels' and LayerNorm's: the sublayer kernels' limits.
RESIDUAL_NORMED_HEADS_PIECES_ATTENTION_FORWARD = Twin(
    "residual_normed_heads_pieces_attention_forward",
    reference=residual_normed_heads_pieces_attention_forward_reference,
    loop=_residual_normed_heads_pieces_attention_forward_loop,
    loop_pays_up_to=attention_sublayer.LOOP_PAYS_UP_TO,
)
RESIDUAL_NORMED_HEADS_PIECES_ATTENTION_BACKWARD = Twin(
    "residual_normed_heads_pieces_attention_backward",
    reference=residual_normed_heads_pieces_attention_backward_reference,
    loop=_residual_normed_heads_pieces_attention_backward_loop,
    loop_pays_up_to=attention_sublayer.LOOP_PAYS_UP_TO,
)
HEADS_PIECES_ATTENTION_PARTS = (
    (norms.LAYER_NORM_FORWARD, seam.twin("heads_pieces_attention_forward")),
    (norms.LAYER_NORM_BACKWARD, seam.twin("heads_pieces_attention_backward")),
)


def residual_normed_heads_pieces_attention_forward(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: np.ndarray, biases: np.ndarray,
    pieces: Arrays, out_norm: Arrays, n_heads: int, causal: bool, heads_eps: float, out_eps: float,
    residual: bool = True,
) -> Arrays:  # fmt: skip
    """y = a + A(LN(a)), or y = a + LN_out(A(LN(a))) with an ``out_norm`` (out_gamma,
    out_beta; empty: absent) (``residual`` False: without the a +), A the self-attention with
    ``pieces`` of :func:`residual_normed_heads_pieces_attention_forward_reference`; returns
    ``(y, normed, mean, rstd, branch, out_mean, out_rstd)`` and then all
    ``heads_pieces_attention_forward`` returns after its output."""
    a, weights, biases, *checked, gamma, beta, out_gamma, out_beta = attention_heads_pieces.checked_heads_pieces(
        n_heads, a, weights, biases, *pieces, gamma, beta, *out_norm
    )
    d = a.shape[2:]
    if not (gamma.shape == beta.shape == d and out_gamma.shape == out_beta.shape and out_gamma.shape in ((0,), d)):
        check_fit(False, "a", a, "gamma", gamma, "beta", beta, "out_gamma", out_gamma, "out_beta", out_beta)
    work = attention_sublayer.attention_sublayer_work(a.shape[0], a.shape[1], a.shape[1], a.shape[2])
    forward = path(RESIDUAL_NORMED_HEADS_PIECES_ATTENTION_FORWARD, HEADS_PIECES_ATTENTION_PARTS[0], *work)
    return forward(
        a, gamma, beta, float(eps), weights, biases, checked, (out_gamma, out_beta), n_heads, bool(causal),
        float(heads_eps), float(out_eps), bool(residual),
    )  # fmt: skip


def residual_normed_heads_pieces_attention_backward(dy: np.ndarray, a: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP of :func:`residual_normed_heads_pieces_attention_forward` at ``dy``, from its
    input ``a`` and residuals (``gamma, normed, mean, rstd, out_gamma, branch, out_mean,
    out_rstd, weights, q_gamma, k_gamma, v_gamma, scale, heads_gamma``, then all the forward
    returned after ``out_rstd``, then the flag ``residual``); returns ``(da, dgamma, dbeta,
    dout_gamma, dout_beta, dweights, dbiases)`` and the pieces' gradients."""
    dy = cotangent(dy, a.dtype, a.shape)
    work = attention_sublayer.attention_sublayer_work(a.shape[0], a.shape[1], a.shape[1], a.shape[2])
    backward = path(RESIDUAL_NORMED_HEADS_PIECES_ATTENTION_BACKWARD, HEADS_PIECES_ATTENTION_PARTS[1], *work)
    return backward(dy, a, *residuals)
