"""DLCL, dynamic linear combination of layers, pre-norm variant (Wang et al. 2019,
"Learning Deep Transformer Models for Machine Translation", Sec. 3).

Each layer is a Pre-LN layer; its input is a learned combination of the embedding and of
every earlier layer's normalized output:

    y_0 = x,   n_0 = y_0 (the embedding is not normalized),   x_0 = y_0
    y_l = PreLNLayer_l(x_l),   n_l = LN_out_l(y_l)
    x_{l+1} = sum_{k <= l+1} W_{l+1,k} n_k,   W initialized to the average 1/(l+2)
    y = LN_final(x_L)

The state carries (x_l, n_0, ..., n_l); ``layers.{l}.dlcl_weights`` holds row l+1 of W.
"""

import numpy as np

from lnref.autograd import ops

SUMMARY = "x_{l+1} = sum_k W_{l+1,k} LN(y_k) over all earlier layers (Pre-LN); y = LN(x_L)"
PAPER = "Wang et al. 2019, Learning Deep Transformer Models for Machine Translation, Sec. 3"
NORMS = ("ln_{}",)
LAYER_NORMS = ("ln_out",)
STACK_NORMS = ("final_ln",)


def streams(index, config):
    """The state entering layer ``index``: the combined input and every normalized output so far."""
    return ("x", *(f"n_{k}" for k in range(index + 1)))


def layer_params(index, branches, config):
    return {"dlcl_weights": np.full(index + 2, 1.0 / (index + 2))}


def embed(x, stack):
    return (x, x)


def layer(state, layer):
    x, *history = state
    for name, branch in layer.branches:
        x = x + branch(layer.norm(f"ln_{name}", x))
    history.append(layer.norm("ln_out", x))
    combined = ops.weighted_sum(layer.param("dlcl_weights"), *history)
    return (combined, *history)


def readout(state, stack):
    return stack.norm("final_ln", state[0])
