"""The attention sublayer (projections, attention, output projection) as one kernel each way.

The model's attention sublayer (``ops.attention_sublayer``; its docstring states the forward
and the VJP) is a dozen small matrix products around the attention kernels. At the model's
small sizes each NumPy call costs more than its arithmetic, so up to a size one compiled call
runs the whole forward and one the whole backward; they reuse the attention loop kernels for
the softmax attention itself. Bigger sublayers take the NumPy/BLAS composition
:func:`attention_sublayer_forward_reference`, the readable statement of the computation that
the loops are tested against.

Arguments: ``x`` (B, T, d), ``memory`` (B, S, d) or None for self-attention (the keys and
values then read ``x``), every W (d, d), every b (d,). The residuals the backward needs are
the projections ``q``, ``k``, ``v``, the probabilities ``probs`` (B, H, T, S) and the merged
heads ``heads`` (B, T, d), the input of the output projection.
"""

from __future__ import annotations

import numpy as np

# The NumPy twins call the attention kernels by the package's public names, as ``ops`` calls
# kernels: an attention kernel put in a public name's place (a test's broken backward) is the
# one they run.
import lnref.autograd.kernels as kernels
from lnref.autograd.kernels.attention import (
    attention_backward_kernel,
    attention_forward_kernel,
    check_multi_head_shapes,
)
from lnref.autograd.kernels.checks import cotangent, float_arrays, plain_arrays
from lnref.autograd.kernels.linear import linear_grads_kernel, matmul_kernel
from lnref.autograd.kernels.seam import Twin, njit


