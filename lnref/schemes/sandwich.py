"""Sandwich-LN (Ding et al. 2021, CogView, Sec. 2.4).

Pre-LN with a second norm on each branch output before it joins the stream:

    x <- x + LN_S_out(S(LN_S(x)))      for each sublayer S
    y  = LN_final(x_L)
"""

SUMMARY = "x <- x + LN(S(LN(x))); y = LN(x_L)"
PAPER = "Ding et al. 2021, CogView: Mastering Text-to-Image Generation via Transformers, Sec. 2.4"
NORMS = ("ln_{}", "ln_{}_out")
STACK_NORMS = ("final_ln",)


def layer(x, layer):
    for name, branch in layer.branches:
        x = x + layer.norm(f"ln_{name}_out", branch(layer.norm(f"ln_{name}", x)))
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
