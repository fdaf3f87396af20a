"""Mix-LN (Li, Yin and Liu 2024, "Mix-LN: Unleashing the Power of Deeper Layers by
Combining Pre-LN and Post-LN", Sec. 4).

The first floor(alpha * L) layers are Post-LN, the rest Pre-LN, and a final LN closes the
stack (alpha = ``post_fraction``, 0.25 by default as in the paper):

    layer l < floor(alpha L):   x <- LN_S(x + S(x))
    otherwise:                  x <- x + S(LN_S(x))
    y = LN_final(x_L)
"""

import math

SUMMARY = "Post-LN in the first floor(alpha L) layers, Pre-LN after; y = LN(x_L)"
PAPER = "Li, Yin and Liu 2024, Mix-LN, ICLR 2025, Sec. 4"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)


def post_layers(config):
    return math.floor(config.post_fraction * config.n_layers)


def layer(x, layer):
    post = layer.index < post_layers(layer.config)
    for name, branch in layer.branches:
        if post:
            x = layer.norm(f"ln_{name}", x + branch(x))
        else:
            x = x + branch(layer.norm(f"ln_{name}", x))
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
