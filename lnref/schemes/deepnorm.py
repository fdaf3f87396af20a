"""DeepNorm (Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers", Sec. 3-4).

Post-LN with the skip up-weighted by alpha, and the value/output projections and the FFN
initialized smaller by beta:

    x <- LN_S(alpha * x + S(x))        for each sublayer S; no final LN
    encoder-only (N layers): alpha = (2N)^(1/4), beta = (8N)^(-1/4)
    decoder with cross-attention (M layers): alpha = (3M)^(1/4), beta = (12M)^(-1/4)
    encoder of an encoder-decoder model (N encoder, M decoder layers):
        alpha = 0.81 (N^4 M)^(1/16), beta = 0.87 (N^4 M)^(-1/16)
    W_v, W_o (self and cross) and W_1, W_2 (with their biases) scaled by beta at init.

With the one-stack constants, (sublayers per layer) * N * 2 beta^2 / alpha^2 = 1 (Sec. 4.3); the
decoder of an encoder-decoder model takes the decoder's, (3M)^(1/4) and (12M)^(-1/4) (Table 1).

Read against microsoft/torchscale @4d1e0e8, architecture/encoder.py and decoder.py (alpha and the
init under deepnorm, is_encoder_decoder). Code and paper differ on the encoder's beta: the code
divides by (N^4 M)^(1/16) / 1.15, a beta of 1.15 (N^4 M)^(-1/16), where the paper's 0.87 is 1 / 1.15;
lnref takes the paper's.
"""

SUMMARY = "x <- LN(alpha x + S(x)), alpha = (2N)^1/4, W_v,W_o,W_1,W_2 scaled by (8N)^-1/4"
PAPER = "Wang et al. 2022, DeepNet: Scaling Transformers to 1,000 Layers, Sec. 3-4"
NORMS = ("ln_{}",)
SCALED = (
    "attn.wv",
    "attn.bv",
    "attn.wo",
    "attn.bo",
    "cross.wv",
    "cross.bv",
    "cross.wo",
    "cross.bo",
    "ffn.w1",
    "ffn.b1",
    "ffn.w2",
    "ffn.b2",
)


def constants(config):
    """(alpha, beta) for the stack's depth and role."""
    if config.role == "encoder":
        depths = config.encoder_layers**4 * config.decoder_layers
        return 0.81 * depths ** (1 / 16), 0.87 * depths ** (-1 / 16)
    if config.cross_attention:
        return (3 * config.n_layers) ** 0.25, (12 * config.n_layers) ** -0.25
    return (2 * config.n_layers) ** 0.25, (8 * config.n_layers) ** -0.25


def initialize(model, rng):
    _, beta = constants(model.config)
    for name, value in model.params.items():
        if name.split(".", 2)[-1] in SCALED:
            value *= beta


def layer(x, layer):
    alpha, _ = constants(layer.config)
    for name, branch in layer.branches:
        x = layer.norm(f"ln_{name}", alpha * x + branch(x))
    return x
