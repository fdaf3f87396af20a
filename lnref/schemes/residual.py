"""ResiDual, Pre-Post-LN (Xie et al. 2023, "ResiDual: Transformer with Dual Residual
Connections", Sec. 3).

Two streams start from the input, x_a = x_d = x. Each sublayer S reads the Post-LN
stream; its raw output is added to both:

    a   = S(x_a)
    x_d <- x_d + a              the dual (Pre-LN-like) stream, never normalized in between
    x_a <- LN_S(x_a + a)        the Post-LN stream
    y   = x_a + LN_final(x_d)

Matches the authors' code with its alpha and input scale at their default 1. Their final
LN uses eps 1e-7; lnref uses the model's one eps for every norm.
"""

SUMMARY = "a = S(x_a); x_d += a; x_a = LN(x_a + a); y = x_a + LN(x_d)"
PAPER = "Xie et al. 2023, ResiDual: Transformer with Dual Residual Connections, Sec. 3"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)
STREAMS = ("x_a", "x_d")


def embed(x, stack):
    return (x, x)


def layer(streams, layer):
    x_a, x_d = streams
    for name, branch in layer.branches:
        a = branch(x_a)
        x_d = x_d + a
        x_a = layer.norm(f"ln_{name}", x_a + a)
    return (x_a, x_d)


def readout(streams, stack):
    x_a, x_d = streams
    return x_a + stack.norm("final_ln", x_d)
