"""Pre-LN with a learned scalar on the skip: a placement of one's own, in one file.

    x <- s_l x + S(LN_S(x))     for each sublayer S, s_l a learned scalar per layer (s_0 = 1)
    y  = LN_final(x_L)

Run it as any scheme:

    lnref gradcheck --scheme examples/my_scheme.py --layers 12
    lnref profile --scheme examples/my_scheme.py,pre --layers 12
    lnref export --scheme examples/my_scheme.py --layers 2 -o mine.npz
    lnref train --scheme examples/my_scheme.py --layers 2 --task reverse --steps 50

The protocol (what a scheme defines, what the view ``layer`` gives) is in
``lnref/schemes/__init__.py`` and docs/architecture.md.
"""

import numpy as np

SUMMARY = "x <- s x + S(LN(x)), s a learned scalar per layer; y = LN(x_L)"
PAPER = "an example of a scheme of one's own"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)


def layer_params(index, branches, config):
    return {"skip": np.ones(())}


def layer(x, layer):
    skip = layer.param("skip")
    for name, branch in layer.branches:
        x = skip * x + branch(layer.norm(f"ln_{name}", x))
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
