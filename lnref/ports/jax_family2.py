"""The family's second part in the JAX port (lnref.ports.jax): several streams, the hypersphere,
a stop-gradient, depth-weighted averages. Each is a function scheme(m, x) -> (y, states) of a
Stack m, as in jax_schemes.py; the pieces a scheme computes itself (nGPT's sublayers, the
connections of hyper-connections and mHC) are jitted once per shape and setting.

Written from the papers and, where there is one, the official code (named in each
docstring); taken from lnref are only the parameter names, the options and their defaults.
STREAMS gives the names of the arrays a state carries, per layer and config.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

Stack = Any  # lnref.ports.jax.Stack


def siamese(m: Stack, x: Any) -> Any:
    """SiameseNorm (Li et al. 2026, Sec. 3; Qwen-Applications/SiameseNorm @70efa00,
    deit-model-siamesenorm.py): two streams from one input share each sublayer; with
    c = sqrt(2 (l + 1)) for the 0-based layer l,
        x <- N_x(x);  z = S(N(x + N_y(y)));  x <- x + z / c;  y <- y + z
        out = N_final(N_final_x(x_L) + N_final_y(y_L))
    (the repository names the final norms of x and y pre_norm and post_norm: swapped)."""
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


def _unit(v: Any) -> Any:
    return v / jnp.sqrt((v**2).sum(-1, keepdims=True))  # no epsilon, as NVIDIA/ngpt's justnorm


@functools.partial(jax.jit, static_argnames=("heads", "causal"))
def _ngpt_attention(h, source, p, s_qk, heads, causal):
    """W_o softmax(sqrt(d_h) (s_qk unit(Q_h)) (s_qk unit(K_h))^T [+ mask]) V_h + b_o, per head."""
    q, k, v = h @ p["wq"] + p["bq"], source @ p["wk"] + p["bk"], source @ p["wv"] + p["bv"]
    d_head = q.shape[-1] // heads

    def split(t):  # (B, T, d) -> (B, H, T, d_h)
        return t.reshape(t.shape[0], t.shape[1], heads, d_head).transpose(0, 2, 1, 3)

    gain = s_qk.reshape(heads, 1, d_head)
    scores = math.sqrt(d_head) * ((gain * _unit(split(q))) @ (gain * _unit(split(k))).transpose(0, 1, 3, 2))
    if causal:
        t, s = scores.shape[-2:]
        scores = jnp.where(jnp.tril(jnp.ones((t, s), dtype=bool)), scores, -jnp.inf)
    heads_out = jax.nn.softmax(scores, axis=-1) @ split(v)
    return heads_out.transpose(0, 2, 1, 3).reshape(h.shape[0], h.shape[1], -1) @ p["wo"] + p["bo"]


@functools.partial(jax.jit, static_argnames=("activation",))
def _ngpt_feed_forward(h, p, s_u, activation):
    return activation(s_u * (h @ p["w1"] + p["b1"])) @ p["w2"] + p["b2"]


@jax.jit
def _ngpt_step(h, out, alpha):
    h = _unit(h)
    return _unit(h + jnp.abs(alpha) * (_unit(out) - h))


def ngpt(m: Stack, x: Any) -> Any:
    """nGPT (Loshchilov et al. 2025, Sec. 2; NVIDIA/ngpt @ed19eb2, model.py Block.forward): no
    norm, the stream on the unit sphere, each sublayer a learned step towards its normalized
    output:
        h_0 = unit(x);   h <- unit(unit(h) + |alpha_S| (unit(S(h)) - unit(h)));   y = h_L
        A: q_h = s_qk unit(Q_h), k_h = s_qk unit(K_h), logits sqrt(d_h) q_h k_h^T
        F: act(s_u (h W_1 + b_1)) W_2 + b_2
    Stored rescaled (the code's init_value / init_scaling): alpha used as stored * 0.05 sqrt(d),
    s_qk and s_u as stored * sqrt(d). lnref keeps its biases and --activation (the code: no
    biases, SwiGLU); a decoder's cross-attention is the self-attention's form on the memory."""
    root_d = math.sqrt(x.shape[-1])

    def layer(l, h):
        for b in m.branches:
            if b == "ffn":
                p = m.group(f"layers.{l}.ffn")
                out = _ngpt_feed_forward(h, p, p["s_u"] * root_d, m.activation)
            else:
                p = m.group(f"layers.{l}.{b}")
                source = m.memory if b == "cross" else h
                causal = m.c["causal"] and b == "attn"
                out = _ngpt_attention(h, source, p, p["s_qk"] * root_d, m.heads, causal)
            h = _ngpt_step(h, out, m.p[f"layers.{l}.alpha_{b}"] * (0.05 * root_d))
        return h

    return m.stack(_unit(x), layer)


def gpas(m: Stack, x: Any) -> Any:
    """GPAS on Pre-LN (Chen et al. 2025, Sec. 3; dandingsky/GPAS @3198068, modeling_llama.py,
    GPASBlock, norm_type pre_gpas): after each residual add x <- x - SiLU(a_l) sg(x), one gate
    per layer; y = N_final(x_L). The stream's gradient passes the scaling unchanged."""

    def layer(l, x):
        scale = jax.nn.silu(m.p[f"layers.{l}.gate"])
        for b in m.branches:
            x = x + m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x))
            x = x - scale * jax.lax.stop_gradient(x)
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


