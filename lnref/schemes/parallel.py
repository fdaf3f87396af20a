"""Parallel block (GPT-J, Wang and Komatsuzaki 2021; Chowdhery et al. 2022, PaLM, Sec. 2; Black et
al. 2022, GPT-NeoX-20B, Sec. 2).

Every branch reads the layer's input, and their outputs are added to it together:

    x <- x + A(N_attn(x)) + F(N_ffn(x))       (+ C(N_cross(x)) in a decoder)
    y  = N_final(x_L)

The option ``norms``:
    shared  one norm ``ln`` before every branch, N_attn = N_ffn (GPT-J, PaLM)
    two     a norm per branch, ``ln_attn``, ``ln_ffn`` (GPT-NeoX-20B)

Read against EleutherAI/gpt-neox, megatron/model/transformer.py (ParallelTransformerLayer with
gpt_j_residual: gpt_j_tied shares input_layernorm, otherwise post_attention_layernorm is the
FFN's); the code's comment says the two norms of GPT-NeoX-20B were meant to be tied and are not
through a bug, kept for compatibility. None of the three papers has a decoder with
cross-attention; lnref adds it as one more parallel branch.
"""

from lnref.schemes import Option

SUMMARY = "x <- x + A(LN(x)) + F(LN(x)), one shared norm or one per branch; y = LN(x_L)"
PAPER = "GPT-J (Wang and Komatsuzaki 2021); Chowdhery et al. 2022, PaLM, Sec. 2; Black et al. 2022, GPT-NeoX-20B"
STACK_NORMS = ("final_ln",)
OPTIONS = {
    "norms": Option("shared", ("shared", "two"), "shared: one norm for every branch (GPT-J, PaLM); two: one each")
}


def layer_norms(index, branches, config):
    return ("ln",) if config.option("norms") == "shared" else tuple(f"ln_{name}" for name in branches)


def layer(x, layer):
    shared = layer.norm("ln", x) if layer.option("norms") == "shared" else None
    out = x
    for name, branch in layer.branches:
        out = out + branch(layer.norm(f"ln_{name}", x) if shared is None else shared)
    return out


def readout(x, stack):
    return stack.norm("final_ln", x)
