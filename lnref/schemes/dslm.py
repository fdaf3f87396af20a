"""DeepScaleLM (Kedia et al. 2024, "Transformers Get Stable: An End-to-End Signal Propagation
Theory for Language Models", ICML, Sec. 4).

The skip and the branch are weighted so that their sum keeps the stream's second moment, and the
weights are drawn so that every branch output has unit variance at init:

    pre    x <- lambda x + beta S(N_S(x));   y = N_final(x_L)
    post   x <- N_S(lambda x + beta S(x));   no final norm
    lambda^2 + beta^2 = 1,  beta^2 the option ``beta_sq`` (0.005 by default, the code's default)

Post-DSLM is DeepNorm's placement with alpha = lambda / beta: N(lambda u + beta v) = N(alpha u +
v) computed with the norm's eps divided by beta^2 (a test holds the two equal).

Init, moment control with no dropout (p = 0), biases zero, N(0, sigma^2) weights:
    W_q, W_k   sigma^2 = 1/d (Xavier's value for a d x d map)
    W_1, W_2   sigma^2 = sqrt(2 / (d d_ff))   (the code's sqrt(1/2)/d, its value at d_ff = 4d)
    W_v, W_o   sigma^2 = sqrt(1 / r_l) / d in layer l, r_l the correlation between tokens predicted
               at the layer's input: r_1 = 0.221, measured by the authors on BERT's Wikipedia
               inputs, then per sublayer r <- lambda^2 r + beta^2 r_S, with r_S = 1 after an
               attention and the ReLU arc-cosine map r_S = r + (sqrt(1 - r^2) - r acos r) / pi
               after an FFN. The FFN constants are ReLU's; the code uses them for GELU as well.
A decoder's cross-attention (the paper has none) is weighted like every branch and keeps lnref's
Xavier-normal weights; the recursion counts the self-attention and the FFN, as the code does.

Read against akhilkedia/TranformersGetStable @7f48e64, DSLM_signal_propagation_figures/megatron/:
model/transformer.py (ParallelAttention and ParallelMLP inits under --moment-control-sigma; lambda
and beta on the residual, the output and its bias under --moment-control-lambda-beta),
model/utils.py (sigma_attn_v_out, the recursion), arguments.py (lambda^2 = 0.995, beta^2 = 0.005).
Code and paper: the code takes lambda^2 and beta^2 as two settings; its post form
(--apply-residual-connection-post-layernorm) keeps Megatron's norms on each sublayer's input and a
final norm, and takes the skip from the normalized stream: the chain N(lambda x + beta S(x)) of the
paper, except that its first norm also normalizes the stack's input. Its decoder's cross-attention
takes no lambda and beta and the N(0, 0.02) init.
"""

import math

from lnref.schemes import Option

SUMMARY = "x <- lambda x + beta S(N(x)) (pre) or N(lambda x + beta S(x)) (post), lambda^2 + beta^2 = 1"
PAPER = "Kedia et al. 2024, Transformers Get Stable: An End-to-End Signal Propagation Theory, Sec. 4"
NORMS = ("ln_{}",)
OPTIONS = {
    "placement": Option("pre", ("pre", "post"), "pre: lambda x + beta S(N(x)); post: N(lambda x + beta S(x))"),
    "beta_sq": Option(0.005, None, "beta^2, in (0, 1); lambda^2 = 1 - beta^2"),
}
TOKEN_CORRELATION = 0.221  # r_1: the authors' measurement on BERT's Wikipedia inputs


def stack_norms(config):
    return ("final_ln",) if config.option("placement") == "pre" else ()


def weights(config):
    """(lambda, beta)."""
    beta_sq = config.option("beta_sq")
    if not 0 < beta_sq < 1:
        raise ValueError(f"option beta_sq of dslm must be in (0, 1), got {beta_sq!r}")
    return math.sqrt(1 - beta_sq), math.sqrt(beta_sq)


def correlations(config):
    """r_l, the token correlation predicted at the input of each layer."""
    lam_sq, beta_sq = (w * w for w in weights(config))
    r, entries = TOKEN_CORRELATION, []
    for _ in range(config.n_layers):
        entries.append(r)
        r = min(1.0, lam_sq * r + beta_sq)
        r = min(1.0, lam_sq * r + beta_sq * (r + (math.sqrt(1 - r * r) - r * math.acos(r)) / math.pi))
    return entries


def initialize(model, rng):
    d, d_ff = model.config.d_model, model.config.d_ff
    for index, r in enumerate(correlations(model.config)):
        variances = {"attn.wv": math.sqrt(1 / r) / d, "ffn.w1": math.sqrt(2 / (d * d_ff))}
        variances.update({"attn.wo": variances["attn.wv"], "ffn.w2": variances["ffn.w1"]})
        for name, variance in variances.items():
            w = model.params[f"layers.{index}.{name}"]
            w *= math.sqrt(variance * (w.shape[0] + w.shape[1]) / 2)  # from Xavier's 2 / (d_in + d_out)


def layer(x, layer):
    lam, beta = weights(layer.config)
    for name, branch in layer.branches:
        if layer.option("placement") == "pre":
            x = lam * x + beta * branch(layer.norm(f"ln_{name}", x))
        else:
            x = layer.norm(f"ln_{name}", lam * x + beta * branch(x))
    return x


def readout(x, stack):
    return stack.norm("final_ln", x) if stack.option("placement") == "pre" else x
