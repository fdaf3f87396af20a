"""Reordered norm, res-post-norm (OLMo Team 2024, "2 OLMo 2 Furious", Sec. 3; Liu et al. 2022,
"Swin Transformer V2", Sec. 3.1; Chameleon Team 2024).

A norm on each branch's output and none on its input: the branches read the stream as it is.

    x <- x + N_S_out(S(x))          for each sublayer S (attn, cross in a decoder, ffn)
    y  = N_final(x_L)

The option ``init`` chooses between the two initializations:
    olmo2   every gain 1 and shift 0, as every other scheme (OLMo 2)
    swinv2  the gains (gamma) and shifts (beta) of the branch output norms 0 (Swin v2's
            ``_init_respostnorm``): every block is the identity and the model is N_final(x)

Read against allenai/OLMo-core, src/olmo_core/nn/transformer/block.py
(ReorderedNormTransformerBlock), and microsoft/Swin-Transformer @f82860b,
models/swin_transformer_v2.py (SwinTransformerBlock.forward, BasicLayer._init_respostnorm, the
final ``self.norm``). Where lnref departs from both: OLMo 2 draws every weight from a truncated
N(0, 0.02) and normalizes the whole q and k projections (``--qk-norm full`` adds the latter);
Swin v2 has scaled cosine attention with a position bias. lnref keeps Xavier-normal weights and
plain attention under both presets.
"""

from lnref.schemes import Option

SUMMARY = "x <- x + N(S(x)) for each sublayer S; y = N(x_L); init olmo2 (gains 1) or swinv2 (gains 0)"
PAPER = "OLMo Team 2024, 2 OLMo 2 Furious, Sec. 3; Liu et al. 2022, Swin Transformer V2, Sec. 3.1"
NORMS = ("ln_{}_out",)
STACK_NORMS = ("final_ln",)
OPTIONS = {
    "init": Option(
        "olmo2", ("olmo2", "swinv2"), "olmo2: gains 1; swinv2: branch norms' gains and shifts 0 (blocks the identity)"
    )
}


def initialize(model, rng):
    if model.config.option("init") == "swinv2":
        for name, value in model.params.items():
            norm, _, short = name.rpartition(".")
            if norm.startswith("layers.") and norm.endswith("_out") and short in ("gamma", "beta"):
                value[...] = 0


def layer(x, layer):
    for name, branch in layer.branches:
        x = x + layer.norm(f"ln_{name}_out", branch(x))
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
