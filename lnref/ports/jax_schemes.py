"""The placements of the JAX port (lnref.ports.jax), each a function scheme(m, x) -> (y, states)
of a Stack m: its sublayers ``m.sublayer(l, b, x, **pieces)``, its norms ``m.norm(name, x)``,
its parameters ``m.p[name]`` and options ``m.option(name, default)``; states[l] is the tuple of
streams entering layer l. Written from the papers' equations and their official code (named in
each docstring); taken from lnref are only the parameter names and the options' names and
defaults (a golden file's config holds the options set away from their defaults).
"""

from __future__ import annotations

import math
from typing import Any

from lnref.ports import jax_family2

Stack = Any  # lnref.ports.jax.Stack

# ----- the schemes: each returns (y, states), states[l] the streams entering layer l --------


def post(m: Stack, x: Any) -> Any:
    """Vaswani et al. 2017: x <- LN(x + S(x)); no final LN."""

    def layer(l, x):
        for b in m.branches:
            x = m.norm(f"layers.{l}.ln_{b}", x + m.sublayer(l, b, x))
        return x

    return m.stack(x, layer)


def pre(m: Stack, x: Any) -> Any:
    """Xiong et al. 2020: x <- x + S(LN(x)); y = LN_final(x_L)."""

    def layer(l, x):
        for b in m.branches:
            x = x + m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x))
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def residual(m: Stack, x: Any) -> Any:
    """Xie et al. 2023 (ResiDual): a = S(x_a); x_d <- x_d + a; x_a <- LN(x_a + a); y = x_a + LN_final(x_d)."""
    x_a = x_d = x
    states = [(x_a, x_d)]
    for l in range(m.n_layers):
        for b in m.branches:
            a = m.sublayer(l, b, x_a)
            x_d = x_d + a
            x_a = m.norm(f"layers.{l}.ln_{b}", x_a + a)
        states.append((x_a, x_d))
    return x_a + m.norm("final_ln", x_d), states


def b2t(m: Stack, x: Any) -> Any:
    """Takase et al. 2023: h = LN(x + A(x)) (and C); x <- LN(h + F(h) + x), in every layer."""

    def layer(l, x):
        bottom = x
        *inner, last = m.branches
        for b in inner:
            x = m.norm(f"layers.{l}.ln_{b}", x + m.sublayer(l, b, x))
        return m.norm(f"layers.{l}.ln_{last}", x + m.sublayer(l, last, x) + bottom)

    return m.stack(x, layer)


def admin(m: Stack, x: Any) -> Any:
    """Liu et al. 2020: x <- LN(omega * x + S(x)), omega a vector per sublayer (stored, not profiled here)."""

    def layer(l, x):
        for b in m.branches:
            x = m.norm(f"layers.{l}.ln_{b}", m.p[f"layers.{l}.omega_{b}"] * x + m.sublayer(l, b, x))
        return x

    return m.stack(x, layer)


def deepnorm(m: Stack, x: Any) -> Any:
    """Wang et al. 2022 (DeepNet): x <- LN(alpha x + S(x)), alpha = (2N)^(1/4); decoders (3M)^(1/4)."""
    alpha = (3 * m.n_layers if m.c["cross_attention"] else 2 * m.n_layers) ** 0.25

    def layer(l, x):
        for b in m.branches:
            x = m.norm(f"layers.{l}.ln_{b}", alpha * x + m.sublayer(l, b, x))
        return x

    return m.stack(x, layer)


def _sandwich_layer(m: Stack, l: int, x: Any) -> Any:
    for b in m.branches:
        x = x + m.norm(f"layers.{l}.ln_{b}_out", m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x)))
    return x


def sandwich(m: Stack, x: Any) -> Any:
    """Ding et al. 2021 (CogView): x <- x + LN_out(S(LN(x))); y = LN_final(x_L)."""
    x, states = m.stack(x, lambda l, x: _sandwich_layer(m, l, x))
    return m.norm("final_ln", x), states


def peri(m: Stack, x: Any) -> Any:
    """Kim et al. 2025: x_0 = LN_embed(x); Sandwich layers; y = LN_final(x_L)."""
    x, states = m.stack(m.norm("embed_ln", x), lambda l, x: _sandwich_layer(m, l, x))
    return m.norm("final_ln", x), states


