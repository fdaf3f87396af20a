"""The sublayers every scheme places: multi-head attention, the FFN and the norms.

Each function takes Tensors (or arrays) and a dict of this sublayer's parameters, and is
built only from primitives, so the tape differentiates it. Weights follow ``y = x @ W + b``
with W of shape (d_in, d_out); a PyTorch ``nn.Linear`` stores W^T.
"""

from __future__ import annotations

import numpy as np

from lnref.autograd import ops

ATTENTION_PARAMS = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")
FFN_PARAMS = ("w1", "b1", "w2", "b2")


def attention(x, p, n_heads, causal=False, memory=None):
    """softmax(Q K^T / sqrt(d_h) + M) V over heads, then the output projection:

        Q = x Wq + bq,  K = s Wk + bk,  V = s Wv + bv,  A = concat_h(heads) Wo + bo

    with s = ``memory`` (cross-attention) or ``x``; one tape record (``ops.attention_sublayer``).
    """
    weights = [p[name] for name in ATTENTION_PARAMS]
    return ops.attention_sublayer(x, memory, *weights, n_heads=n_heads, causal=causal)


def ffn(x, p, activation="relu", relu_mask=None):
    """W2 act(W1 x + b1) + b2, one tape record (``ops.feed_forward``).

    ``relu_mask`` replaces ReLU by multiplication with a fixed 0/1 pattern: the gradient
    checker evaluates finite differences on the smooth piece that contains the point,
    where the function and its gradient are those of the real network.
    """
    return ops.feed_forward(x, p["w1"], p["b1"], p["w2"], p["b2"], activation=activation, relu_mask=relu_mask)


def norm(x, p, kind, eps):
    """LayerNorm (gamma, beta) or RMSNorm (gamma) over the last axis."""
    if kind == "rmsnorm":
        return ops.rms_norm(x, p["gamma"], eps=eps)
    return ops.layer_norm(x, p["gamma"], p["beta"], eps=eps)


# ----- initialization -------------------------------------------------------------------

def xavier_normal(rng, d_in, d_out, dtype):
    """N(0, 2 / (d_in + d_out)): the Xavier-Gaussian init the gradient theorems assume."""
    return (rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / (d_in + d_out))).astype(dtype)


def init_attention(rng, d_model, dtype):
    params = {}
    for proj in "qkvo":
        params[f"w{proj}"] = xavier_normal(rng, d_model, d_model, dtype)
        params[f"b{proj}"] = np.zeros(d_model, dtype)
    return params


def init_ffn(rng, d_model, d_ff, dtype):
    return {
        "w1": xavier_normal(rng, d_model, d_ff, dtype),
        "b1": np.zeros(d_ff, dtype),
        "w2": xavier_normal(rng, d_ff, d_model, dtype),
        "b2": np.zeros(d_model, dtype),
    }


def init_norm(kind, d_model, dtype):
    params = {"gamma": np.ones(d_model, dtype)}
    if kind == "layernorm":
        params["beta"] = np.zeros(d_model, dtype)
    return params
