"""Model settings and inputs shared by the claims.

Two settings recur:

    "xiong"   the theory setting of Xiong et al. 2020, Sec. 3.3: one head, d_ff = d, and
              W^Q = W^K = 0 so that attention is uniform; Xavier N(0, 1/d) for d x d weights
              (lnref's Xavier normal N(0, 2/(d_in + d_out)) is exactly that when d_ff = d).
    "lnref"   lnref's default architecture: four heads, d_ff = 4d, Xavier init everywhere.

Loss. lnref's loss is sum(y * dy). The theorems assume a loss whose gradient with respect to
each token's output is bounded; ``bounded_cotangent`` gives each token a unit-norm dy_i,
divided by the number of tokens (the 1/n of Xiong's averaged loss).
"""

from __future__ import annotations

import numpy as np

from lnref.claims.trace import uniform_attention

SETTINGS = ("xiong", "lnref")


def ffn_gain(d_model, d_ff):
    """c = E||FFN(u)||^2 / ||u||^2 for one ReLU FFN at lnref's init (zero biases, Xavier
    normal W1 of variance 2/(d + d_ff) and W2 likewise):

        c = (d_ff / 2) * d * s1 * s2,   s1 = s2 = 2/(d + d_ff)   =>   c = 2 d d_ff / (d + d_ff)^2

    1/2 for d_ff = d (Xiong's 3/2 = 1 + 1/2), 8/25 for d_ff = 4d. The same c is the expected
    squared gain of the FFN's Jacobian transpose (proofs/xiong-lemma2-post.md)."""
    return 2.0 * d_model * d_ff / (d_model + d_ff) ** 2


def build(scheme, n_layers, seed, d_model, setting="xiong", **options):
    """A model of ``scheme`` in one of the two settings (see the module docstring)."""
    from lnref.building import build as build_model

    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    if setting == "xiong":
        model = build_model(scheme, n_layers, d_model=d_model, n_heads=1, d_ff=d_model, seed=seed, **options)
        return uniform_attention(model)
    return build_model(scheme, n_layers, d_model=d_model, n_heads=4, d_ff=4 * d_model, seed=seed, **options)


def setting_ffn_gain(setting, d_model):
    return ffn_gain(d_model, d_model if setting == "xiong" else 4 * d_model)


def bounded_cotangent(dy):
    """Each token's cotangent scaled to unit norm, then divided by the number of tokens."""
    dy = np.asarray(dy, dtype=np.float64)
    tokens = dy.shape[0] * dy.shape[1]
    return dy / np.linalg.norm(dy, axis=-1, keepdims=True) / tokens


def coherent_memory(memory):
    """A memory whose positions all hold the same vector (the first one of each sequence),
    rescaled to squared norm d: what a collapsed encoder output looks like at init."""
    first = memory[:, :1, :]
    first = first / np.linalg.norm(first, axis=-1, keepdims=True) * np.sqrt(memory.shape[-1])
    return np.broadcast_to(first, memory.shape).copy()


def loss_from(model, params, state, start, dy, memory=None, frozen=None):
    """sum(y * dy) of the model run from ``state`` entering layer ``start`` (no tape), with the
    values ``frozen`` holds (a :class:`lnref.views.Freezer`) held."""
    run = model.run(params, memory, freeze=None if frozen is None else frozen.hold())
    y, _ = model.forward(run, state=state, start=start)
    return float(np.sum(y.value * dy))


def progress_line(progress, message):
    if progress is not None:
        progress(message)
