"""T-Fixup (Huang, Perez, Ba and Volkovs 2020, "Improving Transformer Optimization Through Better
Initialization", ICML, Sec. 3).

No norm anywhere, not even after the stack: the initialization alone is what lets it train.

    x <- x + S(x)      for each sublayer S; no final norm

Init: Xavier for every weight, zero biases, then W_v, W_o, W_1 and W_2 multiplied by
    encoder stack (no causal mask, no cross-attention)    0.67 L^(-1/4)
    decoder stack (causal or with cross-attention)        (9 L)^(-1/4)   (the cross-attention's W_v, W_o too)
A decoder-only stack takes the decoder rule. In an encoder-decoder model the encoder (N layers)
takes 0.67 N^(-1/4) and the decoder (M layers) (9 M)^(-1/4), each counting its own layers: each
stack's config tells it which it is. The rules also set the input embeddings (Gaussian, then
scaled with depth), which lnref's stacks do not model: their inputs are given (and ``lnref.lm``'s
wrappers keep their own embeddings).

Read against layer6ai-labs/T-Fixup @b17e166, fairseq/modules/transformer_layer.py
(fixup_initialization of the encoder and decoder layers) and fairseq/models/transformer.py (the
embeddings). Code details: fairseq draws Xavier-uniform weights, and v_proj with gain 1/sqrt(2),
which the code undoes by a factor sqrt(2) before scaling: the net rule is a gain-1 Xavier draw
times the factor, as here (lnref draws Xavier-normal). Biases are not scaled (they are zero).
The code scales the encoder's embedding by (9 N_enc)^(-1/4) and the decoder's by
(9 N_dec)^(-1/4), the latter only when it is not shared with the encoder.
"""

SUMMARY = "x <- x + S(x); no norm; W_v, W_o, W_1, W_2 scaled by (9L)^-1/4 (decoder) or 0.67 L^-1/4"
PAPER = "Huang, Perez, Ba and Volkovs 2020, Improving Transformer Optimization Through Better Initialization"
REFUSES = {
    "norm": "T-Fixup has no norm anywhere",
    "qk_norm": "T-Fixup has no norm anywhere",
    "eps": "T-Fixup has no norm to take an epsilon",
}
SCALED = ("attn.wv", "attn.wo", "cross.wv", "cross.wo", "ffn.w1", "ffn.w2")


def factor(config):
    """The factor on W_v, W_o, W_1 and W_2: the decoder rule or the encoder rule."""
    if config.causal or config.cross_attention:
        return (9 * config.n_layers) ** -0.25
    return 0.67 * config.n_layers**-0.25


def initialize(model, rng):
    scale = factor(model.config)
    for name, value in model.params.items():
        if name.split(".", 2)[-1] in SCALED:
            value *= scale


def layer(x, layer):
    for _, branch in layer.branches:
        x = x + branch(x)
    return x
