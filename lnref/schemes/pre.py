"""Pre-LN (Xiong et al. 2020, Sec. 3 and Table 1; Wang et al. 2019, Eq. 4).

The norm moves onto the branch input; the residual stream itself is never normalized
until one final LN after the stack (Wang et al. 2019, footnote 3):

    x <- x + S(LN_S(x))         for each sublayer S
    y  = LN_final(x_L)
"""

SUMMARY = "x <- x + S(LN(x)) for each sublayer S; y = LN(x_L)"
PAPER = "Xiong et al. 2020, On Layer Normalization in the Transformer Architecture, Sec. 3"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)


def layer(x, layer):
    for name, branch in layer.branches:
        x = x + branch(layer.norm(f"ln_{name}", x))
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
