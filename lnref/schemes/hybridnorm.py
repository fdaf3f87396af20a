"""HybridNorm and HybridNorm* (Zhuo et al. 2025, "HybridNorm: Towards Stable and Efficient
Transformer Training via Hybrid Normalization", Sec. 3).

No norm on the block input: the attention normalizes its queries, keys and values per head, and
the FFN is a Post-Norm block whose normalized input is also what the stream carries on:

    h = x + W_o MHA(N_q(x W_q + b_q), N_k(x W_k + b_k), N_v(x W_v + b_v)) + b_o
    u = N_ffn(h)
    y = u + F(u)
    out = N_final(x_L)

N_q, N_k and N_v act on each head's d/H features. HybridNorm* (option ``first_block=pre``)
makes the first block Pre-Norm in both sublayers, h = x + A_qkv(N_attn(x)), y = h + F(N_ffn(h)),
the other blocks unchanged. The paper's models are decoder-only; in a decoder stack lnref gives
the cross-attention the self-attention's form, h <- h + C_qkv(h), with per-head norms of its own
on its queries (from h) and on its keys and values (from the memory).

Read against BryceZhuo/HybridNorm @f0dd605: dense_model/olmo/model.py (OLMoSequentialBlock and
its layer_norm_pos_configs; the attention's q_norm, k_norm, v_norm of the head size),
dense_model/configs/exps/1.2B-dense-HybriedNorm.yaml (attn_norm false, use_query/key/value_norm
true, ffn_norm true, ffn_residual_after_norm true), and the README's HybridNorm* setting for block
0 (attn_norm true, ffn_residual false). Not taken here: RoPE after the q and k norms, no biases,
grouped-query attention, and the init (truncated N(0, 0.013975^2), sqrt(2/(5d)) at d = 2048, the
output projections divided by sqrt(2L)); lnref keeps Xavier-normal weights.
"""

from lnref.schemes import Option

SUMMARY = "h = x + W_o MHA(N(q), N(k), N(v)) per head; u = N(h); x <- u + F(u); y = N(x_L)"
PAPER = "Zhuo et al. 2025, HybridNorm: Towards Stable and Efficient Transformer Training, Sec. 3"
STACK_NORMS = ("final_ln",)
OPTIONS = {"first_block": Option("qkv", ("qkv", "pre"), "pre: HybridNorm*, the first block Pre-Norm")}
REFUSES = {"qk_norm": "HybridNorm normalizes q, k and v per head itself"}


def pre_norm_block(index, config):
    return index == 0 and config.option("first_block") == "pre"


def layer_norms(index, branches, config):
    return ("ln_attn", "ln_ffn") if pre_norm_block(index, config) else ("ln_ffn",)


def head_norms(index, branches, config):
    return tuple(f"{name}.{piece}_norm" for name in branches if name != "ffn" for piece in "qkv")


def layer(x, layer):
    pre = pre_norm_block(layer.index, layer.config)
    for name, branch in layer.branches:
        if name == "ffn":
            u = layer.norm("ln_ffn", x)
            x = (x if pre else u) + branch(u)
        else:
            source = layer.norm("ln_attn", x) if pre and name == "attn" else x
            x = x + branch(source, q_norm=f"{name}.q_norm", k_norm=f"{name}.k_norm", v_norm=f"{name}.v_norm")
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
