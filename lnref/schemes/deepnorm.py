"""DeepNorm (Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers", Sec. 3-4).

Post-LN with the skip up-weighted by alpha, and the value/output projections and the FFN
initialized smaller by beta:

    x <- LN_S(alpha * x + S(x))        for each sublayer S; no final LN
    encoder-only (N layers): alpha = (2N)^(1/4), beta = (8N)^(-1/4)
    decoder with cross-attention (M layers): alpha = (3M)^(1/4), beta = (12M)^(-1/4)
    W_v, W_o (self and cross) and W_1, W_2 (with their biases) scaled by beta at init.

With these constants, (sublayers per layer) * N * 2 beta^2 / alpha^2 = 1 (Sec. 4.3).
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
    """(alpha, beta) for the stack's depth and kind."""
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
