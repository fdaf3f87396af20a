"""Self-attention with pieces around its core, as one kernel each way.

HybridNorm normalizes each head's queries, keys and values (``q_norm``, ``k_norm``, ``v_norm``:
a LayerNorm of Dh features whose gain and shift the heads share); NormFormer scales each head
before the output projection (``head_scale``, one number per head) and Sub-LN puts a LayerNorm
over the merged heads there (``heads_norm``):

    q = N_q(x Wq + bq),  k = N_k(x Wk + bk),  v = N_v(x Wv + bv)   (absent: the projection)
    heads = MHA(q, k, v)
    shaped = heads * c_h          (each head's Dh features times its scale; absent: heads)
    normed = LN(shaped)           (over all d features, gain gamma, shift beta; absent: shaped)
    out = normed Wo + bo

As the composition that is up to nineteen primitives; here one compiled call runs the forward
and one the backward, with the composition's kernels in its order (the projections'
:func:`~lnref.autograd.kernels.linear.matmul_kernel`, LayerNorm's row loops on each head's
features, the attention loops, LayerNorm's row loops again), so the forward agrees with it to
the bit. An absent piece is an empty array. Past the sublayer kernels' limits, the NumPy twin
runs the composition's kernels in one call. Residuals: the projections ``qkv`` (3, B, T, d);
the attention's inputs ``qkv_normed`` (3, B, T, d: the projections themselves where there is no
head norm, a copy of an absent norm's projection beside the present ones); ``head_stats``
(3, 2, B T H): each head norm's mean and rstd per head of each token (zero where that norm is
absent; (3, 2, 0) where none is present); ``probs``, ``heads``, ``shaped``, ``normed``,
``mean``, ``rstd``. Arrays of three in one block: each residual is passed on through the
fused step's layers and its kernels' calls one by one.
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


def _head_rows(a: np.ndarray, n_heads: int) -> np.ndarray:
    """(B, T, d) as rows of one head's Dh features each, the rows a head norm normalizes."""
    return a.reshape(-1, a.shape[-1] // n_heads)


def heads_pieces_attention_forward_reference(
    x: np.ndarray, weights: np.ndarray, biases: np.ndarray,
    q_gamma: np.ndarray, q_beta: np.ndarray, k_gamma: np.ndarray, k_beta: np.ndarray,
    v_gamma: np.ndarray, v_beta: np.ndarray, scale: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    n_heads: int, causal: bool, eps: float,
) -> Arrays:  # fmt: skip
    """NumPy twin; ``weights`` (4, d, d) and ``biases`` (4, d) hold Wq, Wk, Wv, Wo and their
    biases; returns ``(out, qkv, qkv_normed, head_stats, probs, heads, shaped, normed, mean,
    rstd)``."""
    rows, empty = _rows(x), np.empty(0, x.dtype)
    qkv = np.stack([kernels.linear_forward(rows, weights[i], biases[i]).reshape(x.shape) for i in range(3)])
    qkv_normed, head_stats = qkv, np.empty((3, 2, 0), x.dtype)
    head_norms = ((q_gamma, q_beta), (k_gamma, k_beta), (v_gamma, v_beta))
    if q_gamma.size or k_gamma.size or v_gamma.size:
        qkv_normed, head_stats = np.empty_like(qkv), np.zeros((3, 2, rows.shape[0] * n_heads), x.dtype)
        for i, (head_gamma, head_beta) in enumerate(head_norms):
            if head_gamma.size:
                normed_rows, head_stats[i, 0], head_stats[i, 1] = kernels.layer_norm_forward(
                    _head_rows(qkv[i], n_heads), head_gamma, head_beta, eps
                )
                qkv_normed[i] = normed_rows.reshape(x.shape)
            else:  # this projection is the attention's input as it is
                qkv_normed[i] = qkv[i]
    heads, probs = kernels.multi_head_attention_forward(qkv_normed[0], qkv_normed[1], qkv_normed[2], n_heads, causal)
    shaped = heads
    if scale.size:
        shaped = (heads.reshape(*x.shape[:2], n_heads, -1) * scale.reshape(n_heads, 1)).reshape(x.shape)
    normed, mean, rstd = shaped, empty, empty
    if gamma.size:
        normed_rows, mean, rstd = kernels.layer_norm_forward(_rows(shaped), gamma, beta, eps)
        normed = normed_rows.reshape(x.shape)
    out = kernels.linear_forward(_rows(normed), weights[3], biases[3]).reshape(x.shape)
    return out, qkv, qkv_normed, head_stats, probs, heads, shaped, normed, mean, rstd


def heads_pieces_attention_backward_reference(
    dout: np.ndarray, x: np.ndarray, weights: np.ndarray, q_gamma: np.ndarray, k_gamma: np.ndarray,
    v_gamma: np.ndarray, scale: np.ndarray, gamma: np.ndarray, qkv: np.ndarray, qkv_normed: np.ndarray,
    head_stats: np.ndarray, probs: np.ndarray, heads: np.ndarray, shaped: np.ndarray, normed: np.ndarray,
    mean: np.ndarray, rstd: np.ndarray,
) -> Arrays:  # fmt: skip
    """NumPy twin of the VJP; returns ``(dx, dweights, dbiases, dq_gamma, dq_beta, dk_gamma,
    dk_beta, dv_gamma, dv_beta, dscale, dgamma, dbeta)``, the stacked gradients in the order of
    the stacked weights; an absent piece's are empty."""
    d, n_heads, empty = x.shape[-1], probs.shape[1], np.empty(0, x.dtype)
    dweights, dbiases = np.empty((4, d, d), x.dtype), np.empty((4, d), x.dtype)
    dnormed, dweights[3], dbiases[3] = kernels.linear_backward(_rows(dout), _rows(normed), weights[3])
    dshaped, dgamma, dbeta = dnormed, empty, empty
    if gamma.size:
        dshaped, dgamma, dbeta = kernels.layer_norm_backward(dnormed, _rows(shaped), gamma, mean, rstd)
    dheads, dscale = dshaped, empty
    if scale.size:
        split = dshaped.reshape(-1, n_heads, d // n_heads)
        dscale = (split * heads.reshape(split.shape)).sum(axis=(0, 2))
        dheads = (split * scale.reshape(n_heads, 1)).reshape(dshaped.shape)
    dinputs = kernels.multi_head_attention_backward(
        dheads.reshape(x.shape), qkv_normed[0], qkv_normed[1], qkv_normed[2], probs
    )
    dx = np.zeros((x.size // d, d), x.dtype)
    head_grads: list[np.ndarray] = []
    for i, (dinput, head_gamma) in enumerate(zip(dinputs, (q_gamma, k_gamma, v_gamma))):
        dprojection, dhead_gamma, dhead_beta = dinput, empty, empty
        if head_gamma.size:
            dhead_rows, head_rows = _head_rows(dinput, n_heads), _head_rows(qkv[i], n_heads)
            dprojection, dhead_gamma, dhead_beta = kernels.layer_norm_backward(
                dhead_rows, head_rows, head_gamma, head_stats[i, 0], head_stats[i, 1]
            )
        head_grads += (dhead_gamma, dhead_beta)
        dx_part, dweights[i], dbiases[i] = kernels.linear_backward(dprojection.reshape(-1, d), _rows(x), weights[i])
        dx += dx_part
    return dx.reshape(x.shape), dweights, dbiases, *head_grads, dscale, dgamma, dbeta


@njit(cache=True)
def _one_of(index: int, of_q: np.ndarray, of_k: np.ndarray, of_v: np.ndarray) -> np.ndarray:
    """The queries' (``index`` 0), keys' (1) or values' (2) array of three."""
    if index == 0:
        return of_q
    if index == 1:
        return of_k
    return of_v


@njit(cache=True)
def _heads_pieces_attention_forward_kernel(
    x: np.ndarray, weights: np.ndarray, biases: np.ndarray,
    q_gamma: np.ndarray, q_beta: np.ndarray, k_gamma: np.ndarray, k_beta: np.ndarray,
    v_gamma: np.ndarray, v_beta: np.ndarray, scale: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    causal: bool, eps: float, qkv: np.ndarray, qkv_normed: np.ndarray, head_stats: np.ndarray,
    probs: np.ndarray, heads: np.ndarray, shaped: np.ndarray, normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
    out: np.ndarray,
) -> None:  # fmt: skip
    """The whole forward (``qkv_normed``, ``head_stats``, ``shaped``, ``normed`` written only
    where a piece of theirs is present)."""
    n_batch, t_len, d = x.shape
    n_head = probs.shape[1]
    dh = d // n_head
    n_x = n_batch * t_len
    per_head = (n_batch, t_len, n_head, dh)
    head_rows = (n_x * n_head, dh)
    for step in range(4):  # one call site of the product, as in the sublayer kernels
        rows = x.reshape((n_x, d))
        dest = out.reshape((n_x, d))
        if step < 3:
            dest = qkv[step].reshape((n_x, d))
        else:
            # The head norms after all three projections, as the composition runs them (none of
            # them where qkv_normed is qkv itself).
            for i in range(3 if head_stats.shape[2] else 0):
                head_gamma = _one_of(i, q_gamma, k_gamma, v_gamma)
                if head_gamma.size:
                    layer_norm_forward_kernel(
                        qkv[i].reshape(head_rows), head_gamma, _one_of(i, q_beta, k_beta, v_beta), eps,
                        qkv_normed[i].reshape(head_rows), head_stats[i, 0], head_stats[i, 1],
                    )  # fmt: skip
                else:  # this projection is the attention's input as it is
                    source, into = qkv[i].reshape(n_x * d), qkv_normed[i].reshape(n_x * d)
                    for j in range(n_x * d):
                        into[j] = source[j]
            qh, kh, vh = qkv_normed[0].reshape(per_head), qkv_normed[1].reshape(per_head), qkv_normed[2]
            attention_forward_kernel(qh, kh, vh.reshape(per_head), causal, heads.reshape(per_head), probs)
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
    dout: np.ndarray, x: np.ndarray, weights: np.ndarray, q_gamma: np.ndarray, k_gamma: np.ndarray,
    v_gamma: np.ndarray, scale: np.ndarray, gamma: np.ndarray, qkv: np.ndarray, qkv_normed: np.ndarray,
    head_stats: np.ndarray, probs: np.ndarray, heads: np.ndarray, shaped: np.ndarray, normed: np.ndarray,
    mean: np.ndarray, rstd: np.ndarray, dx: np.ndarray, dweights: np.ndarray, dbiases: np.ndarray,
    dq_gamma: np.ndarray, dq_beta: np.ndarray, dk_gamma: np.ndarray, dk_beta: np.ndarray, dv_gamma: np.ndarray,
    dv_beta: np.ndarray, dscale: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray,
) -> None:  # fmt: skip
    """The whole backward (the gradients of the pieces zeroed float64 accumulators)."""
    n_batch, t_len, d = x.shape
    n_head = probs.shape[1]
    dh = d // n_head
    n_x = n_batch * t_len
    per_head = (n_batch, t_len, n_head, dh)
    head_rows = (n_x * n_head, dh)
    last = normed if gamma.size else shaped if scale.size else heads
    dlast = np.empty_like(x).reshape((n_x, d))
    dqkv_normed = np.empty_like(qkv)
    dprojection, scratch = np.empty_like(x).reshape((n_x, d)), np.empty_like(x).reshape((n_x, d))
    dx_rows = dx.reshape((n_x, d))
    for step in range(4):  # one call site of the products' gradients
        if step == 0:
            drows, rows, into = dout.reshape((n_x, d)), last.reshape((n_x, d)), dlast
            index = 3
        else:
            index = step - 1
            drows = dqkv_normed[index].reshape((n_x, d))
            head_gamma = _one_of(index, q_gamma, k_gamma, v_gamma)
            if head_gamma.size:
                layer_norm_backward_kernel(
                    drows.reshape(head_rows), qkv[index].reshape(head_rows), head_gamma, head_stats[index, 0],
                    head_stats[index, 1], dprojection.reshape(head_rows), _one_of(index, dq_gamma, dk_gamma, dv_gamma),
                    _one_of(index, dq_beta, dk_beta, dv_beta),
                )  # fmt: skip
                drows = dprojection
            rows, into = x.reshape((n_x, d)), dx_rows if step == 1 else scratch
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
                dlast.reshape(per_head), qkv_normed[0].reshape(per_head), qkv_normed[1].reshape(per_head),
                qkv_normed[2].reshape(per_head), probs, dqkv_normed[0].reshape(per_head),
                dqkv_normed[1].reshape(per_head), dqkv_normed[2].reshape(per_head),
            )  # fmt: skip
        elif step > 1:
            for r in range(n_x):
                for j in range(d):
                    dx_rows[r, j] += scratch[r, j]


def heads_pieces_forward_arrays(
    x: np.ndarray, n_heads: int, q_gamma: np.ndarray, k_gamma: np.ndarray, v_gamma: np.ndarray,
    scale: np.ndarray, gamma: np.ndarray,
) -> Arrays:  # fmt: skip
    """The arrays the forward kernel writes, in its order (``out`` last); an absent piece's
    output is its input, and its statistics empty."""
    # The queries', keys' and values' arrays are one block each, which only the kernels index:
    # in Python a view taken out of a shared block costs more than an allocation.
    shape, dtype, n = x.shape, x.dtype, x.shape[0] * x.shape[1]
    qkv, heads, out = np.empty((3, *shape), dtype), np.empty(shape, dtype), np.empty(shape, dtype)
    empty = np.empty(0, dtype)
    # The attention's inputs (the projections themselves where no head has a norm) and each head
    # norm's mean and rstd per head of each token (zero where that norm is absent).
    qkv_normed, head_stats = qkv, np.empty((3, 2, 0), dtype)
    if q_gamma.size or k_gamma.size or v_gamma.size:
        qkv_normed, head_stats = np.empty((3, *shape), dtype), np.zeros((3, 2, n * n_heads), dtype)
    shaped = np.empty(shape, dtype) if scale.size else heads
    normed, mean, rstd = shaped, empty, empty
    if gamma.size:
        normed, mean, rstd = np.empty(shape, dtype), np.empty(n, dtype), np.empty(n, dtype)
    probs = np.zeros((shape[0], n_heads, shape[1], shape[1]), dtype)
    return qkv, qkv_normed, head_stats, probs, heads, shaped, normed, mean, rstd, out


def _heads_pieces_attention_forward_loop(
    x: np.ndarray, weights: np.ndarray, biases: np.ndarray,
    q_gamma: np.ndarray, q_beta: np.ndarray, k_gamma: np.ndarray, k_beta: np.ndarray,
    v_gamma: np.ndarray, v_beta: np.ndarray, scale: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    n_heads: int, causal: bool, eps: float,
) -> Arrays:  # fmt: skip
    """Loop twin of :func:`heads_pieces_attention_forward_reference` (allocates, runs the kernel)."""
    arrays = heads_pieces_forward_arrays(x, n_heads, q_gamma, k_gamma, v_gamma, scale, gamma)
    _heads_pieces_attention_forward_kernel(
        x, weights, biases, q_gamma, q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, gamma, beta, causal, eps,
        *arrays,
    )  # fmt: skip
    return arrays[-1], *arrays[:-1]


def _heads_pieces_attention_backward_loop(
    dout: np.ndarray, x: np.ndarray, weights: np.ndarray, q_gamma: np.ndarray, k_gamma: np.ndarray,
    v_gamma: np.ndarray, scale: np.ndarray, gamma: np.ndarray, qkv: np.ndarray, qkv_normed: np.ndarray,
    head_stats: np.ndarray, probs: np.ndarray, heads: np.ndarray, shaped: np.ndarray, normed: np.ndarray,
    mean: np.ndarray, rstd: np.ndarray,
) -> Arrays:  # fmt: skip
    """Loop twin of :func:`heads_pieces_attention_backward_reference` (allocates, runs the kernel)."""
    dtype = x.dtype
    dx, dweights, dbiases = np.empty(x.shape, dtype), np.empty(weights.shape, dtype), np.empty((4, x.shape[2]), dtype)
    pieces = (q_gamma, q_gamma, k_gamma, k_gamma, v_gamma, v_gamma, scale, gamma, gamma)
    dpieces = [np.zeros(piece.size) for piece in pieces]  # float64 accumulators, as LayerNorm's loop keeps them
    _heads_pieces_attention_backward_kernel(
        dout, x, weights, q_gamma, k_gamma, v_gamma, scale, gamma, qkv, qkv_normed, head_stats, probs, heads, shaped,
        normed, mean, rstd, dx, dweights, dbiases, *dpieces,
    )  # fmt: skip
    if dtype != dpieces[0].dtype:  # float32: the accumulators rounded once
        dpieces = [g.astype(dtype) for g in dpieces]
    return (dx, dweights, dbiases, *dpieces)


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


def checked_heads_pieces(
    n_heads: int, x: np.ndarray, weights: np.ndarray, biases: np.ndarray,
    q_gamma: np.ndarray, q_beta: np.ndarray, k_gamma: np.ndarray, k_beta: np.ndarray,
    v_gamma: np.ndarray, v_beta: np.ndarray, scale: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    *more: np.ndarray,
) -> Arrays:  # fmt: skip
    """The arrays as float arrays of one dtype that fit one attention sublayer of ``n_heads``
    heads with pieces on ``x`` (B, T, d), or an error; ``more`` arrays, whose shapes the
    caller checks, made float arrays of that dtype with them."""
    arrays = float_arrays(
        x, weights, biases, q_gamma, q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, gamma, beta, *more
    )
    x, weights, biases, q_gamma, q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, gamma, beta = arrays[:12]
    d = x.shape[-1] if x.ndim == 3 else 0
    fits = d and type(n_heads) is int and n_heads >= 1 and d % n_heads == 0
    head_norm_shapes = ((0,), (d // n_heads,)) if fits else ()  # spelled out: a check runs on every call
    if not (
        fits
        and weights.shape == (4, d, d)
        and biases.shape == (4, d)
        and q_gamma.shape == q_beta.shape
        and q_gamma.shape in head_norm_shapes
        and k_gamma.shape == k_beta.shape
        and k_gamma.shape in head_norm_shapes
        and v_gamma.shape == v_beta.shape
        and v_gamma.shape in head_norm_shapes
        and scale.shape in ((0,), (n_heads,))
        and gamma.shape == beta.shape
        and gamma.shape in ((0,), (d,))
    ):
        head_norms = ((q_gamma, q_beta), (k_gamma, k_beta), (v_gamma, v_beta))
        norms = ", ".join(f"{name} norm {g.shape} and {b.shape}" for name, (g, b) in zip("qkv", head_norms))
        raise ValueError(
            f"x {x.shape}, weights {weights.shape}, biases {biases.shape}, {norms}, scale {scale.shape}, gamma "
            f"{gamma.shape}, beta {beta.shape} and {n_heads} heads do not fit one attention sublayer"
        )
    return tuple(arrays)


def heads_pieces_attention_forward(
    x: np.ndarray, weights: np.ndarray, biases: np.ndarray,
    q_gamma: np.ndarray, q_beta: np.ndarray, k_gamma: np.ndarray, k_beta: np.ndarray,
    v_gamma: np.ndarray, v_beta: np.ndarray, scale: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    n_heads: int, causal: bool, eps: float,
) -> Arrays:  # fmt: skip
    """The forward of ``x`` (B, T, d); see :func:`heads_pieces_attention_forward_reference`."""
    arrays = checked_heads_pieces(
        n_heads, x, weights, biases, q_gamma, q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, gamma, beta
    )
    x, weights, biases, q_gamma, q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, gamma, beta = arrays
    d = x.shape[-1]
    work = attention_sublayer_work(x.shape[0], x.shape[1], x.shape[1], d)
    return HEADS_PIECES_ATTENTION_FORWARD.pick(*work)(
        x, weights, biases, q_gamma, q_beta, k_gamma, k_beta, v_gamma, v_beta, scale, gamma, beta, n_heads,
        bool(causal), float(eps),
    )  # fmt: skip


def heads_pieces_attention_backward(dout: np.ndarray, *residuals: np.ndarray) -> Arrays:
    """The VJP at ``dout``; ``residuals`` are ``(x, weights, q_gamma, k_gamma, v_gamma, scale,
    gamma)`` as the forward took them, then all it returned after ``out``, unchanged."""
    x = residuals[0]
    dout = cotangent(dout, x.dtype, x.shape)
    work = attention_sublayer_work(x.shape[0], x.shape[1], x.shape[1], x.shape[2])
    return HEADS_PIECES_ATTENTION_BACKWARD.pick(*work)(dout, *residuals)
