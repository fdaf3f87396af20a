"""Peri-LN (Kim et al. 2025, "Peri-LN: Revisiting Normalization Layer in the Transformer
Architecture", Sec. 3).

Norms on both sides ("peripheral") of every sublayer, around an unnormalized stream, with
the input embedding and the output normalized too:

    x_0 = LN_embed(x)
    x  <- x + LN_S_out(S(LN_S(x)))     for each sublayer S
    y   = LN_final(x_L)

Per layer this is Sandwich-LN; the embedding norm is what sets the two apart here. The
paper has no official code; the equations follow its text.
"""

SUMMARY = "x_0 = LN(x); x <- x + LN(S(LN(x))); y = LN(x_L)"
PAPER = "Kim et al. 2025, Peri-LN: Revisiting Normalization Layer in the Transformer, ICML, Sec. 3"
NORMS = ("ln_{}", "ln_{}_out")
STACK_NORMS = ("embed_ln", "final_ln")


def embed(x, stack):
    return stack.norm("embed_ln", x)


def layer(x, layer):
    for name, branch in layer.branches:
        x = x + layer.norm(f"ln_{name}_out", branch(layer.norm(f"ln_{name}", x)))
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
