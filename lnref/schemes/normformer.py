"""NormFormer (Shleifer, Weston and Ott 2021, "NormFormer: Improved Transformer Pretraining with
Extra Normalization", Sec. 2).

Pre-LN with three more operations in each layer: a learned scale per attention head, a norm
after the self-attention, and a norm after the FFN's activation:

    h = x + N_attn_out(HeadScaleMHA(N_attn(x)))
    y = lambda * h + W_2 N_hidden(act(W_1 N_ffn(h) + b_1)) + b_2       N_hidden over d_ff features
    out = N_final(x_L)

with c in R^H (``head_scale``, init 1) and lambda in R^d (``resid_scale``, init 1, only with the
option ``resid_scale=true``, off by default: fairseq's README advises it for small models only).
The option ``head_scale`` takes the two readings of HeadScaleMHA:
    paper    Concat(c_1 head_1, ..., c_H head_H) W_o + b_o             (Sec. 2: before W_o)
    fairseq  (MHA(.) W_o + b_o) split into H slices of d/H features, slice h times c_h (after W_o)
The author confirms in fairseq issue #3973 that the two are not equivalent (the code moved the
scale after W_o for speed); they agree while every c_h is equal, as at init.

Read against facebookresearch/fairseq @00b6434, fairseq/modules/transformer_layer.py
(TransformerDecoderLayerBase: c_attn, attn_ln, ffn_layernorm, w_resid) and
examples/normformer/README.md. As there, the scale and the extra norm are on the self-attention
only (a decoder's cross-attention is a plain Pre-LN branch) and lambda scales the FFN's skip
only. The first commit of the code (c5ff181, issue #3973) multiplied with an einsum
'tbhd,h->tbdh' that also permuted the features; the later code keeps them in place, as lnref.
"""

import numpy as np

from lnref.autograd import ops
from lnref.schemes import Option

SUMMARY = "x <- x + N(HeadScale MHA(N(x))); x <- lambda x + W_2 N(act(W_1 N(x))); y = N(x_L)"
PAPER = "Shleifer, Weston and Ott 2021, NormFormer: Improved Transformer Pretraining, Sec. 2"
NORMS = ("ln_{}",)
LAYER_NORMS = ("ln_attn_out",)
FFN_NORMS = ("ln_hidden",)
STACK_NORMS = ("final_ln",)
OPTIONS = {
    "head_scale": Option("paper", ("paper", "fairseq"), "scale each head before W_o (paper) or W_o's output (fairseq)"),
    "resid_scale": Option(False, (False, True), "a learned per-feature scale on the FFN's skip"),
}


def layer_params(index, branches, config):
    params = {"head_scale": np.ones(config.n_heads)}
    if config.option("resid_scale"):
        params["resid_scale"] = np.ones(config.d_model)
    return params


def head_scaled_attention(layer, attend, x):
    if layer.option("head_scale") == "paper":
        return attend(x, head_scale="head_scale")
    out, heads = attend(x), layer.config.n_heads
    slices = ops.reshape(out, shape=(*out.shape[:-1], heads, out.shape[-1] // heads))  # W_o's output per head
    return ops.reshape(slices * ops.reshape(layer.param("head_scale"), shape=(heads, 1)), shape=out.shape)


def layer(x, layer):
    for name, branch in layer.branches:
        normed = layer.norm(f"ln_{name}", x)
        if name == "attn":
            x = x + layer.norm("ln_attn_out", head_scaled_attention(layer, branch, normed))
        elif name == "ffn":
            skip = x * layer.param("resid_scale") if layer.option("resid_scale") else x
            x = skip + branch(normed, hidden_norm="ln_hidden")
        else:
            x = x + branch(normed)
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
