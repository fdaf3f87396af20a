"""The family's second part in the PyTorch port: several streams, the hypersphere, a
stop-gradient, depth-weighted averages. Each is a function scheme(m, x) -> (y, states) of the
port's Transformer m (lnref/ports/torch.py), as torch_schemes.py writes the first eleven.

Written from the papers and, where there is one, the official code (named in each
docstring); taken from lnref are only the parameter names, the options and their defaults.
STREAMS gives the names of the arrays a state carries, per layer and config.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def siamese(m, x):
    """SiameseNorm (Li et al. 2026, Sec. 3; Qwen-Applications/SiameseNorm @70efa00,
    deit-model-siamesenorm.py, Block.forward and forward_features): two streams from one
    input, sharing each sublayer. With c = sqrt(2 (l + 1)) for the 0-based layer l:

        x <- N_x(x);  z = S(N(x + N_y(y)));  x <- x + z / c;  y <- y + z
        out = N_final(N_final_x(x_L) + N_final_y(y_L))

    The repository calls the final norm of x ``pre_norm`` and that of y ``post_norm``; here
    each is named by the stream it normalizes."""
    y = x
    states = [(x, y)]
    for l in range(m.n_layers):
        c = math.sqrt(2 * (l + 1))
        for b in m.branches:
            x = m.norm(f"layers.{l}.ln_{b}_x", x)
            z = m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x + m.norm(f"layers.{l}.ln_{b}_y", y)))
            x, y = x + z / c, y + z
        states.append((x, y))
    return m.norm("final_ln", m.norm("final_ln_x", x) + m.norm("final_ln_y", y)), states


def unit(v):
    """v / ||v|| over the last axis, with no epsilon (as NVIDIA/ngpt's justnorm)."""
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def ngpt(m, x):
    """nGPT (Loshchilov et al. 2025, Sec. 2; NVIDIA/ngpt @ed19eb2, model.py Block.forward):
    no norm; the stream stays on the unit sphere and each sublayer moves it towards its own
    normalized output by a learned per-feature step:

        h_0 = unit(x);   h <- unit(unit(h) + |alpha_S| (unit(S(h)) - unit(h)))
        A(h): q_h = s_qk,h unit(Q_h), k_h = s_qk,h unit(K_h), logits sqrt(d_h) q_h k_h^T
        F(h) = act(s_u (h W_1 + b_1)) W_2 + b_2;   y = h_L

    The learned vectors are stored rescaled (the code's *_init_value / *_init_scaling): alpha
    used as stored * 0.05 sqrt(d), s_qk as stored * sqrt(d), s_u as stored * sqrt(d). The
    code's maps have no biases and a SwiGLU MLP; lnref's biases and --activation are kept,
    and a decoder's cross-attention takes the self-attention's form with its own alpha, s_qk."""
    root_d = math.sqrt(m.d)

    def attention(l, b, h):
        p = m.groups[f"layers.{l}.{b}"]
        source = m.memory if b == "cross" else h
        q, k, v = h @ p["wq"] + p["bq"], source @ p["wk"] + p["bk"], source @ p["wv"] + p["bv"]
        s_qk = (p["s_qk"] * root_d).reshape(m.heads, 1, -1)

        def split(t):  # (B, T, d) -> (B, H, T, d_h)
            return t.unflatten(-1, (m.heads, -1)).transpose(1, 2)

        q, k = s_qk * unit(split(q)), s_qk * unit(split(k))
        scores = math.sqrt(m.d // m.heads) * (q @ k.transpose(-2, -1))
        if b == "attn" and m.c["causal"]:
            future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(diagonal=1)
            scores = scores.masked_fill(future, float("-inf"))
        heads = torch.softmax(scores, dim=-1) @ split(v)
        return heads.transpose(1, 2).flatten(-2) @ p["wo"] + p["bo"]

    def feed_forward(l, h):
        p = m.groups[f"layers.{l}.ffn"]
        return m.act((p["s_u"] * root_d) * (h @ p["w1"] + p["b1"])) @ p["w2"] + p["b2"]

    def layer(l, h):
        for b in m.branches:
            out = feed_forward(l, h) if b == "ffn" else attention(l, b, h)
            alpha = (m.p[f"layers.{l}.alpha_{b}"] * (0.05 * root_d)).abs()
            h = unit(unit(h) + alpha * (unit(out) - unit(h)))
        return h

    return m.stack(unit(x), layer)


def gpas(m, x):
    """GPAS on Pre-LN (Chen et al. 2025, Sec. 3; dandingsky/GPAS @3198068,
    peft_pretraining/modeling_llama.py, GPASBlock and norm_type pre_gpas): after each residual
    add, x <- x - SiLU(a_l) sg(x), one gate a_l per layer; y = LN_final(x_L). The stream's
    gradient passes the scaling unchanged (torch's detach)."""

    def layer(l, x):
        scale = F.silu(m.p[f"layers.{l}.gate"])
        for b in m.branches:
            x = x + m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x))
            x = x - scale * x.detach()
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def hyper(m, x):
    """Hyper-connections (Zhu et al. 2025, Sec. 2, arXiv 2409.19606), static and dynamic, on
    Pre-LN sublayers. No official code is public: the equations (Eq. 2, HC = [[0, B], [A_m, A_r]],
    and the dynamic form) as the paper's opening and reviews quoting it give them. The stream is
    n copies H = (h_1..h_n), each the input at first; for each sublayer S, per token,

        h_in = sum_i A_m[i] h_i;   h_j <- sum_i A_r[i, j] h_i + B[j] S(LN_S(h_in))
        dynamic: Hb = N_hc(H) (each copy normalized), A_m += s_a tanh(Hb W_m),
                 A_r += s_a tanh(Hb W_r) (row i from copy i), B += s_b tanh(Hb W_b)^T
        y = LN_final(sum_i h_i)"""
    n, dynamic = m.option("n", 4), m.option("dynamic", False)

    def layer(l, h):
        for b in m.branches:
            p = m.groups[f"layers.{l}.hc_{b}"]
            stacked = torch.stack(h, dim=-2)  # (B, T, n, d)
            a_m, a_r, beta = p["am"], p["ar"], p["b"]
            if dynamic:
                normed = m.norm(f"layers.{l}.ln_{b}_hc", stacked)
                a_m = a_m + p["s_alpha"] * torch.tanh(normed @ p["wm"]).squeeze(-1)  # (B, T, n)
                a_r = a_r + p["s_alpha"] * torch.tanh(normed @ p["wr"])  # (B, T, n, n)
                beta = beta + p["s_beta"] * torch.tanh(normed @ p["wb"]).squeeze(-1)
            h_in = (a_m.unsqueeze(-1) * stacked).sum(-2)
            out = m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", h_in))
            mixed = (a_r.unsqueeze(-1) * stacked.unsqueeze(-2)).sum(-3)  # sum_i A_r[i, j] h_i
            h = tuple((mixed + beta.unsqueeze(-1) * out.unsqueeze(-2)).unbind(-2))
        return h

    return multi_stream(m, (x,) * n, layer)


