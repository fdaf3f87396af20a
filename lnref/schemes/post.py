"""Post-LN (Vaswani et al. 2017, "Attention Is All You Need", Sec. 3.1).

Every sublayer S (self-attention, cross-attention, FFN) is followed by its norm:

    x <- LN_S(x + S(x))

No norm after the stack: the last LN already normalizes the output.
"""

SUMMARY = "x <- LN(x + S(x)) for each sublayer S; no final LN"
PAPER = "Vaswani et al. 2017, Attention Is All You Need, Sec. 3.1"
NORMS = ("ln_{}",)


def layer(x, layer):
    for name, branch in layer.branches:
        x = layer.norm(f"ln_{name}", x + branch(x))
    return x
