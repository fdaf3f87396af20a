"""Self-attention with pieces between the heads and W_o, as one kernel each way.

NormFormer scales each head before the output projection (``head_scale``, one number per
head) and Sub-LN puts a LayerNorm over the merged heads there (``heads_norm``):

    heads = MHA(x Wq + bq, x Wk + bk, x Wv + bv)
    shaped = heads * c_h          (each head's Dh features times its scale; absent: heads)
    normed = LN(shaped)           (over all d features, gain gamma, shift beta; absent: shaped)
    out = normed Wo + bo

As the composition that is up to nine primitives; here one compiled call runs the forward and
one the backward, with the composition's kernels in its order (the projections'
:func:`~lnref.autograd.kernels.linear.matmul_kernel`, the attention loops, LayerNorm's row
loops), so the forward agrees with it to the bit. An absent piece is an empty array. Past the
sublayer kernels' limits, the NumPy twin runs the composition's kernels in one call.
Residuals: ``q``, ``k``, ``v``, ``probs``, ``heads``, ``shaped``, ``normed``, ``mean``, ``rstd``.
"""

from __future__ import annotations

import numpy as np

import lnref.autograd.kernels as kernels
from lnref.autograd.kernels.attention import attention_backward_kernel, attention_forward_kernel
from lnref.autograd.kernels.attention_sublayer import LOOP_PAYS_UP_TO, attention_sublayer_work
from lnref.autograd.kernels.checks import cotangent, float_arrays
from lnref.autograd.kernels.linear import linear_grads_kernel, matmul_kernel
from lnref.autograd.kernels.norms import layer_norm_backward_kernel, layer_norm_forward_kernel
from lnref.autograd.kernels.seam import Twin, njit

Arrays = tuple[np.ndarray, ...]


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


def heads_pieces_attention_forward_reference(
    x: np.ndarray, weights: np.ndarray, biases: np.ndarray, scale: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    n_heads: int, causal: bool, eps: float,
) -> Arrays:  # fmt: skip
    """NumPy twin; ``weights`` (4, d, d) and ``biases`` (4, d) hold Wq, Wk, Wv, Wo and their
    biases; returns ``(out, q, k, v, probs, heads, shaped, normed, mean, rstd)``."""
    rows = _rows(x)
    q, k, v = (kernels.linear_forward(rows, weights[i], biases[i]).reshape(x.shape) for i in range(3))
    heads, probs = kernels.multi_head_attention_forward(q, k, v, n_heads, causal)
    shaped = heads
    if scale.size:
        shaped = (heads.reshape(*x.shape[:2], n_heads, -1) * scale.reshape(n_heads, 1)).reshape(x.shape)
    normed, mean, rstd = shaped, np.empty(0, x.dtype), np.empty(0, x.dtype)
    if gamma.size:
        normed_rows, mean, rstd = kernels.layer_norm_forward(_rows(shaped), gamma, beta, eps)
        normed = normed_rows.reshape(x.shape)
    out = kernels.linear_forward(_rows(normed), weights[3], biases[3]).reshape(x.shape)
    return out, q, k, v, probs, heads, shaped, normed, mean, rstd


