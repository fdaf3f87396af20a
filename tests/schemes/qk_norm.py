"""Pre-LN with a norm on q and on k per head, and a norm between the heads and W_o.

    h = x + W_o N_heads(MHA(N_q(x_n W_q + b_q), N_k(x_n W_k + b_k), x_n W_v + b_v)) + b_o,   x_n = LN(x)
    y = h + F(LN(h));   out = LN(x_L)

N_q and N_k normalize each head's d/H features (as QK-norm does in Gemma 3 and HybridNorm);
N_heads normalizes the heads' concatenated output (as NormFormer's head norm does). Written
only from the scheme protocol: nothing outside this file knows it.
"""

SUMMARY = "x <- x + W_o N(MHA(N_q(q), N_k(k), v)); x <- x + F(LN(x)); y = LN(x_L)"
PAPER = "(a test scheme)"
NORMS = ("ln_{}",)
HEAD_NORMS = ("q_norm", "k_norm")
LAYER_NORMS = ("heads_norm",)
STACK_NORMS = ("final_ln",)


def layer(x, layer):
    attended = layer.self_attention(layer.norm("ln_attn", x), q_norm="q_norm", k_norm="k_norm", heads_norm="heads_norm")
    h = x + attended
    return h + layer.ffn(layer.norm("ln_ffn", h))


def readout(x, stack):
    return stack.norm("final_ln", x)
