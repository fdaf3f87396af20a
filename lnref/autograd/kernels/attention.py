"""Scaled dot-product attention: twins and public kernels.

Two layouts meet here. The readable NumPy twins take the head-major layout (B, H, T, Dh) of
the textbook formulas. The model's projections come out token-major, (B, T, d) = (B, T, H, Dh)
after a free reshape, so the compiled paths work on that layout directly and never copy heads
in or out:

* the loop twins (this module): explicit loops, one (b, h) head at a time; the fastest for
  small heads, where a matrix product's call costs more than its arithmetic;
* the blocked path (``attention_blocked.py``): for big heads, the four products as batched
  BLAS products over strided views, the softmax and its backward in place by two small loops.

One twin per direction, on the token-major layout, serves both public faces:
:func:`attention_forward` takes (B, H, T, Dh) arrays and copies them token-major,
:func:`multi_head_attention_forward` takes the model's (B, T, d) projections and splits them
into heads by a free reshape.
"""

from __future__ import annotations

import math

import numpy as np

from lnref.autograd.kernels.attention_blocked import attention_backward_blocked, attention_forward_blocked, heads_first
from lnref.autograd.kernels.checks import expect_ndim, float_arrays
from lnref.autograd.kernels.seam import Twin, njit
from lnref.autograd.kernels.softmax import softmax_prefix_inplace


def attention_forward_reference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Scaled dot-product attention; NumPy twin.

    ``q`` is (B, H, T, Dh), ``k`` and ``v`` are (B, H, S, Dh)::

        scores = q @ k^T / sqrt(Dh)                 (B, H, T, S)
        scores[..., t, s] = -inf  where s > t       (only if causal)
        probs  = softmax(scores, axis=-1)           (stable: row max subtracted)
        out    = probs @ v                          (B, H, T, Dh)

    With ``causal`` the diagonal ``s == t`` is always allowed, so no row is
    empty, and masked positions get ``exp(-inf) = 0``: their probability is
    exactly 0. Returns ``(out, probs)``; ``probs`` is kept for the backward.
    """
    dh = q.shape[-1]
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / math.sqrt(dh)
    if causal:
        t_len, s_len = scores.shape[-2:]
        masked = np.triu(np.ones((t_len, s_len), dtype=bool), k=1)  # s > t
        scores = np.where(masked, -np.inf, scores)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    out = np.matmul(probs, v)
    return out, probs


def attention_backward_reference(
    dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient of scaled dot-product attention; NumPy twin.

    ::

        dv      = probs^T @ dout
        dprobs  = dout @ v^T
        dscores = probs * (dprobs - rowsum(dprobs * probs))   (softmax backward)
        dq      = dscores @ k   / sqrt(Dh)
        dk      = dscores^T @ q / sqrt(Dh)

    Causally masked positions have ``probs`` exactly 0, so ``dscores`` is 0
    there and they contribute nothing to ``dq`` and ``dk``: no mask is needed.
    """
    dh = q.shape[-1]
    sqrt_dh = math.sqrt(dh)
    dv = np.matmul(np.swapaxes(probs, -1, -2), dout)
    dprobs = np.matmul(dout, np.swapaxes(v, -1, -2))
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))
    dq = np.matmul(dscores, k) / sqrt_dh
    dk = np.matmul(np.swapaxes(dscores, -1, -2), q) / sqrt_dh
    return dq, dk, dv


def _attention_forward_token_major_reference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`attention_forward_reference` on token-major (B, T, H, Dh) inputs."""
    out, probs = attention_forward_reference(heads_first(q), heads_first(k), heads_first(v), causal)
    return np.ascontiguousarray(heads_first(out)), probs


def _attention_backward_token_major_reference(
    dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray
) -> tuple[np.ndarray, ...]:
    """:func:`attention_backward_reference` on token-major (B, T, H, Dh) inputs."""
    grads = attention_backward_reference(heads_first(dout), heads_first(q), heads_first(k), heads_first(v), probs)
    return tuple(np.ascontiguousarray(heads_first(g)) for g in grads)


def _attention_forward_loop(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of :func:`attention_forward_reference`, token-major (allocates, then runs
    :func:`attention_forward_kernel`)."""
    out = np.empty_like(q)
    probs = np.zeros((q.shape[0], q.shape[2], q.shape[1], k.shape[1]), dtype=q.dtype)
    attention_forward_kernel(q, k, v, causal, out, probs)
    return out, probs