@jax.jit
def _hyper_connections(stacked, normed, p):
    """(h_in, carried, B) of one sublayer: the width connection's input sum_i A_m[i] h_i, the
    copies carried on sum_i A_r[i, j] h_i, and the weights B[j] of the sublayer's output in
    each; ``normed`` (the copies normalized) None for static connections."""
    a_m, a_r, beta = p["am"], p["ar"], p["b"]
    if normed is not None:
        a_m = a_m + p["s_alpha"] * jnp.tanh(normed @ p["wm"])[..., 0]
        a_r = a_r + p["s_alpha"] * jnp.tanh(normed @ p["wr"])
        beta = beta + p["s_beta"] * jnp.tanh(normed @ p["wb"])[..., 0]
    h_in = (a_m[..., None] * stacked).sum(-2)
    carried = (a_r[..., None] * stacked[..., :, None, :]).sum(-3)  # sum_i A_r[i, j] h_i
    return h_in, carried, beta


def hyper(m: Stack, x: Any) -> Any:
    """Hyper-connections (Zhu et al. 2025, Sec. 2, arXiv 2409.19606), static and dynamic, on
    Pre-LN sublayers. No official code is public: the equations (Eq. 2, HC = [[0, B], [A_m, A_r]],
    and the dynamic form) as the paper's opening and reviews quoting it give them. n copies
    of the stream, each the input at first; for each sublayer S, per token,
        h_in = sum_i A_m[i] h_i;   h_j <- sum_i A_r[i, j] h_i + B[j] S(N_S(h_in))
        dynamic: Hb = N_hc(H), A_m += s_a tanh(Hb W_m), A_r += s_a tanh(Hb W_r), B += s_b tanh(Hb W_b)^T
        y = N_final(sum_i h_i)"""
    n, dynamic = m.option("n", 4), m.option("dynamic", False)

    def layer(l, h):
        for b in m.branches:
            stacked = jnp.stack(h, axis=-2)  # (B, T, n, d)
            normed = m.norm(f"layers.{l}.ln_{b}_hc", stacked) if dynamic else None
            h_in, carried, beta = _hyper_connections(stacked, normed, m.group(f"layers.{l}.hc_{b}"))
            out = m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", h_in))
            new = carried + beta[..., None] * out[..., None, :]
            h = tuple(new[..., j, :] for j in range(n))
        return h

    return _copies(m, (x,) * n, layer)


