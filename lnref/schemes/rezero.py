"""ReZero, no normalization (Bachlechner et al. 2020, "ReZero is All You Need", Sec. 3).

One gate alpha per layer, shared by its sublayers and initialized to 0, so every layer
starts as the identity:

    x <- x + alpha_l * S(x)     for each sublayer S; no norm anywhere
"""

import numpy as np

SUMMARY = "x <- x + alpha * S(x), alpha = 0 at init; no LN"
PAPER = "Bachlechner et al. 2020, ReZero is All You Need, Sec. 3"


def layer_params(index, branches, config):
    return {"alpha": np.zeros(())}


def layer(x, layer):
    alpha = layer.param("alpha")
    for _, branch in layer.branches:
        x = x + alpha * branch(x)
    return x