def mixln(m: Stack, x: Any) -> Any:
    """Li et al. 2024: the first floor(alpha L) layers Post-LN, the rest Pre-LN; y = LN_final(x_L)."""
    post_layers = math.floor(m.c["post_fraction"] * m.n_layers)

    def layer(l, x):
        for b in m.branches:
            name = f"layers.{l}.ln_{b}"
            x = m.norm(name, x + m.sublayer(l, b, x)) if l < post_layers else x + m.sublayer(l, b, m.norm(name, x))
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def dlcl(m: Stack, x: Any) -> Any:
    """Wang et al. 2019: Pre-LN layers, x_{l+1} = sum_k W_{l+1,k} n_k, n_0 = x, n_k = LN_out(y_k)."""
    outputs = [x]
    states = [(x, *outputs)]
    for l in range(m.n_layers):
        y = x
        for b in m.branches:
            y = y + m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", y))
        outputs.append(m.norm(f"layers.{l}.ln_out", y))
        weights = m.p[f"layers.{l}.dlcl_weights"]
        x = sum(weights[k] * n for k, n in enumerate(outputs))
        states.append((x, *outputs))
    return m.norm("final_ln", x), states


def rezero(m: Stack, x: Any) -> Any:
    """Bachlechner et al. 2020: x <- x + alpha_l S(x); no norm."""

    def layer(l, x):
        for b in m.branches:
            x = x + m.p[f"layers.{l}.alpha"] * m.sublayer(l, b, x)
        return x

    return m.stack(x, layer)


# ----- the family after the first eleven --------------------------------------------------


def reordered(m: Stack, x: Any) -> Any:
    """Res-post-norm (OLMo 2, Sec. 3; Swin Transformer v2, Sec. 3.1): a norm on each branch's
    output, none on its input: x <- x + N_out(S(x)); y = N_final(x_L). The presets (OLMo 2,
    Swin v2) differ in the initial parameters only."""

    def layer(l, x):
        for b in m.branches:
            x = x + m.norm(f"layers.{l}.ln_{b}_out", m.sublayer(l, b, x))
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def subln(m: Stack, x: Any) -> Any:
    """Sub-LN (Wang et al. 2022, Magneto, Sec. 2; torchscale's inner_attn_ln, ffn_layernorm): Pre-LN
    plus a norm just before each output projection, over the concatenated heads and over the
    FFN's hidden features; none inside the cross-attention. y = N_final(x_L)."""
    inner = {"attn": {"heads_norm": "ln_heads"}, "cross": {}, "ffn": {"hidden_norm": "ln_hidden"}}

    def layer(l, x):
        for b in m.branches:
            x = x + m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x), **inner[b])
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def hybridnorm(m: Stack, x: Any) -> Any:
    """HybridNorm (Zhuo et al. 2025, Sec. 3): no norm on the block's input, each head's q, k, v
    normalized, a Post-Norm FFN whose normalized input the stream carries on:
        h = x + A_qkv(x) [+ C_qkv];  u = N_ffn(h);  x <- u + F(u);  y = N_final(x_L)
    HybridNorm* (first_block=pre): layer 0 Pre-Norm, h = x + A_qkv(N_attn(x)), x <- h + F(N_ffn(h))."""
    pre_first = m.option("first_block", "qkv") == "pre"

    def layer(l, x):
        pre = pre_first and l == 0
        for b in m.branches:
            if b == "ffn":
                u = m.norm(f"layers.{l}.ln_ffn", x)
                x = (x if pre else u) + m.sublayer(l, b, u)
            else:
                source = m.norm(f"layers.{l}.ln_attn", x) if pre and b == "attn" else x
                x = x + m.sublayer(l, b, source, q_norm=f"{b}.q_norm", k_norm=f"{b}.k_norm", v_norm=f"{b}.v_norm")
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def normformer(m: Stack, x: Any) -> Any:
    """NormFormer (Shleifer, Weston and Ott 2021, Sec. 2; fairseq's c_attn, attn_ln, ffn_layernorm,
    w_resid): Pre-LN plus a gain c_h per head, a norm after the self-attention and one after
    the FFN's activation:
        x <- x + N_attn_out(HeadScaleMHA(N_attn(x)))
           paper: each head scaled before W_o; fairseq: slice h of W_o's output scaled
        x <- lambda x + N_hidden(act(N_ffn(x) W_1 + b_1)) W_2 + b_2   (lambda only with resid_scale)
    cross-attention plain Pre-LN; y = N_final(x_L)."""
    paper = m.option("head_scale", "paper") == "paper"
    resid = m.option("resid_scale", False)

    def layer(l, x):
        for b in m.branches:
            inner = m.norm(f"layers.{l}.ln_{b}", x)
            if b == "attn":
                if paper:
                    a = m.sublayer(l, b, inner, head_scale="head_scale")
                else:
                    c = m.p[f"layers.{l}.head_scale"]
                    a = m.sublayer(l, b, inner)
                    a = (a.reshape(*a.shape[:-1], m.heads, -1) * c[:, None]).reshape(a.shape)
                x = x + m.norm(f"layers.{l}.ln_attn_out", a)
            elif b == "ffn":
                skip = m.p[f"layers.{l}.resid_scale"] * x if resid else x
                x = skip + m.sublayer(l, b, inner, hidden_norm="ln_hidden")
            else:
                x = x + m.sublayer(l, b, inner)
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def lns(m: Stack, x: Any) -> Any:
    """LayerNorm Scaling (Sun et al. 2025, The Curse of Depth, Sec. 4): Pre-LN whose norm outputs
    in layer l = 1..L are scaled by 1/sqrt(l): x <- x + S(N(x) / sqrt(l)); y = N_final(x_L)."""

    def layer(l, x):
        for b in m.branches:
            x = x + m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x) / math.sqrt(l + 1))
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def layerscale(m: Stack, x: Any) -> Any:
    """LayerScale (Touvron et al. 2021, CaiT, Sec. 2): x <- x + lambda_S * S(N(x)), lambda a learned
    per-channel diagonal; y = N_final(x_L)."""

    def layer(l, x):
        for b in m.branches:
            x = x + m.p[f"layers.{l}.layerscale_{b}"] * m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x))
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def parallel(m: Stack, x: Any) -> Any:
    """Parallel block (GPT-J; PaLM, Sec. 2; GPT-NeoX): every branch reads the layer's input,
    x <- x + A(N(x)) [+ C(N(x))] + F(N(x)); one shared norm ln (norms=shared) or one per branch
    ln_{b} (norms=two); y = N_final(x_L)."""
    shared = m.option("norms", "shared") == "shared"

    def layer(l, x):
        out = x
        for b in m.branches:
            out = out + m.sublayer(l, b, m.norm(f"layers.{l}.ln" if shared else f"layers.{l}.ln_{b}", x))
        return out

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def tfixup(m: Stack, x: Any) -> Any:
    """T-Fixup (Huang et al. 2020, Sec. 3): no norm anywhere, x <- x + S(x); only the
    initialization is depth-scaled."""

    def layer(l, x):
        for b in m.branches:
            x = x + m.sublayer(l, b, x)
        return x

    return m.stack(x, layer)


