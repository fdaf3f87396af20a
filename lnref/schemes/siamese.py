"""SiameseNorm (Li et al. 2026, "SiameseNorm: Breaking the Barrier to Reconciling Pre/Post-Norm",
ICML, Sec. 3).

Two streams start from the same embedding, x_0 = y_0 = x. The sublayers are shared: each reads
both streams and adds its output to both, so x behaves as a Post-Norm stream (re-normalized
before every sublayer) and y as a Pre-Norm stream (never normalized, an identity path):

    x <- N_x(x)                              (N_p: the Post-Norm stream's norm)
    z  = S(N_S(x + N_y(y)))                  (N_q on y, N_i the sublayer's input norm)
    x <- x + z / sqrt(2 l),   y <- y + z     for each sublayer S of layer l (1-based)
    out = N_final(N_x_final(x_L) + N_y_final(y_L))

The factor is the same for both sublayers of a layer: c_l = sqrt(2 l), the code's
((index + 1) * 2) ** 0.5 with a 0-based index. Per sublayer ``ln_{S}_x`` (N_p), ``ln_{S}_y``
(N_q), ``ln_{S}`` (N_i); after the stack ``final_ln_x``, ``final_ln_y``, ``final_ln``.

Read against Qwen-Applications/SiameseNorm @70efa00, deit-model-siamesenorm.py (Block.forward,
VisionTransformer.forward_features). The code's names are swapped against the stream roles at
the end of the stack: ``pre_norm`` normalizes x (the Post-Norm stream) and ``post_norm`` y, where
inside a block ``pre_norm1`` normalizes y and ``post_norm1`` x; lnref names each norm by its
stream. Init: the host model's (lnref's). dit-model-siamesenorm.py puts DiT's modulated,
gain-free norm where N_i is; OLMo_model_hybrid_pre.py (the language models) builds on
HybridNorm, with a learned per-feature scale on x in the attention's input and QKV norms.
"""

import math

SUMMARY = "x <- N(x); z = S(N(x + N(y))); x += z / sqrt(2l); y += z; out = N(N(x_L) + N(y_L))"
PAPER = "Li et al. 2026, SiameseNorm: Breaking the Barrier to Reconciling Pre/Post-Norm, ICML, Sec. 3"
NORMS = ("ln_{}_x", "ln_{}_y", "ln_{}")
STACK_NORMS = ("final_ln_x", "final_ln_y", "final_ln")
STREAMS = ("x", "y")
# A golden file no port can match (the conformance suite leaves it out): with ScaleNorm the first
# sublayer normalizes (g_x + g_y) x / ||x|| (y_0 = x_0), so layers.0.ln_attn_y.g has gradient 0
# by structure, alone in its comparison group, and its stored value is round-off.
UNJUDGED = {("norm", "scalenorm"): "the first y-norm's scalar gain has gradient 0 by structure"}


def embed(x, stack):
    return (x, x)


def layer(streams, layer):
    x, y = streams
    c = math.sqrt(2 * (layer.index + 1))
    for name, branch in layer.branches:
        x = layer.norm(f"ln_{name}_x", x)
        z = branch(layer.norm(f"ln_{name}", x + layer.norm(f"ln_{name}_y", y)))
        x, y = x + z / c, y + z
    return (x, y)


def readout(streams, stack):
    x, y = streams
    return stack.norm("final_ln", stack.norm("final_ln_x", x) + stack.norm("final_ln_y", y))
