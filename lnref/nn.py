"""The sublayers every scheme places, written as the Transformer papers write them.

Each function takes Tensors (or arrays) and a dict of this sublayer's parameters, and is built
only from primitives, so the tape differentiates it. Weights follow ``y = x @ W + b`` with W of
shape (d_in, d_out); a PyTorch ``nn.Linear`` stores W^T. Shapes: B batch, T query tokens, S key
tokens, d model width, H heads of Dh = d/H features, d_ff the FFN's hidden width.

These compositions are the definition. The fused primitives of ``lnref/autograd/fused.py``
compute the plain ones (no optional piece) as one record each, and the model takes them
where it can (``lnref/views.py``); tests hold the two together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lnref.autograd import Tensor, ops
from lnref.norms import NORM_KINDS

ATTENTION_PARAMS = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")
# Parameters (by the end of their name) whose gradient is zero by the structure of attention:
# a shift shared by every key of a query, q . b, shifts its softmax's inputs alike, which
# leaves the softmax unchanged. The key bias is one, unless a norm on k follows it; that norm's
# shift is one then. The checker labels a parameter so only when finite differences, too,
# find nothing above their noise.
ZERO_BY_STRUCTURE = {
    "bk": "adding q.bk to every score of a query leaves its softmax unchanged",
    "k_norm.beta": "the shift of a norm on the keys adds q.beta to every score of a query, as a key bias does",
}
FFN_PARAMS = ("w1", "b1", "w2", "b2")
# "gelu" is the exact x Phi(x), as PyTorch's nn.GELU() and F.gelu default to (BERT); "gelu_tanh"
# the tanh approximation (GPT-2). Golden files of format version 1 call the latter "gelu".
ACTIVATIONS: dict[str, Callable[[Any], Tensor]] = {
    "relu": ops.relu,
    "gelu": lambda h: ops.gelu(h, approximate="none"),
    "gelu_tanh": lambda h: ops.gelu(h, approximate="tanh"),
}

Params = Mapping[str, Any]
Piece = Callable[[Tensor], Tensor] | None


def attention(
    x: Any,
    p: Params,
    n_heads: int,
    *,
    causal: bool = False,
    memory: Any = None,
    q_norm: Piece = None,
    k_norm: Piece = None,
    v_norm: Piece = None,
    head_scale: Any = None,
    heads_norm: Piece = None,
    linear: Callable[..., Tensor] = ops.linear,
) -> Tensor:
    """Multi-head attention: the queries read ``x``, the keys and values read ``memory``
    (cross-attention) or ``x`` itself.

        Q = N_q(x Wq + bq),  K = N_k(s Wk + bk),  V = N_v(s Wv + bv)
        heads = MHA(Q, K, V)                         (softmax(Q_h K_h^T / sqrt(Dh) + M) V_h per head)
        A = N_heads(heads * head_scale) Wo + bo

    Every N and the per-head scale are optional (absent: the identity); a norm of Dh
    features is applied to each head on its own (the caller passes it wrapped by
    :func:`per_head`).
    """
    source = x if memory is None else memory
    q = linear(x, p["wq"], p["bq"])  # (B, T, d)
    k = linear(source, p["wk"], p["bk"])  # (B, S, d)
    v = linear(source, p["wv"], p["bv"])  # (B, S, d)
    if q_norm is not None:
        q = q_norm(q)
    if k_norm is not None:
        k = k_norm(k)
    if v_norm is not None:
        v = v_norm(v)
    heads = ops.multi_head_attention(q, k, v, n_heads=n_heads, causal=causal)  # (B, T, d)
    if head_scale is not None:
        heads = per_head(heads, n_heads, lambda h: h * ops.reshape(head_scale, shape=(n_heads, 1)))
    if heads_norm is not None:
        heads = heads_norm(heads)
    return linear(heads, p["wo"], p["bo"])  # (B, T, d)


def ffn(
    x: Any,
    p: Params,
    activation: str = "relu",
    *,
    activate: Callable[[Tensor], Tensor] | None = None,
    hidden_norm: Piece = None,
    hidden_scale: Any = None,
    linear: Callable[..., Tensor] = ops.linear,
) -> Tensor:
    """The feed-forward sublayer: F(x) = N_h(act(s * (x W1 + b1))) W2 + b2 (N_h and the
    per-unit scale s optional).

    ``activate`` replaces the named activation (the gradient checker freezes ReLU's on/off
    pattern this way).
    """
    hidden = linear(x, p["w1"], p["b1"])  # (B, T, d_ff)
    if hidden_scale is not None:
        hidden = hidden * hidden_scale
    acted = (activate or ACTIVATIONS[activation])(hidden)  # (B, T, d_ff)
    if hidden_norm is not None:
        acted = hidden_norm(acted)
    return linear(acted, p["w2"], p["b2"])  # (B, T, d)


def norm(x: Any, p: Params, kind: str, eps: float) -> Tensor:
    """The norm of kind ``kind`` (``lnref.norms``) over the last axis."""
    return NORM_KINDS[kind].apply(x, p, eps)


def per_head(x: Any, n_heads: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``fn`` applied to each head's Dh features of x (..., d) on their own."""
    shape = np.shape(x.value if isinstance(x, Tensor) else x)
    split = ops.reshape(x, shape=(*shape[:-1], n_heads, shape[-1] // n_heads))  # (..., H, Dh)
    return ops.reshape(fn(split), shape=shape)  # (..., d)


# ----- initialization -------------------------------------------------------------------


def xavier_normal(rng: np.random.Generator, d_in: int, d_out: int, dtype: np.dtype) -> np.ndarray:
    """N(0, 2 / (d_in + d_out)): the Xavier-Gaussian init the gradient theorems assume."""
    return (rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / (d_in + d_out))).astype(dtype)


def init_attention(rng: np.random.Generator, d_model: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    params = {}
    for proj in "qkvo":
        params[f"w{proj}"] = xavier_normal(rng, d_model, d_model, dtype)
        params[f"b{proj}"] = np.zeros(d_model, dtype)
    return params


def init_ffn(rng: np.random.Generator, d_model: int, d_ff: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    return {
        "w1": xavier_normal(rng, d_model, d_ff, dtype),
        "b1": np.zeros(d_ff, dtype),
        "w2": xavier_normal(rng, d_ff, d_model, dtype),
        "b2": np.zeros(d_model, dtype),
    }


def init_norm(kind: str, width: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    return NORM_KINDS[kind].init(width, dtype)