def heads_pieces_attention_backward_reference(
    dout: np.ndarray, x: np.ndarray, weights: np.ndarray, scale: np.ndarray, gamma: np.ndarray,
    q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray, heads: np.ndarray, shaped: np.ndarray,
    normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
) -> Arrays:  # fmt: skip
    """NumPy twin of the VJP; returns ``(dx, dweights, dbiases, dscale, dgamma, dbeta)``, the
    stacked gradients in the order of the stacked weights; an absent piece's are empty."""
    d, n_heads = x.shape[-1], probs.shape[1]
    dweights, dbiases = np.empty((4, d, d), x.dtype), np.empty((4, d), x.dtype)
    dnormed, dweights[3], dbiases[3] = kernels.linear_backward(_rows(dout), _rows(normed), weights[3])
    dshaped, dgamma, dbeta = dnormed, np.empty(0, x.dtype), np.empty(0, x.dtype)
    if gamma.size:
        dshaped, dgamma, dbeta = kernels.layer_norm_backward(dnormed, _rows(shaped), gamma, mean, rstd)
    dheads, dscale = dshaped, np.empty(0, x.dtype)
    if scale.size:
        split = dshaped.reshape(-1, n_heads, d // n_heads)
        dscale = (split * heads.reshape(split.shape)).sum(axis=(0, 2))
        dheads = (split * scale.reshape(n_heads, 1)).reshape(dshaped.shape)
    dq, dk, dv = kernels.multi_head_attention_backward(dheads.reshape(x.shape), q, k, v, probs)
    dx = np.zeros((x.size // d, d), x.dtype)
    for i, g in enumerate((dq, dk, dv)):
        dx_part, dweights[i], dbiases[i] = kernels.linear_backward(_rows(g), _rows(x), weights[i])
        dx += dx_part
    return dx.reshape(x.shape), dweights, dbiases, dscale, dgamma, dbeta


@njit(cache=True)
def _heads_pieces_attention_forward_kernel(
    x: np.ndarray, weights: np.ndarray, biases: np.ndarray, scale: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    causal: bool, eps: float, q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray, heads: np.ndarray,
    shaped: np.ndarray, normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """The whole forward (``shaped``/``normed`` written only where their piece is present)."""
    n_batch, t_len, d = x.shape
    n_head = probs.shape[1]
    dh = d // n_head
    n_x = n_batch * t_len
    per_head = (n_batch, t_len, n_head, dh)
    for step in range(4):  # one call site of the product, as in the sublayer kernels
        rows = x.reshape((n_x, d))
        dest = out.reshape((n_x, d))
        if step == 0:
            dest = q.reshape((n_x, d))
        elif step == 1:
            dest = k.reshape((n_x, d))
        elif step == 2:
            dest = v.reshape((n_x, d))
        else:
            hd = heads.reshape(per_head)
            attention_forward_kernel(q.reshape(per_head), k.reshape(per_head), v.reshape(per_head), causal, hd, probs)
            rows = heads.reshape((n_x, d))
            if scale.size:
                shaped_rows = shaped.reshape((n_x, d))
                for r in range(n_x):
                    for j in range(d):
                        shaped_rows[r, j] = rows[r, j] * scale[j // dh]
                rows = shaped_rows
            if gamma.size:
                normed_rows = normed.reshape((n_x, d))
                layer_norm_forward_kernel(rows, gamma, beta, eps, normed_rows, mean, rstd)
                rows = normed_rows
        matmul_kernel(rows, weights[step], biases[step], dest)


@njit(cache=True)
def _heads_pieces_attention_backward_kernel(
    dout: np.ndarray, x: np.ndarray, weights: np.ndarray, scale: np.ndarray, gamma: np.ndarray, q: np.ndarray,
    k: np.ndarray, v: np.ndarray, probs: np.ndarray, heads: np.ndarray, shaped: np.ndarray, normed: np.ndarray,
    mean: np.ndarray, rstd: np.ndarray, dx: np.ndarray, dweights: np.ndarray, dbiases: np.ndarray,
    dscale: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray,
) -> None:  # fmt: skip
    """The whole backward (``dscale``, ``dgamma``, ``dbeta`` zeroed float64 accumulators)."""
    n_batch, t_len, d = x.shape
    n_head = probs.shape[1]
    dh = d // n_head
    n_x = n_batch * t_len
    per_head = (n_batch, t_len, n_head, dh)
    last = normed if gamma.size else shaped if scale.size else heads
    dlast = np.empty_like(x).reshape((n_x, d))
    dq, dk, dv, scratch = np.empty_like(q), np.empty_like(k), np.empty_like(v), np.empty_like(x).reshape((n_x, d))
    dx_rows = dx.reshape((n_x, d))
    for step in range(4):  # one call site of the products' gradients
        if step == 0:
            drows, rows, into = dout.reshape((n_x, d)), last.reshape((n_x, d)), dlast
            index = 3
        else:
            drows = (dq if step == 1 else dk if step == 2 else dv).reshape((n_x, d))
            rows, into, index = x.reshape((n_x, d)), dx_rows if step == 1 else scratch, step - 1
        linear_grads_kernel(drows, rows, weights[index], into, dweights[index], dbiases[index])
        if step == 0:
            if gamma.size:
                dshaped = np.empty_like(x).reshape((n_x, d))
                pre = shaped if scale.size else heads
                layer_norm_backward_kernel(dlast, pre.reshape((n_x, d)), gamma, mean, rstd, dshaped, dgamma, dbeta)
                dlast = dshaped
            if scale.size:
                heads_rows = heads.reshape((n_x, d))
                for r in range(n_x):
                    for j in range(d):
                        dscale[j // dh] += dlast[r, j] * heads_rows[r, j]
                        dlast[r, j] = dlast[r, j] * scale[j // dh]
            attention_backward_kernel(
                dlast.reshape(per_head), q.reshape(per_head), k.reshape(per_head), v.reshape(per_head), probs,
                dq.reshape(per_head), dk.reshape(per_head), dv.reshape(per_head),
            )  # fmt: skip
        elif step > 1:
            for r in range(n_x):
                for j in range(d):
                    dx_rows[r, j] += scratch[r, j]


def _heads_pieces_attention_forward_loop(
    x: np.ndarray, weights: np.ndarray, biases: np.ndarray, scale: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    n_heads: int, causal: bool, eps: float,
) -> Arrays:  # fmt: skip
    """Loop twin of :func:`heads_pieces_attention_forward_reference` (allocates, runs the kernel)."""
    dtype, n = x.dtype, x.shape[0] * x.shape[1]
    q, k, v, heads, out = (np.empty(x.shape, dtype) for _ in range(5))
    shaped = np.empty(x.shape, dtype) if scale.size else heads
    normed = np.empty(x.shape, dtype) if gamma.size else shaped
    mean, rstd = (np.empty(n if gamma.size else 0, dtype) for _ in range(2))
    probs = np.zeros((x.shape[0], n_heads, x.shape[1], x.shape[1]), dtype)
    _heads_pieces_attention_forward_kernel(
        x, weights, biases, scale, gamma, beta, causal, eps, q, k, v, probs, heads, shaped, normed, mean, rstd, out
    )
    return out, q, k, v, probs, heads, shaped, normed, mean, rstd


def _heads_pieces_attention_backward_loop(
    dout: np.ndarray, x: np.ndarray, weights: np.ndarray, scale: np.ndarray, gamma: np.ndarray,
    q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray, heads: np.ndarray, shaped: np.ndarray,
    normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
) -> Arrays:  # fmt: skip
    """Loop twin of :func:`heads_pieces_attention_backward_reference` (allocates, runs the kernel)."""
    dtype = x.dtype
    dx, dweights, dbiases = np.empty(x.shape, dtype), np.empty(weights.shape, dtype), np.empty((4, x.shape[2]), dtype)
    dscale, dgamma, dbeta = np.zeros(scale.size), np.zeros(gamma.size), np.zeros(gamma.size)
    _heads_pieces_attention_backward_kernel(
        dout, x, weights, scale, gamma, q, k, v, probs, heads, shaped, normed, mean, rstd, dx, dweights, dbiases,
        dscale, dgamma, dbeta,
    )  # fmt: skip
    return (dx, dweights, dbiases, *(g.astype(dtype, copy=False) for g in (dscale, dgamma, dbeta)))


# The sublayer kernels' limits: the same products and loops, and a norm's or a scale's pass.
HEADS_PIECES_ATTENTION_FORWARD = Twin(
    "heads_pieces_attention_forward",
    reference=heads_pieces_attention_forward_reference,
    loop=_heads_pieces_attention_forward_loop,
    loop_pays_up_to=LOOP_PAYS_UP_TO,
)
HEADS_PIECES_ATTENTION_BACKWARD = Twin(
    "heads_pieces_attention_backward",
    reference=heads_pieces_attention_backward_reference,
    loop=_heads_pieces_attention_backward_loop,
    loop_pays_up_to=LOOP_PAYS_UP_TO,
)


def heads_pieces_attention_forward(
    x: np.ndarray, weights: np.ndarray, biases: np.ndarray, scale: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    n_heads: int, causal: bool, eps: float,
) -> Arrays:  # fmt: skip
    """The forward of ``x`` (B, T, d); see :func:`heads_pieces_attention_forward_reference`."""
    x, weights, biases, scale, gamma, beta = float_arrays(x, weights, biases, scale, gamma, beta)
    d = x.shape[-1] if x.ndim == 3 else 0
    if not (
        d
        and type(n_heads) is int
        and n_heads >= 1
        and d % n_heads == 0
        and weights.shape == (4, d, d)
        and biases.shape == (4, d)
        and scale.shape in ((0,), (n_heads,))
        and gamma.shape == beta.shape
        and gamma.shape in ((0,), (d,))
    ):
        raise ValueError(
            f"x {x.shape}, weights {weights.shape}, biases {biases.shape}, scale {scale.shape}, gamma "
            f"{gamma.shape}, beta {beta.shape} and {n_heads} heads do not fit one attention sublayer"
        )
    work = attention_sublayer_work(x.shape[0], x.shape[1], x.shape[1], d)
    return HEADS_PIECES_ATTENTION_FORWARD.pick(*work)(
        x, weights, biases, scale, gamma, beta, n_heads, bool(causal), float(eps)
    )


def heads_pieces_attention_backward(dout: np.ndarray, *residuals: np.ndarray) -> Arrays:
    """The VJP at ``dout``; ``residuals`` are ``(x, weights, scale, gamma, q, k, v, probs,
    heads, shaped, normed, mean, rstd)`` as the forward took and returned them, unchanged."""
    x = residuals[0]
    dout = cotangent(dout, x.dtype, x.shape)
    work = attention_sublayer_work(x.shape[0], x.shape[1], x.shape[1], x.shape[2])
    return HEADS_PIECES_ATTENTION_BACKWARD.pick(*work)(dout, *residuals)