def sinkhorn(logits, iterations):
    """Sinkhorn-Knopp on exp(logits): each round divides the rows by their sums, then the
    columns; the iterations are differentiated as they are run."""
    mat = logits.exp()
    for _ in range(iterations):
        mat = mat / mat.sum(-1, keepdim=True)
        mat = mat / mat.sum(-2, keepdim=True)
    return mat


def mhc(m, x):
    """mHC (Xie et al. 2026, Sec. 4, arXiv 2512.24880, Eqs. 6-8), on Pre-LN sublayers. No
    official code is public: the equations as reviews quoting the paper give them. Per token,
    from the n copies flattened and normalized, u = N_mix(vec(x)) (n d features):

        H_pre = sigmoid(a_pre u phi_pre + b_pre);  H_post = 2 sigmoid(a_post u phi_post + b_post)
        H_res = SinkhornKnopp(a_res mat(u phi_res) + b_res)   (t_max rounds, mat row-major n x n)
        x_i <- sum_j H_res[i, j] x_j + H_post[i] S(LN_S(sum_j H_pre[j] x_j));  y = LN_final(sum_i x_i)"""
    n, iterations = m.option("n", 4), m.option("sinkhorn_iterations", 20)

    def layer(l, xs):
        for b in m.branches:
            p = m.groups[f"layers.{l}.mhc_{b}"]
            stacked = torch.stack(xs, dim=-2)  # (B, T, n, d)
            u = m.norm(f"layers.{l}.ln_{b}_mix", stacked.flatten(-2))
            h_pre = torch.sigmoid(p["alpha_pre"] * (u @ p["phi_pre"]) + p["b_pre"])
            h_post = 2 * torch.sigmoid(p["alpha_post"] * (u @ p["phi_post"]) + p["b_post"])
            h_res = sinkhorn(p["alpha_res"] * (u @ p["phi_res"]).unflatten(-1, (n, n)) + p["b_res"], iterations)
            out = m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", (h_pre.unsqueeze(-1) * stacked).sum(-2)))
            xs = tuple((h_res @ stacked + h_post.unsqueeze(-1) * out.unsqueeze(-2)).unbind(-2))
        return xs

    return multi_stream(m, (x,) * n, layer)


def multi_stream(m, h, layer):
    """(LN_final(sum of the copies), states) of a stack whose state is a tuple of copies."""
    states = [h]
    for l in range(m.n_layers):
        h = layer(l, h)
        states.append(h)
    return m.norm("final_ln", sum(h)), states


def denseformer(m, x):
    """DenseFormer (Pagliardini et al. 2024, Sec. 3; epfml/DenseFormer @c99a623,
    denseformer/denseformer.py, DWAModules): Pre-LN blocks, each followed by a learned
    weighted average of the input and every block output so far (the 1x1 DenseFormer):

        X_0 = x;  X_{i+1} = x_i + S(LN(x_i)) (each sublayer);  x_{i+1} = sum_j alpha_{i,j} X_j
        y = LN_final(x_L)

    The state entering block i is (x_i, X_0, ..., X_i); after the last block, x_L alone."""
    outputs = [x]
    states = [(x, *outputs)]
    for l in range(m.n_layers):
        block = x
        for b in m.branches:
            block = block + m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", block))
        outputs.append(block)
        weights = m.p[f"layers.{l}.dwa_weights"]
        x = sum(weights[j] * out for j, out in enumerate(outputs))
        states.append((x, *outputs) if l < m.n_layers - 1 else (x,))
    return m.norm("final_ln", x), states


def copies_named(prefix):
    """The names of a state of n copies (config: a golden file's model object; None: n = 4)."""

    def names(layer, config=None):
        return tuple(f"{prefix}_{i}" for i in range((config or {}).get("options", {}).get("n", 4)))

    return names


SCHEMES = {f.__name__: f for f in (siamese, ngpt, gpas, hyper, mhc, denseformer)}
STREAMS = {
    "siamese": lambda layer, config=None: ("x", "y"),
    "hyper": copies_named("h"),
    "mhc": copies_named("x"),
    "denseformer": lambda layer, config=None: ("x", *(f"X_{j}" for j in range(layer + 1))),
}
