"""The placements after the first eleven, each a function scheme(m, x) -> (y, states) of the
port's Transformer m (lnref/ports/torch.py), as torch_schemes.py writes the first eleven.

Written from the papers and their official code (named in each docstring); taken from lnref
are only the parameter names and the options (``m.option(name, default)``: a golden file's
config holds the options set away from their defaults). Each sublayer's pieces (a norm inside
it, a per-head gain) are named relative to the layer: ``heads_norm="ln_heads"`` is the norm
``layers.{l}.ln_heads``.
"""

from __future__ import annotations

import math


def reordered(m, x):
    """Res-post-norm (OLMo 2, Sec. 3; Swin Transformer v2, Sec. 3.1; allenai/OLMo-core
    block.py, ReorderedNormTransformerBlock): a norm on each branch's output, none on its input.

        x <- x + LN_out(S(x))  for each sublayer S;   y = LN_final(x_L)

    The presets (OLMo 2 gains 1, Swin v2 gains and shifts 0) differ in the parameters only.
    """

    def layer(l, x):
        for b in m.branches:
            x = x + m.norm(f"layers.{l}.ln_{b}_out", m.sublayer(l, b, x))
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def subln(m, x):
    """Sub-LN (Wang et al. 2022, Foundation Transformers (Magneto), Sec. 2; microsoft/torchscale
    multihead_attention.py inner_attn_ln, feedforward_network.py ffn_layernorm): Pre-LN plus a
    norm just before each output projection.

        x <- x + LN_heads(MHA(LN(x))) W_o + b_o           LN_heads over the d features of the heads
        x <- x + LN_hidden(act(LN(x) W_1 + b_1)) W_2 + b_2  LN_hidden over the d_ff hidden features
        cross-attention (decoders): x <- x + C(LN(x)), no inner norm (torchscale's encoder_attn)
        y = LN_final(x_L)
    """
    inner = {"attn": {"heads_norm": "ln_heads"}, "cross": {}, "ffn": {"hidden_norm": "ln_hidden"}}

    def layer(l, x):
        for b in m.branches:
            x = x + m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x), **inner[b])
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def hybridnorm(m, x):
    """HybridNorm (Zhuo et al. 2025, Sec. 3; BryceZhuo/HybridNorm dense_model/olmo/model.py):
    no norm on the block's input; each head's q, k and v normalized; a Post-Norm FFN whose
    normalized input is what the stream carries on.

        h = x + W_o MHA(N_q(x W_q + b_q), N_k(x W_k + b_k), N_v(x W_v + b_v)) + b_o
        (decoders, lnref's choice: h <- h + C with its own N_q on h, N_k, N_v on the memory)
        u = LN_ffn(h);   x <- u + F(u);   y = LN_final(x_L)
    HybridNorm* (option first_block=pre): layer 0 is Pre-Norm, h = x + A_qkv(LN_attn(x)),
    x <- h + F(LN_ffn(h)) (the README's norm_pos_special_config for block 0).
    """
    pre_first = m.option("first_block", "qkv") == "pre"

    def qkv(b):
        return {"q_norm": f"{b}.q_norm", "k_norm": f"{b}.k_norm", "v_norm": f"{b}.v_norm"}

    def layer(l, x):
        pre = pre_first and l == 0
        x = x + m.sublayer(l, "attn", m.norm(f"layers.{l}.ln_attn", x) if pre else x, **qkv("attn"))
        if "cross" in m.branches:
            x = x + m.sublayer(l, "cross", x, **qkv("cross"))
        u = m.norm(f"layers.{l}.ln_ffn", x)
        return (x if pre else u) + m.sublayer(l, "ffn", u)

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def normformer(m, x):
    """NormFormer (Shleifer, Weston and Ott 2021, Sec. 2; fairseq transformer_layer.py:
    c_attn, attn_ln, ffn_layernorm, w_resid): Pre-LN plus a gain c_h per head, a norm after
    the self-attention and a norm after the FFN's activation.

        h = x + LN_attn_out(HeadScaleMHA(LN_attn(x)))
          paper:   HeadScaleMHA = Concat(c_1 head_1, ..., c_H head_H) W_o + b_o
          fairseq: HeadScaleMHA = slice h of (MHA W_o + b_o), d/H features each, times c_h
        (decoders: a plain Pre-LN cross-attention, as fairseq's encoder_attn)
        x <- lambda * h + LN_hidden(act(LN_ffn(h) W_1 + b_1)) W_2 + b_2,  lambda = 1 unless
             resid_scale (fairseq's w_resid scales the FFN's skip only);   y = LN_final(x_L)
    """
    paper = m.option("head_scale", "paper") == "paper"
    resid = m.option("resid_scale", False)

    def layer(l, x):
        c = m.p[f"layers.{l}.head_scale"]
        for b in m.branches:
            inner = m.norm(f"layers.{l}.ln_{b}", x)
            if b == "attn":
                if paper:
                    a = m.sublayer(l, b, inner, head_scale="head_scale")
                else:
                    a = (m.sublayer(l, b, inner).unflatten(-1, (m.heads, -1)) * c[:, None]).flatten(-2)
                x = x + m.norm(f"layers.{l}.ln_attn_out", a)
            elif b == "ffn":
                skip = m.p[f"layers.{l}.resid_scale"] * x if resid else x
                x = skip + m.sublayer(l, b, inner, hidden_norm="ln_hidden")
            else:
                x = x + m.sublayer(l, b, inner)
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def lns(m, x):
    """LayerNorm Scaling (Sun et al. 2025, The Curse of Depth, Sec. 4; OLMo-core block.py,
    LayerNormScaledTransformerBlock): Pre-LN whose norm outputs in layer l = 1..L are scaled
    by the constant 1/sqrt(l).

        x <- x + S(LN(x) / sqrt(l));   y = LN_final(x_L), not scaled
    """

    def layer(l, x):
        for b in m.branches:
            x = x + m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x) / math.sqrt(l + 1))
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def layerscale(m, x):
    """LayerScale (Touvron et al. 2021, CaiT, Sec. 2; facebookresearch/deit cait_models.py,
    LayerScale_Block): Pre-LN whose branches are scaled per channel by a learned diagonal.

        x <- x + lambda_S * S(LN(x));   y = LN_final(x_L)
    """

    def layer(l, x):
        for b in m.branches:
            x = x + m.p[f"layers.{l}.layerscale_{b}"] * m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x))
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def parallel(m, x):
    """Parallel block (GPT-J; Chowdhery et al. 2022, PaLM, Sec. 2; GPT-NeoX
    use_parallel_residual): every branch reads the layer's input.

        x <- x + A(LN_attn(x)) [+ C(LN_cross(x))] + F(LN_ffn(x));   y = LN_final(x_L)
        norms=shared (GPT-J, PaLM): one norm ln for every branch;  norms=two (GPT-NeoX): ln_{branch}
    """
    shared = m.option("norms", "shared") == "shared"

    def layer(l, x):
        out = x
        for b in m.branches:  # every branch reads x, the layer's input
            out = out + m.sublayer(l, b, m.norm(f"layers.{l}.ln" if shared else f"layers.{l}.ln_{b}", x))
        return out

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def tfixup(m, x):
    """T-Fixup (Huang et al. 2020, Sec. 3; layer6ai-labs/T-Fixup): no norm anywhere, not even
    after the stack; only the initialization is depth-scaled.

        x <- x + S(x)
    """

    def layer(l, x):
        for b in m.branches:
            x = x + m.sublayer(l, b, x)
        return x

    return m.stack(x, layer)


def dslm(m, x):
    """DeepScaleLM (Kedia et al. 2024, Transformers Get Stable, Sec. 4; akhilkedia/
    TranformersGetStable megatron/model/transformer.py): the skip weighted by lambda and the
    branch by beta, lambda^2 + beta^2 = 1, so that the sum keeps the stream's second moment.

        pre:  x <- lambda x + beta S(LN(x));   y = LN_final(x_L)
        post: x <- LN(lambda x + beta S(x));   no final norm
    """
    beta = math.sqrt(m.option("beta_sq", 0.005))
    lam = math.sqrt(1 - beta**2)
    post = m.option("placement", "pre") == "post"

    def layer(l, x):
        for b in m.branches:
            norm = f"layers.{l}.ln_{b}"
            if post:
                x = m.norm(norm, lam * x + beta * m.sublayer(l, b, x))
            else:
                x = lam * x + beta * m.sublayer(l, b, m.norm(norm, x))
        return x

    x, states = m.stack(x, layer)
    return (x, states) if post else (m.norm("final_ln", x), states)


SCHEMES = {f.__name__: f for f in (reordered, subln, hybridnorm, normformer, lns, layerscale, parallel, tfixup, dslm)}
STREAMS = {}
