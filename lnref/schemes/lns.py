"""LayerNorm Scaling, LNS (Sun et al. 2025, "The Curse of Depth in Large Language Models", Sec. 4).

Pre-LN whose every norm output in layer l (1-based) is scaled by 1/sqrt(l), a constant of the
depth rather than a parameter:

    x <- x + S(N_S(x) / sqrt(l))     for each sublayer S of layer l
    y  = N_final(x_L)                (the final norm is not scaled)

At the same weights this is Pre-LN with the gains and shifts of layer l's norms divided by
sqrt(l) (a test holds the two equal); in training the two differ, the scale being fixed here.

Read against allenai/OLMo-core, src/olmo_core/nn/transformer/block.py
(LayerNormScaledTransformerBlock: the norm output times a buffer 1/sqrt(block_idx + 1)). The
authors' repository, lmsdss/LayerNorm-Scaling @3ac54dd, peft_pretraining/modeling_llama.py, writes
the same equation in its 'LNS' branch, but the layer lower-cases the NORM_TYPE setting before
comparing it with 'LNS', in __init__ and in forward: run as its README says
(``bash run_130m.sh LNS 3``), no branch matches, and every decoder layer builds no norm and returns
its input unchanged. Its README advises plain normal init over depth-scaled init; lnref's
Xavier-normal init does not depend on depth.
"""

import math

SUMMARY = "x <- x + S(LN(x) / sqrt(l)), l the 1-based layer; y = LN(x_L)"
PAPER = "Sun et al. 2025, The Curse of Depth in Large Language Models, Sec. 4"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)


def layer(x, layer):
    scale = 1.0 / math.sqrt(layer.index + 1)
    for name, branch in layer.branches:
        x = x + branch(layer.norm(f"ln_{name}", x) * scale)
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
