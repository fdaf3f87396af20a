"""Sub-LN, Magneto (Wang et al. 2022, "Foundation Transformers", Sec. 2.1 and 2.2).

Pre-LN with one more norm inside each branch, just before its output projection:

    h = x + W_o N_heads(MHA(N_attn(x))) + b_o                 N_heads over the d features of the heads
    y = h + W_2 N_hidden(act(W_1 N_ffn(h) + b_1)) + b_2       N_hidden over the d_ff hidden features
    out = N_final(x_L)

Init: W_v, W_o, W_1, W_2 and their biases multiplied by gamma = sqrt(ln 2L) for a stack of L
layers (encoder-only or decoder-only). With cross-attention the stack is the decoder of an
encoder-decoder model, as torchscale's: gamma = sqrt(ln 3M) for its M layers, the cross-attention
is a Pre-LN branch with no inner norm and its weights are not scaled. The encoder of such a model
(N layers, M decoder layers) takes gamma = sqrt(ln(3M) ln(2N) / 3).

Read against microsoft/torchscale @0cb9695: component/multihead_attention.py (inner_attn_ln,
self-attention only), component/feedforward_network.py (ffn_layernorm), architecture/encoder.py
and decoder.py (the subln init; the decoder skips encoder_attn). Code and paper differ on what
gamma multiplies: torchscale multiplies the initialization that exists (PyTorch's default Linear
init, or N(0, 0.02) with bert_init; MultiheadAttention.reset_parameters is never called), biases
included, which are non-zero there; the paper scales a Xavier init by gamma. lnref scales its
Xavier-normal weights as the paper does, and its biases as the code does, which changes nothing
at lnref's init (zero biases) and keeps the same tensors scaled under any other.
"""

import math

SUMMARY = "x <- x + W_o N(MHA(N(x))); x <- x + W_2 N(act(W_1 N(x))); gamma = sqrt(ln 2L); y = N(x_L)"
PAPER = "Wang et al. 2022, Foundation Transformers (Magneto), Sec. 2"
NORMS = ("ln_{}",)
LAYER_NORMS = ("ln_heads",)
FFN_NORMS = ("ln_hidden",)
STACK_NORMS = ("final_ln",)
SCALED = ("attn.wv", "attn.bv", "attn.wo", "attn.bo", "ffn.w1", "ffn.b1", "ffn.w2", "ffn.b2")
INNER_NORMS = {"attn": {"heads_norm": "ln_heads"}, "ffn": {"hidden_norm": "ln_hidden"}}  # none in cross


def gain(config):
    """gamma: sqrt(ln 2L); for the decoder of an encoder-decoder model sqrt(ln 3M), for its encoder
    sqrt(ln(3M) ln(2N) / 3)."""
    if config.role == "encoder":
        return math.sqrt(math.log(3 * config.decoder_layers) * math.log(2 * config.encoder_layers) / 3)
    return math.sqrt(math.log((3 if config.cross_attention else 2) * config.n_layers))


def initialize(model, rng):
    gamma = gain(model.config)
    for name, value in model.params.items():
        if name.split(".", 2)[-1] in SCALED:
            value *= gamma


def layer(x, layer):
    for name, branch in layer.branches:
        x = x + branch(layer.norm(f"ln_{name}", x), **INNER_NORMS.get(name, {}))
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
