"""Post-LN (Vaswani et al. 2017, "Attention Is All You Need", Sec. 3.1).

Every sublayer S (self-attention, cross-attention, FFN) is followed by its norm:

    x <- LN_S(x + S(x))

No norm after the stack: the last LN already normalizes the output.

The option ``init`` takes DS-Init (Zhang, Titov and Sennrich 2019, "Improving Deep Transformer
with Depth-Scaled Initialization and Merged Attention", EMNLP, Sec. 3), which draws the weights
of layer l (1-based; every weight of its sublayers) with a spread shrinking with depth:
    xavier      lnref's Xavier normal, std sqrt(2 / (d_in + d_out))
    ds_paper    the paper's bound gamma alpha / sqrt(l) (gamma the Xavier bound, alpha = 1):
                Xavier's std times l^(-1/2)
    ds_code     bzhangGo/zero @d97e2c2, models/transformer.py: variance_scaling_initializer(
                gain l^(-1/2), fan_avg, uniform) scales the variance, not the bound, by
                l^(-1/2): Xavier's std times l^(-1/4)
Both keep the draw's distribution (lnref's normal, the paper's and code's uniform) and scale it.
"""

from lnref.schemes import Option

SUMMARY = "x <- LN(x + S(x)) for each sublayer S; no final LN"
PAPER = "Vaswani et al. 2017, Attention Is All You Need, Sec. 3.1"
NORMS = ("ln_{}",)
OPTIONS = {
    "init": Option("xavier", ("xavier", "ds_paper", "ds_code"), "DS-Init: weights of layer l times l^-1/2 or l^-1/4")
}
DEPTH_EXPONENT = {"xavier": 0.0, "ds_paper": -0.5, "ds_code": -0.25}
WEIGHTS = ("wq", "wk", "wv", "wo", "w1", "w2")


def initialize(model, rng):
    exponent = DEPTH_EXPONENT[model.config.option("init")]
    for name, value in model.params.items():
        if name.startswith("layers.") and name.rpartition(".")[2] in WEIGHTS:
            value *= (int(name.split(".")[1]) + 1) ** exponent


def layer(x, layer):
    for name, branch in layer.branches:
        x = layer.norm(f"ln_{name}", x + branch(x))
    return x