@functools.partial(jax.jit, static_argnames=("iterations",))
def _mhc_maps(u, p, iterations):
    """(H_pre, H_post, H_res) per token from the normalized flattened copies u (B, T, n d)."""
    n = p["b_pre"].shape[-1]
    h_pre = jax.nn.sigmoid(p["alpha_pre"] * (u @ p["phi_pre"]) + p["b_pre"])
    h_post = 2 * jax.nn.sigmoid(p["alpha_post"] * (u @ p["phi_post"]) + p["b_post"])
    logits = p["alpha_res"] * (u @ p["phi_res"]).reshape(*u.shape[:-1], n, n) + p["b_res"]
    h_res = jnp.exp(logits)
    for _ in range(iterations):  # Sinkhorn-Knopp: rows, then columns; differentiated as run
        h_res = h_res / h_res.sum(-1, keepdims=True)
        h_res = h_res / h_res.sum(-2, keepdims=True)
    return h_pre, h_post, h_res


def mhc(m: Stack, x: Any) -> Any:
    """mHC (Xie et al. 2026, Sec. 4, arXiv 2512.24880, Eqs. 6-8), on Pre-LN sublayers. No
    official code is public: the equations as reviews quoting the paper give them. Per token,
    from the n copies flattened and normalized, u = N_mix(vec(x)):
        H_pre = sigmoid(a_pre u phi_pre + b_pre);  H_post = 2 sigmoid(a_post u phi_post + b_post)
        H_res = SinkhornKnopp(a_res mat(u phi_res) + b_res)  (t_max rounds; mat row-major n x n)
        x_i <- sum_j H_res[i, j] x_j + H_post[i] S(N_S(sum_j H_pre[j] x_j));  y = N_final(sum_i x_i)"""
    n, iterations = m.option("n", 4), m.option("sinkhorn_iterations", 20)

    def layer(l, xs):
        for b in m.branches:
            stacked = jnp.stack(xs, axis=-2)  # (B, T, n, d)
            u = m.norm(f"layers.{l}.ln_{b}_mix", stacked.reshape(*stacked.shape[:-2], -1))
            h_pre, h_post, h_res = _mhc_maps(u, m.group(f"layers.{l}.mhc_{b}"), iterations)
            out = m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", (h_pre[..., None] * stacked).sum(-2)))
            new = h_res @ stacked + h_post[..., None] * out[..., None, :]
            xs = tuple(new[..., i, :] for i in range(n))
        return xs

    return _copies(m, (x,) * n, layer)


def _copies(m: Stack, h: tuple[Any, ...], layer: Any) -> Any:
    """(N_final(sum of the copies), states) of a stack whose state is a tuple of copies."""
    states = [h]
    for l in range(m.n_layers):
        h = layer(l, h)
        states.append(h)
    return m.norm("final_ln", sum(h)), states


def denseformer(m: Stack, x: Any) -> Any:
    """DenseFormer (Pagliardini et al. 2024, Sec. 3; epfml/DenseFormer @c99a623,
    denseformer/denseformer.py, DWAModules), the 1x1 form: Pre-LN blocks, each followed by a
    learned average of the input and every block output so far,
        X_0 = x;  X_{i+1} = PreLN block i (x_i);  x_{i+1} = sum_j alpha_{i,j} X_j;  y = N_final(x_L)
    The state entering block i is (x_i, X_0, ..., X_i); after the last, x_L alone."""
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


def _copy_names(prefix: str) -> Any:
    """The names of a state of n copies (config: a golden file's model object; None: n = 4)."""

    def names(layer, config=None):
        return tuple(f"{prefix}_{i}" for i in range((config or {}).get("options", {}).get("n", 4)))

    return names


SCHEMES = {f.__name__: f for f in (siamese, ngpt, gpas, hyper, mhc, denseformer)}
STREAMS = {
    "siamese": lambda layer, config=None: ("x", "y"),
    "hyper": _copy_names("h"),
    "mhc": _copy_names("x"),
    "denseformer": lambda layer, config=None: ("x", *(f"X_{j}" for j in range(layer + 1))),
}
