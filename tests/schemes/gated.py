"""Pre-LN whose branches are scaled by a gate, an option of the scheme (a test scheme).

    x <- x + g * S(LN(x)),   g = the option "gate" (1 by default);   no final norm

The option "final" adds a final LN. It refuses the QK-norm switch, to show a refusal.
"""

from lnref.schemes import Option

SUMMARY = "x <- x + g S(LN(x)), g an option"
PAPER = "(a test scheme)"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)
OPTIONS = {
    "gate": Option(1.0, None, "the factor on every branch"),
    "final": Option(False, (False, True), "a final LN after the stack"),
}
REFUSES = {"qk_norm": "this test scheme has no room for it"}


def layer(x, layer):
    gate = layer.option("gate")
    for name, branch in layer.branches:
        x = x + gate * branch(layer.norm(f"ln_{name}", x))
    return x


def readout(x, stack):
    return stack.norm("final_ln", x) if stack.option("final") else x