@njit(cache=True)
def attention_forward_kernel(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, out: np.ndarray, probs: np.ndarray
) -> None:
    """The loop of :func:`_attention_forward_loop` (and of the attention sublayer's kernel),
    writing ``out`` and the nonzero entries of the zeroed ``probs``.

    ``q`` is (B, T, H, Dh), ``k`` and ``v`` are (B, S, H, Dh); returns ``out``
    (B, T, H, Dh) and ``probs`` (B, H, T, S). One (b, h) head at a time. ``k``
    is transposed once per head so that every inner loop is an element-wise
    ``a[:] += c * b[:]`` over contiguous memory (which LLVM vectorizes without
    fastmath) instead of a dot-product reduction (which it may not reorder).
    Masked columns are not computed at all; their probability is stored as
    exactly 0.
    """
    n_batch, t_len, n_head, dh = q.shape
    s_len = k.shape[1]
    sqrt_dh = math.sqrt(dh)
    k_t = np.empty((dh, s_len))
    scores = np.empty(s_len)
    out_row = np.empty(dh)
    for b in range(n_batch):
        for h in range(n_head):
            for s in range(s_len):
                k_row = k[b, s, h]
                for c in range(dh):
                    k_t[c, s] = k_row[c]
            for t in range(t_len):
                q_row = q[b, t, h]
                s_end = min(t + 1, s_len) if causal else s_len
                for s in range(s_end):
                    scores[s] = 0.0
                for c in range(dh):
                    q_tc = q_row[c]
                    k_col = k_t[c]
                    for s in range(s_end):
                        scores[s] += q_tc * k_col[s]
                for s in range(s_end):
                    scores[s] = scores[s] / sqrt_dh
                softmax_prefix_inplace(scores, s_end)
                p_row = probs[b, h, t]
                for c in range(dh):
                    out_row[c] = 0.0
                for s in range(s_end):
                    p_row[s] = scores[s]
                    # Use the stored (rounded) probability, as probs @ v does.
                    p = p_row[s]
                    v_row = v[b, s, h]
                    for c in range(dh):
                        out_row[c] += p * v_row[c]
                o = out[b, t, h]
                for c in range(dh):
                    o[c] = out_row[c]


