"""Pre-LN whose stream is damped through a stop-gradient after every layer (a test scheme,
GPAS's shape with a plain learned gain):

    x <- x + S(LN_S(x))   for each sublayer S;   x <- x - g_l sg(x),   g_l a learned scalar (0.3)
    y  = LN_final(x_L)

The forward sees x (1 - g_l); the tape's backward sees the identity through sg: by design the
tape's gradient is not the derivative of the forward function.
"""

import numpy as np

SUMMARY = "x <- x + S(LN(x)); x <- x - g sg(x)"
PAPER = "(a test scheme)"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)


def layer_params(index, branches, config):
    return {"gain": np.full((), 0.3)}


def layer(x, layer):
    for name, branch in layer.branches:
        x = x + branch(layer.norm(f"ln_{name}", x))
    return x - layer.param("gain") * layer.stop_gradient(x)


def readout(x, stack):
    return stack.norm("final_ln", x)