def dslm(m: Stack, x: Any) -> Any:
    """DeepScaleLM (Kedia et al. 2024, Sec. 4): the skip weighted by lambda, the branch by beta,
    lambda^2 + beta^2 = 1:  pre: x <- lambda x + beta S(N(x)), y = N_final(x_L);
    post: x <- N(lambda x + beta S(x)), no final norm."""
    beta = math.sqrt(m.option("beta_sq", 0.005))
    lam = math.sqrt(1 - beta**2)
    post = m.option("placement", "pre") == "post"

    def layer(l, x):
        for b in m.branches:
            name = f"layers.{l}.ln_{b}"
            x = (
                m.norm(name, lam * x + beta * m.sublayer(l, b, x))
                if post
                else lam * x + beta * m.sublayer(l, b, m.norm(name, x))
            )
        return x

    x, states = m.stack(x, layer)
    return (x, states) if post else (m.norm("final_ln", x), states)


SCHEMES = {
    f.__name__: f
    for f in (
        post,
        pre,
        residual,
        b2t,
        admin,
        deepnorm,
        sandwich,
        peri,
        mixln,
        dlcl,
        rezero,
        reordered,
        subln,
        hybridnorm,
        normformer,
        lns,
        layerscale,
        parallel,
        tfixup,
        dslm,
    )
}
SCHEMES.update(jax_family2.SCHEMES)
# Names for a scheme with settings preset; a golden file's config holds the settings themselves.
ALIASES = {"gemma2": "sandwich", "gemma3": "sandwich", "skipinit": "rezero"}
SCHEMES.update({alias: SCHEMES[base] for alias, base in ALIASES.items()})
STREAMS = {  # the names of a state's arrays, by layer and config
    "residual": lambda layer, config=None: ("x_a", "x_d"),
    "dlcl": lambda layer, config=None: ("x", *(f"n_{k}" for k in range(layer + 1))),
    **jax_family2.STREAMS,
}