def _attention_backward_loop(
    dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loop twin of :func:`attention_backward_reference`, token-major (allocates, then runs
    :func:`attention_backward_kernel`)."""
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    attention_backward_kernel(dout, q, k, v, probs, dq, dk, dv)
    return dq, dk, dv


@njit(cache=True)
def attention_backward_kernel(
    dout: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    probs: np.ndarray,
    dq: np.ndarray,
    dk: np.ndarray,
    dv: np.ndarray,
) -> None:
    """The loop of :func:`_attention_backward_loop` (and of the attention sublayer's kernel),
    writing ``dq``, ``dk``, ``dv``.

    Layouts as in :func:`attention_forward_kernel`. Walks the query rows ``t``
    of one head once: each row produces ``dq[t]`` and adds its contributions
    to float64 accumulators for ``dk`` and ``dv``. ``v`` is transposed per head
    so ``dprobs`` is built with contiguous element-wise updates. Columns past
    the last nonzero probability of a row (the causal mask) are skipped: they
    would add exact zeros.
    """
    n_batch, t_len, n_head, dh = q.shape
    s_len = k.shape[1]
    sqrt_dh = math.sqrt(dh)
    v_t = np.empty((dh, s_len))
    dk_acc = np.empty((s_len, dh))
    dv_acc = np.empty((s_len, dh))
    dscores = np.empty(s_len)
    dq_row = np.empty(dh)
    for b in range(n_batch):
        for h in range(n_head):
            for s in range(s_len):
                v_row = v[b, s, h]
                for c in range(dh):
                    v_t[c, s] = v_row[c]
                    dk_acc[s, c] = 0.0
                    dv_acc[s, c] = 0.0
            for t in range(t_len):
                p_row = probs[b, h, t]
                dout_row = dout[b, t, h]
                q_row = q[b, t, h]
                s_end = s_len
                while s_end > 1 and p_row[s_end - 1] == 0.0:
                    s_end -= 1
                # dprobs[s] = dout[t] . v[s]
                for s in range(s_end):
                    dscores[s] = 0.0
                for c in range(dh):
                    g = dout_row[c]
                    v_col = v_t[c]
                    for s in range(s_end):
                        dscores[s] += g * v_col[s]
                row_dot = 0.0
                for s in range(s_end):
                    row_dot += dscores[s] * p_row[s]
                for c in range(dh):
                    dq_row[c] = 0.0
                for s in range(s_end):
                    p = p_row[s]
                    ds = p * (dscores[s] - row_dot)
                    k_row = k[b, s, h]
                    dk_row = dk_acc[s]
                    dv_row = dv_acc[s]
                    for c in range(dh):
                        dq_row[c] += ds * k_row[c]
                        dk_row[c] += ds * q_row[c]
                        dv_row[c] += p * dout_row[c]
                dq_t = dq[b, t, h]
                for c in range(dh):
                    dq_t[c] = dq_row[c] / sqrt_dh
            for s in range(s_len):
                dk_s = dk[b, s, h]
                dv_s = dv[b, s, h]
                for c in range(dh):
                    dk_s[c] = dk_acc[s, c] / sqrt_dh
                    dv_s[c] = dv_acc[s, c]


def attention_work(batch: int, heads: int, t_len: int, s_len: int, head_dim: int) -> int:
    """B H T S Dh, the multiply-adds of one of attention's four products."""
    return batch * heads * t_len * s_len * head_dim


# Up to a few thousand multiply-adds the loops win: the blocked path's dozen NumPy calls cost
# more than that much arithmetic, while the loops lose to BLAS once heads are not tiny.
# ``benchmarks/bench_ops.py`` times both paths on either side of the limit.
LOOP_PAYS_UP_TO = 8192
# The twins take the token-major layout, for both public faces.
ATTENTION_FORWARD = Twin(
    "attention_forward",
    reference=_attention_forward_token_major_reference,
    loop=_attention_forward_loop,
    blocked=attention_forward_blocked,
    loop_pays_up_to=LOOP_PAYS_UP_TO,
)
ATTENTION_BACKWARD = Twin(
    "attention_backward",
    reference=_attention_backward_token_major_reference,
    loop=_attention_backward_loop,
    blocked=attention_backward_blocked,
    loop_pays_up_to=LOOP_PAYS_UP_TO,
)


def _check_attention_shapes(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = False) -> None:
    for name, a in (("q", q), ("k", k), ("v", v)):
        expect_ndim(name, a, 4)
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"incompatible attention shapes q={q.shape} k={k.shape} v={v.shape}")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal attention needs T == S, got T={q.shape[2]} S={k.shape[2]}")


def _token_major(a: np.ndarray) -> np.ndarray:
    """(B, H, T, Dh) -> a contiguous (B, T, H, Dh) copy."""
    return np.ascontiguousarray(a.transpose(0, 2, 1, 3))


def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scaled dot-product attention; returns ``(out, probs)``.

    ``q`` (B, H, T, Dh), ``k``/``v`` (B, H, S, Dh);
    ``out = softmax(q k^T / sqrt(Dh) [masked s > t if causal]) @ v``.
    See :func:`attention_forward_reference`. (The model calls
    :func:`multi_head_attention_forward`, which takes the token-major layout.)
    """
    q, k, v = float_arrays(q, k, v)
    causal = bool(causal)
    _check_attention_shapes(q, k, v, causal)
    forward = ATTENTION_FORWARD.pick(attention_work(q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3]))
    out, probs = forward(_token_major(q), _token_major(k), _token_major(v), causal)
    return _token_major(out), probs  # (B, T, H, Dh) -> (B, H, T, Dh): the same swap


def attention_backward(
    dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Attention backward; returns ``(dq, dk, dv)``.

    ``dv = probs^T dout``; ``dprobs = dout v^T``; ``dscores = probs * (dprobs -
    rowsum(dprobs * probs))``; ``dq = dscores k / sqrt(Dh)``; ``dk = dscores^T
    q / sqrt(Dh)``. Masked positions have ``probs == 0`` exactly and need no
    special case. See :func:`attention_backward_reference`.
    """
    dout, q, k, v, probs = float_arrays(dout, q, k, v, probs)
    _check_attention_shapes(q, k, v)
    backward = ATTENTION_BACKWARD.pick(attention_work(q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3]))
    grads = backward(_token_major(dout), _token_major(q), _token_major(k), _token_major(v), probs)
    return tuple(_token_major(g) for g in grads)