def _project(a: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ w + b over the last axis of ``a``, as one 2-D product."""
    rows = a.reshape(-1, a.shape[-1]) @ w
    rows += b
    return rows.reshape(*a.shape[:-1], w.shape[1])


def attention_sublayer_forward_reference(
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
    n_heads: int,
    causal: bool,
) -> tuple[np.ndarray, ...]:
    """The attention sublayer's forward as NumPy/BLAS products around
    :func:`multi_head_attention_forward`; returns ``(out, q, k, v, probs, heads)``::

        q = x Wq + bq,   k = s Wk + bk,   v = s Wv + bv      (s = memory, or x)
        heads, probs = multi-head attention of q, k, v
        out = heads Wo + bo
    """
    source = x if memory is None else memory
    q, k, v = _project(x, wq, bq), _project(source, wk, bk), _project(source, wv, bv)
    heads, probs = kernels.multi_head_attention_forward(q, k, v, n_heads, causal)
    return _project(heads, wo, bo), q, k, v, probs, heads


def attention_sublayer_backward_reference(
    dout: np.ndarray,
    x: np.ndarray,
    memory: np.ndarray | None,
    wq: np.ndarray,
    wk: np.ndarray,
    wv: np.ndarray,
    wo: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    probs: np.ndarray,
    heads: np.ndarray,
) -> tuple[np.ndarray | None, ...]:
    """The attention sublayer's VJP as NumPy/BLAS products around
    :func:`multi_head_attention_backward`; returns ``(dx, dmemory, dwq, dbq, dwk, dbk, dwv,
    dbv, dwo, dbo)`` with ``dmemory`` None for self-attention::

        dWo = heads^T dout,  dbo = row sums of dout,  dheads = dout Wo^T
        dq, dk, dv = the attention backward at dheads
        dWq = x^T dq,  dWk = s^T dk,  dWv = s^T dv,  db = row sums of dq, dk, dv
        dx = dq Wq^T (+ dk Wk^T + dv Wv^T for self-attention),  dmemory = dk Wk^T + dv Wv^T
    """
    d = x.shape[-1]
    source = x if memory is None else memory
    dout_rows, heads_rows = dout.reshape(-1, d), heads.reshape(-1, d)
    dheads = (dout_rows @ wo.T).reshape(q.shape)
    dq, dk, dv = (g.reshape(-1, d) for g in kernels.multi_head_attention_backward(dheads, q, k, v, probs))
    x_rows, source_rows = x.reshape(-1, d), source.reshape(-1, d)
    dsource = dk @ wk.T
    dsource += dv @ wv.T
    dx = dq @ wq.T
    if memory is None:
        dx += dsource
        dmemory = None
    else:
        dmemory = dsource.reshape(memory.shape)
    return (
        dx.reshape(x.shape),
        dmemory,
        x_rows.T @ dq,
        dq.sum(axis=0),
        source_rows.T @ dk,
        dk.sum(axis=0),
        source_rows.T @ dv,
        dv.sum(axis=0),
        heads_rows.T @ dout_rows,
        dout_rows.sum(axis=0),
    )


@njit(cache=True)
def _attention_sublayer_forward_kernel(
    x: np.ndarray,
    source: np.ndarray,
    wq: np.ndarray,
    bq: np.ndarray,
    wk: np.ndarray,
    bk: np.ndarray,
    wv: np.ndarray,
    bv: np.ndarray,
    wo: np.ndarray,
    bo: np.ndarray,
    causal: bool,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    probs: np.ndarray,
    heads: np.ndarray,
    out: np.ndarray,
) -> None:
    """The whole forward of :func:`_attention_sublayer_forward_loop`, writing ``q``, ``k``,
    ``v``, the nonzero entries of the zeroed ``probs``, ``heads`` and ``out``.

    ``source`` is ``x`` itself for self-attention. The attention between the projections
    is :func:`~lnref.autograd.kernels.attention.attention_forward_kernel` on (B, T, H, Dh) views
    of the projections.
    """
    n_batch, t_len, d = x.shape
    s_len = source.shape[1]
    n_head = probs.shape[1]
    n_x, n_s = n_batch * t_len, n_batch * s_len
    x_rows = x.reshape((n_x, d))
    source_rows = source.reshape((n_s, d))
    per_head = (n_head, d // n_head)
    for step in range(4):  # one call site of the projection (see feed_forward.py's docstring)
        if step == 0:
            rows, weight, bias, dest = x_rows, wq, bq, q.reshape((n_x, d))
        elif step == 1:
            rows, weight, bias, dest = source_rows, wk, bk, k.reshape((n_s, d))
        elif step == 2:
            rows, weight, bias, dest = source_rows, wv, bv, v.reshape((n_s, d))
        else:
            attention_forward_kernel(
                q.reshape((n_batch, t_len) + per_head),
                k.reshape((n_batch, s_len) + per_head),
                v.reshape((n_batch, s_len) + per_head),
                causal,
                heads.reshape((n_batch, t_len) + per_head),
                probs,
            )
            rows, weight, bias, dest = heads.reshape((n_x, d)), wo, bo, out.reshape((n_x, d))
        matmul_kernel(rows, weight, bias, dest)


@njit(cache=True)
def _attention_sublayer_backward_kernel(
    dout: np.ndarray,
    x: np.ndarray,
    source: np.ndarray,
    wq: np.ndarray,
    wk: np.ndarray,
    wv: np.ndarray,
    wo: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    probs: np.ndarray,
    heads: np.ndarray,
    cross: bool,
    dx: np.ndarray,
    dsource: np.ndarray,
    dw: np.ndarray,
    db: np.ndarray,
) -> None:
    """The whole backward of :func:`_attention_sublayer_backward_loop`, writing every
    gradient: ``dw`` (4, d, d) and ``db`` (4, d) hold those of the q, k, v and output
    projections in this order; ``dsource`` is written only for cross-attention
    (``cross``). For self-attention ``source`` is ``x`` and the key and value paths add
    into ``dx``.

    Each projection's gradients are :func:`~lnref.autograd.kernels.linear.linear_grads_kernel`;
    the attention backward between them is
    :func:`~lnref.autograd.kernels.attention.attention_backward_kernel`.
    """
    n_batch, t_len, d = x.shape
    s_len = source.shape[1]
    n_head = probs.shape[1]
    n_x, n_s = n_batch * t_len, n_batch * s_len
    per_head = (n_head, d // n_head)
    dheads = np.empty_like(q)
    linear_grads_kernel(dout.reshape((n_x, d)), heads.reshape((n_x, d)), wo, dheads.reshape((n_x, d)), dw[3], db[3])
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    attention_backward_kernel(
        dheads.reshape((n_batch, t_len) + per_head),
        q.reshape((n_batch, t_len) + per_head),
        k.reshape((n_batch, s_len) + per_head),
        v.reshape((n_batch, s_len) + per_head),
        probs,
        dq.reshape((n_batch, t_len) + per_head),
        dk.reshape((n_batch, s_len) + per_head),
        dv.reshape((n_batch, s_len) + per_head),
    )
    x_rows, source_rows = x.reshape((n_x, d)), source.reshape((n_s, d))
    dx_rows = dx.reshape((n_x, d))
    dsource_by_k, dsource_by_v = np.empty((n_s, d)), np.empty((n_s, d))
    linear_grads_kernel(dq.reshape((n_x, d)), x_rows, wq, dx_rows, dw[0], db[0])
    linear_grads_kernel(dk.reshape((n_s, d)), source_rows, wk, dsource_by_k, dw[1], db[1])
    linear_grads_kernel(dv.reshape((n_s, d)), source_rows, wv, dsource_by_v, dw[2], db[2])
    # (dq Wq^T + dk Wk^T) + dv Wv^T for self-attention, as the reference sums them.
    dsource_rows = dsource.reshape((n_s, d)) if cross else dx_rows
    for r in range(n_s):
        for j in range(d):
            if cross:
                dsource_rows[r, j] = dsource_by_k[r, j] + dsource_by_v[r, j]
            else:
                dsource_rows[r, j] = (dsource_rows[r, j] + dsource_by_k[r, j]) + dsource_by_v[r, j]


def _attention_sublayer_forward_loop(
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
    n_heads: int,
    causal: bool,
) -> tuple[np.ndarray, ...]:
    """Loop twin of :func:`attention_sublayer_forward_reference` (allocates, then runs
    :func:`_attention_sublayer_forward_kernel`)."""
    source = x if memory is None else memory
    batch, t_len, _ = x.shape
    dtype = x.dtype
    q, heads, out = np.empty(x.shape, dtype), np.empty(x.shape, dtype), np.empty(x.shape, dtype)
    k, v = np.empty(source.shape, dtype), np.empty(source.shape, dtype)
    probs = np.zeros((batch, n_heads, t_len, source.shape[1]), dtype)
    _attention_sublayer_forward_kernel(x, source, wq, bq, wk, bk, wv, bv, wo, bo, causal, q, k, v, probs, heads, out)
    return out, q, k, v, probs, heads


def _attention_sublayer_backward_loop(
    dout: np.ndarray,
    x: np.ndarray,
    memory: np.ndarray | None,
    wq: np.ndarray,
    wk: np.ndarray,
    wv: np.ndarray,
    wo: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    probs: np.ndarray,
    heads: np.ndarray,
) -> tuple[np.ndarray | None, ...]:
    """Loop twin of :func:`attention_sublayer_backward_reference` (allocates, then runs
    :func:`_attention_sublayer_backward_kernel`)."""
    cross = memory is not None
    source = x if memory is None else memory
    dtype, d = x.dtype, x.shape[2]
    dx = np.empty(x.shape, dtype)
    dsource = np.empty(source.shape, dtype) if cross else dx  # never written for self-attention
    # The four weight gradients (q, k, v, o) in one array, the four bias gradients in another:
    # two allocations instead of eight, and fewer arguments for the compiled call.
    dw, db = np.empty((4, d, d), dtype), np.empty((4, d), dtype)
    _attention_sublayer_backward_kernel(
        dout, x, source, wq, wk, wv, wo, q, k, v, probs, heads, cross, dx, dsource, dw, db
    )
    return dx, dsource if cross else None, dw[0], db[0], dw[1], db[1], dw[2], db[2], dw[3], db[3]


def attention_sublayer_work(batch: int, t_len: int, s_len: int, d_model: int) -> tuple[int, int]:
    """The sublayer's two measures of work: rows * d_model^2, the multiply-adds of one
    projection, and B T S d_model, those of one attention product."""
    return batch * max(t_len, s_len) * d_model * d_model, batch * t_len * s_len * d_model


# One compiled call for the whole sublayer beats the composition (forward and backward
# together) while the dozen NumPy calls it saves cost more than the products' arithmetic: for
# the small model's sublayer and the gradient checker's batches of it, not for the medium
# model's. ``benchmarks/bench_ops.py`` times both twins on either side of the limits.
LOOP_PAYS_UP_TO: tuple[int, int] = (64 * 32 * 32, 32 * 32 * 32)
ATTENTION_SUBLAYER_FORWARD: Twin = Twin(
    "attention_sublayer_forward",
    reference=attention_sublayer_forward_reference,
    loop=_attention_sublayer_forward_loop,
    loop_pays_up_to=LOOP_PAYS_UP_TO,
)
ATTENTION_SUBLAYER_BACKWARD: Twin = Twin(
    "attention_sublayer_backward",
    reference=attention_sublayer_backward_reference,
    loop=_attention_sublayer_backward_loop,
    loop_pays_up_to=LOOP_PAYS_UP_TO,
)


def check_attention_sublayer_shapes(
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
    n_heads: int,
    causal: bool,
) -> None:
    """x is (B, T, d), memory None or (B, S, d), every W (d, d), every b (d,), and ``n_heads``
    splits d (see :func:`~lnref.autograd.kernels.attention.check_multi_head_shapes`)."""
    if x.ndim == 3:
        d = x.shape[2]
        if (
            wq.shape == wk.shape == wv.shape == wo.shape == (d, d)
            and bq.shape == bk.shape == bv.shape == bo.shape == (d,)
            and memory is None
            and type(n_heads) is int
            and n_heads >= 1
            and d % n_heads == 0
        ):
            return  # the common case, self-attention, in one expression
    else:
        raise ValueError(f"x of shape {x.shape} is not (batch, seq, d_model)")
    weights, biases = (wq, wk, wv, wo), (bq, bk, bv, bo)
    if any(w.shape != (d, d) for w in weights) or any(b.shape != (d,) for b in biases):
        raise ValueError(
            f"weights of shapes {', '.join(str(w.shape) for w in weights)} and biases of shapes "
            f"{', '.join(str(b.shape) for b in biases)} do not fit d_model {d}"
        )
    if memory is not None and (memory.ndim != 3 or memory.shape[0] != x.shape[0] or memory.shape[2] != d):
        raise ValueError(f"memory of shape {memory.shape} does not fit x of shape {x.shape}")
    source = x if memory is None else memory
    check_multi_head_shapes(x, source, source, n_heads, causal)


def attention_sublayer_forward(
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
    n_heads: int,
    causal: bool,
) -> tuple[np.ndarray, ...]:
    """The attention sublayer's forward; returns ``(out, q, k, v, probs, heads)``.

    ``memory`` is None for self-attention. See :func:`attention_sublayer_forward_reference`
    and ``ops.attention_sublayer``.
    """
    if memory is None:
        x, wq, bq, wk, bk, wv, bv, wo, bo = float_arrays(x, wq, bq, wk, bk, wv, bv, wo, bo)
        s_len = x.shape[1] if x.ndim == 3 else 0
    else:
        x, wq, bq, wk, bk, wv, bv, wo, bo, memory = float_arrays(x, wq, bq, wk, bk, wv, bv, wo, bo, memory)
        s_len = memory.shape[1] if memory.ndim == 3 else 0
    causal = bool(causal)
    check_attention_sublayer_shapes(x, memory, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal)
    forward = ATTENTION_SUBLAYER_FORWARD.pick(*attention_sublayer_work(x.shape[0], x.shape[1], s_len, x.shape[2]))
    return forward(x, memory, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal)


def attention_sublayer_backward(
    dout: np.ndarray,
    x: np.ndarray,
    memory: np.ndarray | None,
    wq: np.ndarray,
    wk: np.ndarray,
    wv: np.ndarray,
    wo: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    probs: np.ndarray,
    heads: np.ndarray,
    *,
    residuals_checked: bool = False,
) -> tuple[np.ndarray | None, ...]:
    """The attention sublayer's VJP; returns ``(dx, dmemory, dwq, dbq, dwk, dbk, dwv, dbv,
    dwo, dbo)``, ``dmemory`` None for self-attention. The arguments after ``dout`` are the
    forward's inputs and outputs (``residuals_checked``: unchanged, see
    :func:`~lnref.autograd.kernels.checks.cotangent`).
    See :func:`attention_sublayer_backward_reference`."""
    if residuals_checked and plain_arrays(x, wq, wk, wv, wo) and (memory is None or plain_arrays(memory)):
        dout = cotangent(dout, x.dtype, x.shape)
    else:
        if memory is None:
            dout, x, wq, wk, wv, wo, q, k, v, probs, heads = float_arrays(
                dout, x, wq, wk, wv, wo, q, k, v, probs, heads
            )
        else:
            dout, x, wq, wk, wv, wo, q, k, v, probs, heads, memory = float_arrays(
                dout, x, wq, wk, wv, wo, q, k, v, probs, heads, memory
            )
        n_heads = probs.shape[1] if probs.ndim == 4 else 0
        if not (
            dout.shape == x.shape == q.shape == heads.shape
            and x.ndim == 3
            and n_heads
            and k.shape == v.shape == (x.shape if memory is None else memory.shape)
            and probs.shape == (x.shape[0], n_heads, x.shape[1], k.shape[1])
            and wq.shape == wk.shape == wv.shape == wo.shape == (x.shape[2], x.shape[2])
            and x.shape[2] % n_heads == 0
        ):
            raise ValueError(
                f"dout {dout.shape}, x {x.shape}, q {q.shape}, k {k.shape}, v {v.shape}, probs "
                f"{probs.shape}, heads {heads.shape} and weights {wq.shape} do not fit one "
                f"attention sublayer"
            )
    backward = ATTENTION_SUBLAYER_BACKWARD.pick(
        *attention_sublayer_work(x.shape[0], x.shape[1], k.shape[1], x.shape[2])
    )
    return backward(dout, x, memory, wq, wk, wv, wo, q, k, v, probs, heads)
