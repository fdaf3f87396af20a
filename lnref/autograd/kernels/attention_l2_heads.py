"""Self-attention with L2-normalized, scaled heads of queries and keys, one kernel each way.

Each head's queries and keys divided by their L2 norm and multiplied by a gain, one per
feature (d,), each head its own part (nGPT's s_qk): ``nn.attention`` with a ``q_norm`` and a
``k_norm`` that are ``pieces.HeadL2Norm``s. On x (B, T, d), every W (d, d), every b (d,):

    q = x Wq + bq,   k = x Wk + bk,   v = x Wv + bv
    q_normed_h = q_h / ||q_h|| * g_q,h,   k_normed_h = k_h / ||k_h|| * g_k,h     (per head h)
    g_q = c_q q_gain,   g_k = c_k k_gain       (a stored gain times its constant factor c)
    heads = MHA(q_normed, k_normed, v),   out = heads Wo + bo

As the composition that is a dozen primitives; here one compiled call runs the forward and
one the backward, with the composition's loops in its order (the projections'
:func:`~lnref.autograd.kernels.linear.matmul_kernel`, the L2 normalization's row loop, the
attention loops), so the forward agrees with it to the bit. Past the sublayer kernels' limits
the NumPy twin runs the composition's kernels. A head of norm 0 has no direction: the kernels
refuse it (:data:`NO_DIRECTION`), as ``ops.l2_normalize`` does. Residuals: ``q``, ``k``,
``v``, ``q_normed``, ``k_normed``, ``norms`` (2, B T H): each head's ||q_h|| and ||k_h||,
``probs`` and ``heads``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import lnref.autograd.kernels as kernels
from lnref.autograd.kernels.attention import attention_backward_kernel, attention_forward_kernel
from lnref.autograd.kernels.attention_sublayer import LOOP_PAYS_UP_TO, attention_sublayer_work
from lnref.autograd.kernels.checks import check_fit, cotangent, float_arrays
from lnref.autograd.kernels.linear import linear_grads_kernel, matmul_kernel
from lnref.autograd.kernels.seam import Twin, njit

Arrays = tuple[np.ndarray, ...]
NO_DIRECTION = "a vector of norm 0 has no direction"
NONFINITE_SQUARES = "a head holds NaN or inf (its sum of squares is not finite)"


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


def _l2_heads_forward(p: np.ndarray, gain: np.ndarray, n_heads: int, tiny: float) -> tuple[np.ndarray, np.ndarray]:
    """(normed, norm): each head of ``p`` (B, T, d) to unit L2 norm, times its part of ``gain``."""
    split = p.reshape(-1, p.shape[-1] // n_heads)
    unit, norm = kernels.scale_norm_forward(split, np.ones((), p.dtype), tiny)
    if not (norm >= tiny).all():
        raise ValueError(NO_DIRECTION)
    return (unit.reshape(*p.shape[:-1], n_heads, -1) * gain.reshape(n_heads, -1)).reshape(p.shape), norm


def _l2_heads_backward(
    dnormed: np.ndarray, p: np.ndarray, gain: np.ndarray, norm: np.ndarray, tiny: float
) -> tuple[np.ndarray, np.ndarray]:
    """(dp, dgain), the VJP of :func:`_l2_heads_forward`."""
    n_heads = norm.size // (p.size // p.shape[-1])
    split = p.reshape(-1, p.shape[-1] // n_heads)
    unit = split * (1.0 / norm)[:, None]
    per_head = dnormed.reshape(-1, n_heads, split.shape[1])
    dgain = (per_head * unit.reshape(per_head.shape)).sum(axis=0).reshape(-1)
    dunit = (per_head * gain.reshape(n_heads, -1)).reshape(split.shape)
    dsplit, _ = kernels.scale_norm_backward(dunit, split, np.ones((), p.dtype), norm, tiny)
    return dsplit.reshape(p.shape), dgain


def l2_heads_attention_forward_reference(
    x: np.ndarray, wq: np.ndarray, bq: np.ndarray, wk: np.ndarray, bk: np.ndarray, wv: np.ndarray, bv: np.ndarray,
    wo: np.ndarray, bo: np.ndarray, q_gain: np.ndarray, k_gain: np.ndarray, q_factor: float, k_factor: float,
    n_heads: int, causal: bool, tiny: float,
) -> Arrays:  # fmt: skip
    """NumPy twin; returns ``(out, q, k, v, q_normed, k_normed, norms, probs, heads)``."""
    rows = _rows(x)
    q, k, v = (kernels.linear_forward(rows, w, b).reshape(x.shape) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    q_normed, q_norm = _l2_heads_forward(q, q_gain * q_factor, n_heads, tiny)
    k_normed, k_norm = _l2_heads_forward(k, k_gain * k_factor, n_heads, tiny)
    heads, probs = kernels.multi_head_attention_forward(q_normed, k_normed, v, n_heads, causal)
    out = kernels.linear_forward(_rows(heads), wo, bo).reshape(x.shape)
    return out, q, k, v, q_normed, k_normed, np.stack((q_norm, k_norm)), probs, heads


def l2_heads_attention_backward_reference(
    dout: np.ndarray, x: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, wo: np.ndarray,
    q_gain: np.ndarray, k_gain: np.ndarray, q_factor: float, k_factor: float, q: np.ndarray, k: np.ndarray,
    v: np.ndarray, q_normed: np.ndarray, k_normed: np.ndarray, norms: np.ndarray, probs: np.ndarray,
    heads: np.ndarray, tiny: float,
) -> Arrays:  # fmt: skip
    """NumPy twin of the VJP; returns ``(dx, dweights, dbiases, dgains)``: dweights (4, d, d)
    and dbiases (4, d) of the q, k, v and output projections in this order, dgains (2, d) of
    the queries' and the keys' gains::

        dheads, dWo, dbo = the linear VJP at dout
        dQ, dK, dV = the attention core's backward at dheads (Q, K the normed q, k)
        dq_gain = c_q (sum over rows of dQ * u_q),  du_q = dQ * g_q   (u_q: q's heads over their norms)
        dq_h = (du_q,h - u_q,h <u_q,h, du_q,h>) / ||q_h||    (keys alike)
        dx, dWq, dbq = the linear VJP at dq (and k, v alike; dx their sum)
    """
    d, dtype = x.shape[-1], x.dtype
    dweights, dbiases = np.empty((4, d, d), dtype), np.empty((4, d), dtype)
    dheads, dweights[3], dbiases[3] = kernels.linear_backward(_rows(dout), _rows(heads), wo)
    dq_normed, dk_normed, dv = kernels.multi_head_attention_backward(
        dheads.reshape(x.shape), q_normed, k_normed, v, probs
    )
    dq, dq_gain = _l2_heads_backward(dq_normed, q, q_gain * q_factor, norms[0], tiny)
    dk, dk_gain = _l2_heads_backward(dk_normed, k, k_gain * k_factor, norms[1], tiny)
    dx = np.zeros((x.size // d, d), dtype)
    for i, (dp, w) in enumerate(((dq, wq), (dk, wk), (dv, wv))):
        dx_part, dweights[i], dbiases[i] = kernels.linear_backward(_rows(dp), _rows(x), w)
        dx += dx_part
    return dx.reshape(x.shape), dweights, dbiases, np.stack((dq_gain * q_factor, dk_gain * k_factor))


@njit(cache=True)
def _l2_heads_forward_kernel(
    p: np.ndarray, gain: np.ndarray, factor: float, tiny: float, normed: np.ndarray, norm: np.ndarray
) -> None:
    """Each row of ``p`` (n H, Dh), one head's features, to unit L2 norm (times 1 / ||p||, as
    the L2 normalization's loop), times its head's part of ``gain`` (d,) times ``factor``;
    writes ``norm``."""
    n, dh = p.shape
    n_head = gain.size // dh
    for i in range(n):
        row, out, part = p[i], normed[i], (i % n_head) * dh
        squares = 0.0
        for j in range(dh):
            squares += row[j] * row[j]
        if not math.isfinite(squares):
            raise ValueError(NONFINITE_SQUARES)
        length = math.sqrt(squares)
        if not length >= tiny:
            raise ValueError(NO_DIRECTION)
        scale = 1.0 / length
        for j in range(dh):
            out[j] = row[j] * scale  # stored, then scaled: the two primitives' roundings
            out[j] = out[j] * (gain[part + j] * factor)
        norm[i] = length


@njit(cache=True)
def _l2_heads_backward_kernel(
    dnormed: np.ndarray, p: np.ndarray, gain: np.ndarray, factor: float, norm: np.ndarray, dp: np.ndarray,
    dgain: np.ndarray,
) -> None:  # fmt: skip
    """The VJP of :func:`_l2_heads_forward_kernel`: writes ``dp`` and ``dgain`` (the gradient
    of ``gain``, summed over the rows in float64 before it is multiplied by ``factor``)."""
    n, dh = p.shape
    n_head = gain.size // dh
    dunit, total = np.empty(dh), np.zeros(gain.size)
    for i in range(n):
        row, drow, part, length = p[i], dnormed[i], (i % n_head) * dh, norm[i]
        scale = 1.0 / length
        radial = 0.0
        for j in range(dh):
            total[part + j] += drow[j] * (row[j] * scale)
            dunit[j] = drow[j] * (gain[part + j] * factor)
            radial += dunit[j] * (row[j] / length)
        out = dp[i]
        for j in range(dh):
            out[j] = scale * (dunit[j] - (row[j] / length) * radial)
    for j in range(gain.size):
        dgain[j] = total[j] * factor


@njit(cache=True)
def _l2_heads_attention_forward_kernel(
    x: np.ndarray, wq: np.ndarray, bq: np.ndarray, wk: np.ndarray, bk: np.ndarray, wv: np.ndarray, bv: np.ndarray,
    wo: np.ndarray, bo: np.ndarray, q_gain: np.ndarray, k_gain: np.ndarray, q_factor: float, k_factor: float,
    causal: bool, tiny: float, q: np.ndarray, k: np.ndarray, v: np.ndarray, q_normed: np.ndarray,
    k_normed: np.ndarray, norms: np.ndarray, probs: np.ndarray, heads: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """The whole forward, writing every output (``probs`` zeroed beforehand)."""
    n_batch, t_len, d = x.shape
    n_head = probs.shape[1]
    dh = d // n_head
    n_x = n_batch * t_len
    per_head = (n_batch, t_len, n_head, dh)
    head_rows = (n_x * n_head, dh)
    x_rows = x.reshape((n_x, d))
    for step in range(4):  # one call site of the product (see feed_forward.py's docstring)
        if step == 0:
            rows, weight, bias, dest = x_rows, wq, bq, q.reshape((n_x, d))
        elif step == 1:
            rows, weight, bias, dest = x_rows, wk, bk, k.reshape((n_x, d))
        elif step == 2:
            rows, weight, bias, dest = x_rows, wv, bv, v.reshape((n_x, d))
        else:
            _l2_heads_forward_kernel(
                q.reshape(head_rows), q_gain, q_factor, tiny, q_normed.reshape(head_rows), norms[0]
            )
            _l2_heads_forward_kernel(
                k.reshape(head_rows), k_gain, k_factor, tiny, k_normed.reshape(head_rows), norms[1]
            )
            attention_forward_kernel(
                q_normed.reshape(per_head), k_normed.reshape(per_head), v.reshape(per_head), causal,
                heads.reshape(per_head), probs,
            )  # fmt: skip
            rows, weight, bias, dest = heads.reshape((n_x, d)), wo, bo, out.reshape((n_x, d))
        matmul_kernel(rows, weight, bias, dest)


@njit(cache=True)
def _l2_heads_attention_backward_kernel(
    dout: np.ndarray, x: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, wo: np.ndarray,
    q_gain: np.ndarray, k_gain: np.ndarray, q_factor: float, k_factor: float, q: np.ndarray, k: np.ndarray,
    v: np.ndarray, q_normed: np.ndarray, k_normed: np.ndarray, norms: np.ndarray, probs: np.ndarray,
    heads: np.ndarray, dx: np.ndarray, dweights: np.ndarray, dbiases: np.ndarray, dgains: np.ndarray,
) -> None:  # fmt: skip
    """The whole backward, writing every gradient."""
    n_batch, t_len, d = x.shape
    n_head = probs.shape[1]
    dh = d // n_head
    n_x = n_batch * t_len
    per_head = (n_batch, t_len, n_head, dh)
    head_rows = (n_x * n_head, dh)
    dheads = np.empty_like(q)
    linear_grads_kernel(
        dout.reshape((n_x, d)), heads.reshape((n_x, d)), wo, dheads.reshape((n_x, d)), dweights[3], dbiases[3]
    )
    dq_normed, dk_normed, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    attention_backward_kernel(
        dheads.reshape(per_head), q_normed.reshape(per_head), k_normed.reshape(per_head), v.reshape(per_head),
        probs, dq_normed.reshape(per_head), dk_normed.reshape(per_head), dv.reshape(per_head),
    )  # fmt: skip
    dq, dk = np.empty_like(q), np.empty_like(k)
    _l2_heads_backward_kernel(
        dq_normed.reshape(head_rows), q.reshape(head_rows), q_gain, q_factor, norms[0], dq.reshape(head_rows), dgains[0]
    )
    _l2_heads_backward_kernel(
        dk_normed.reshape(head_rows), k.reshape(head_rows), k_gain, k_factor, norms[1], dk.reshape(head_rows), dgains[1]
    )
    x_rows, dx_rows = x.reshape((n_x, d)), dx.reshape((n_x, d))
    by_k, by_v = np.empty_like(dx_rows), np.empty_like(dx_rows)
    for step in range(3):  # one call site of the product's gradients
        if step == 0:
            dp, weight, into = dq, wq, dx_rows
        elif step == 1:
            dp, weight, into = dk, wk, by_k
        else:
            dp, weight, into = dv, wv, by_v
        linear_grads_kernel(dp.reshape((n_x, d)), x_rows, weight, into, dweights[step], dbiases[step])
    for r in range(n_x):  # (dq Wq^T + dk Wk^T) + dv Wv^T, as the NumPy twin sums them
        for j in range(d):
            dx_rows[r, j] = (dx_rows[r, j] + by_k[r, j]) + by_v[r, j]


def _l2_heads_attention_forward_loop(
    x: np.ndarray, wq: np.ndarray, bq: np.ndarray, wk: np.ndarray, bk: np.ndarray, wv: np.ndarray, bv: np.ndarray,
    wo: np.ndarray, bo: np.ndarray, q_gain: np.ndarray, k_gain: np.ndarray, q_factor: float, k_factor: float,
    n_heads: int, causal: bool, tiny: float,
) -> Arrays:  # fmt: skip
    """Loop twin of :func:`l2_heads_attention_forward_reference` (allocates, runs the kernel)."""
    dtype, (n_batch, t_len, _) = x.dtype, x.shape
    q, k, v, q_normed, k_normed, heads, out = (np.empty(x.shape, dtype) for _ in range(7))
    norms = np.empty((2, n_batch * t_len * n_heads), dtype)
    probs = np.zeros((n_batch, n_heads, t_len, t_len), dtype)
    _l2_heads_attention_forward_kernel(
        x, wq, bq, wk, bk, wv, bv, wo, bo, q_gain, k_gain, q_factor, k_factor, causal, tiny, q, k, v, q_normed,
        k_normed, norms, probs, heads, out,
    )  # fmt: skip
    return out, q, k, v, q_normed, k_normed, norms, probs, heads


def _l2_heads_attention_backward_loop(
    dout: np.ndarray, x: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, wo: np.ndarray,
    q_gain: np.ndarray, k_gain: np.ndarray, q_factor: float, k_factor: float, q: np.ndarray, k: np.ndarray,
    v: np.ndarray, q_normed: np.ndarray, k_normed: np.ndarray, norms: np.ndarray, probs: np.ndarray,
    heads: np.ndarray, tiny: float,
) -> Arrays:  # fmt: skip
    """Loop twin of :func:`l2_heads_attention_backward_reference` (allocates, runs the kernel)."""
    dtype, d = x.dtype, x.shape[2]
    dx, dweights, dbiases = np.empty(x.shape, dtype), np.empty((4, d, d), dtype), np.empty((4, d), dtype)
    dgains = np.empty((2, d), dtype)
    _l2_heads_attention_backward_kernel(
        dout, x, wq, wk, wv, wo, q_gain, k_gain, q_factor, k_factor, q, k, v, q_normed, k_normed, norms, probs,
        heads, dx, dweights, dbiases, dgains,
    )  # fmt: skip
    return dx, dweights, dbiases, dgains


# The attention sublayer kernels' limits: the same products and loops, and the head norms' pass.
L2_HEADS_ATTENTION_FORWARD = Twin(
    "l2_heads_attention_forward",
    reference=l2_heads_attention_forward_reference,
    loop=_l2_heads_attention_forward_loop,
    loop_pays_up_to=LOOP_PAYS_UP_TO,
)
L2_HEADS_ATTENTION_BACKWARD = Twin(
    "l2_heads_attention_backward",
    reference=l2_heads_attention_backward_reference,
    loop=_l2_heads_attention_backward_loop,
    loop_pays_up_to=LOOP_PAYS_UP_TO,
)
TINY = {np.dtype(dtype): float(np.finfo(dtype).tiny) for dtype in (np.float32, np.float64)}


def l2_heads_attention_forward(
    x: np.ndarray, wq: np.ndarray, bq: np.ndarray, wk: np.ndarray, bk: np.ndarray, wv: np.ndarray, bv: np.ndarray,
    wo: np.ndarray, bo: np.ndarray, q_gain: np.ndarray, k_gain: np.ndarray, q_factor: float, k_factor: float,
    n_heads: int, causal: bool,
) -> Arrays:  # fmt: skip
    """The forward of ``x`` (B, T, d), the gains ``q_gain`` and ``k_gain`` (d,) used times the
    constants ``q_factor`` and ``k_factor``; returns ``(out, q, k, v, q_normed, k_normed,
    norms, probs, heads)``. See :func:`l2_heads_attention_forward_reference`."""
    arrays = float_arrays(x, wq, bq, wk, bk, wv, bv, wo, bo, q_gain, k_gain)
    x, wq, bq, wk, bk, wv, bv, wo, bo, q_gain, k_gain = arrays
    d = x.shape[-1] if x.ndim == 3 else 0
    square, line = (d, d), (d,)
    check_fit(
        d > 0
        and type(n_heads) is int
        and n_heads >= 1
        and d % n_heads == 0
        and wq.shape == wk.shape == wv.shape == wo.shape == square
        and bq.shape == bk.shape == bv.shape == bo.shape == q_gain.shape == k_gain.shape == line,
        *("x", x, "wq", wq, "bq", bq, "wk", wk, "bk", bk, "wv", wv, "bv", bv, "wo", wo, "bo", bo),
        *("q_gain", q_gain, "k_gain", k_gain),
    )
    work = attention_sublayer_work(x.shape[0], x.shape[1], x.shape[1], d)
    factors = (x.dtype.type(q_factor), x.dtype.type(k_factor))  # as a Python number in a product
    return L2_HEADS_ATTENTION_FORWARD.pick(*work)(*arrays, *factors, n_heads, bool(causal), TINY[x.dtype])


def l2_heads_attention_backward(dout: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP at ``dout``; ``residuals`` are ``(x, wq, wk, wv, wo, q_gain, k_gain, q_factor,
    k_factor)`` as the forward took them, then all it returned after ``out``, unchanged.
    Returns ``(dx, dweights, dbiases, dgains)`` (see :func:`l2_heads_attention_backward_reference`)."""
    x = residuals[0]
    dout = cotangent(dout, x.dtype, x.shape)
    work = attention_sublayer_work(x.shape[0], x.shape[1], x.shape[1], x.shape[2])
    return L2_HEADS_ATTENTION_BACKWARD.pick(*work)(dout, *residuals, TINY[x.dtype])