def check_multi_head_shapes(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_heads: int, causal: bool = False) -> None:
    """q is (B, T, d), k and v (B, S, d), ``n_heads`` a positive int that splits d, and T == S
    for ``causal``."""
    if (
        q.ndim == 3
        and k.ndim == 3
        and k.shape == v.shape
        and k.shape[0] == q.shape[0]
        and k.shape[2] == q.shape[2]
        and type(n_heads) is int
        and n_heads >= 1
        and q.shape[2] % n_heads == 0
        and not (causal and q.shape[1] != k.shape[1])
    ):
        return  # the common case, in one expression
    for name, a in (("q", q), ("k", k), ("v", v)):
        expect_ndim(name, a, 3)
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"q={q.shape} k={k.shape} v={v.shape} do not fit (B, T, d), (B, S, d)")
    if isinstance(n_heads, bool) or not isinstance(n_heads, (int, np.integer)) or n_heads < 1 or q.shape[2] % n_heads:
        raise ValueError(f"d_model {q.shape[2]} does not split into {n_heads} heads")
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError(f"causal attention needs T == S, got T={q.shape[1]} S={k.shape[1]}")


def _split_heads(a: np.ndarray, n_heads: int) -> np.ndarray:
    """(B, T, d) -> a (B, T, H, d/H) view: head h owns features [h d/H, (h+1) d/H)."""
    return a.reshape(a.shape[0], a.shape[1], n_heads, a.shape[2] // n_heads)


def multi_head_attention_forward(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, n_heads: int, causal: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Attention of ``n_heads`` heads on the token-major layout; returns ``(out, probs)``.

    ``q`` (B, T, d), ``k``/``v`` (B, S, d); head h reads features
    [h d/H, (h+1) d/H) and writes the same features of ``out`` (B, T, d);
    ``probs`` is (B, H, T, S). The same formulas as :func:`attention_forward`
    with the heads split and merged by free reshapes instead of copies.
    """
    q, k, v = float_arrays(q, k, v)
    causal = bool(causal)
    check_multi_head_shapes(q, k, v, n_heads, causal)
    forward = ATTENTION_FORWARD.pick(attention_work(q.shape[0], n_heads, q.shape[1], k.shape[1], q.shape[2] // n_heads))
    out, probs = forward(_split_heads(q, n_heads), _split_heads(k, n_heads), _split_heads(v, n_heads), causal)
    return out.reshape(q.shape), probs


def multi_head_attention_backward(
    dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Backward of :func:`multi_head_attention_forward`; returns ``(dq, dk, dv)``,
    each in its input's (B, T, d) layout. The number of heads is ``probs.shape[1]``."""
    dout, q, k, v, probs = float_arrays(dout, q, k, v, probs)
    expect_ndim("probs", probs, 4)
    n_heads = int(probs.shape[1])
    check_multi_head_shapes(q, k, v, n_heads)
    if dout.shape != q.shape or probs.shape != (q.shape[0], n_heads, q.shape[1], k.shape[1]):
        raise ValueError(f"dout {dout.shape} and probs {probs.shape} do not fit q={q.shape} k={k.shape}")
    backward = ATTENTION_BACKWARD.pick(
        attention_work(q.shape[0], n_heads, q.shape[1], k.shape[1], q.shape[2] // n_heads)
    )
    grads = backward(*(_split_heads(a, n_heads) for a in (dout, q, k, v)), probs)
    return tuple(g.reshape(a.shape) for g, a in zip(grads, (q, k, v)))
