"""The first eleven placements, each a function scheme(m, x) -> (y, states) of the port's
Transformer m (lnref/ports/torch.py): S_b(x) is ``m.sublayer(l, b, x)``, LN a norm ``m.norm(name, x)``,
states[l] the tuple of streams entering layer l."""

from __future__ import annotations

import math


def post(m, x):
    """Vaswani et al. 2017: x <- LN(x + S(x)); no final LN."""

    def layer(l, x):
        for b in m.branches:
            x = m.norm(f"layers.{l}.ln_{b}", x + m.sublayer(l, b, x))
        return x

    return m.stack(x, layer)


def pre(m, x):
    """Xiong et al. 2020: x <- x + S(LN(x)); y = LN_final(x_L)."""

    def layer(l, x):
        for b in m.branches:
            x = x + m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x))
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def residual(m, x):
    """Xie et al. 2023 (ResiDual): a = S(x_a); x_d += a; x_a = LN(x_a + a); y = x_a + LN(x_d)."""
    x_a, x_d = x, x
    states = [(x_a, x_d)]
    for l in range(m.n_layers):
        for b in m.branches:
            out = m.sublayer(l, b, x_a)
            x_d = x_d + out
            x_a = m.norm(f"layers.{l}.ln_{b}", x_a + out)
        states.append((x_a, x_d))
    return x_a + m.norm("final_ln", x_d), states


def b2t(m, x):
    """Takase et al. 2023: the layer input joins before the layer's last LN."""

    def layer(l, x):
        bottom = x
        for b in m.branches[:-1]:
            x = m.norm(f"layers.{l}.ln_{b}", x + m.sublayer(l, b, x))
        last = m.branches[-1]
        return m.norm(f"layers.{l}.ln_{last}", x + m.sublayer(l, last, x) + bottom)

    return m.stack(x, layer)


def admin(m, x):
    """Liu et al. 2020: x <- LN(omega * x + S(x)), omega a per-dimension vector."""

    def layer(l, x):
        for b in m.branches:
            x = m.norm(f"layers.{l}.ln_{b}", m.p[f"layers.{l}.omega_{b}"] * x + m.sublayer(l, b, x))
        return x

    return m.stack(x, layer)


def deepnorm(m, x):
    """Wang et al. 2022: x <- LN(alpha x + S(x)), alpha = (2N)^(1/4), decoders (3M)^(1/4); the
    encoder of an encoder-decoder model (N encoder, M decoder layers) 0.81 (N^4 M)^(1/16)."""
    if m.c.get("role") == "encoder":
        alpha = 0.81 * (m.c["encoder_layers"] ** 4 * m.c["decoder_layers"]) ** (1 / 16)
    else:
        alpha = (3 * m.n_layers if m.c["cross_attention"] else 2 * m.n_layers) ** 0.25

    def layer(l, x):
        for b in m.branches:
            x = m.norm(f"layers.{l}.ln_{b}", alpha * x + m.sublayer(l, b, x))
        return x

    return m.stack(x, layer)


def sandwich_layer(m, l, x):
    """x <- x + LN_out(S(LN(x))) for each sublayer S."""
    for b in m.branches:
        x = x + m.norm(f"layers.{l}.ln_{b}_out", m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x)))
    return x


def sandwich(m, x):
    """Ding et al. 2021 (CogView): Sandwich layers; y = LN_final(x_L)."""
    x, states = m.stack(x, lambda l, x: sandwich_layer(m, l, x))
    return m.norm("final_ln", x), states


def peri(m, x):
    """Kim et al. 2025: Sandwich layers between an embedding LN and a final LN."""
    x, states = m.stack(m.norm("embed_ln", x), lambda l, x: sandwich_layer(m, l, x))
    return m.norm("final_ln", x), states


def mixln(m, x):
    """Li et al. 2024: the first floor(alpha L) layers Post-LN, the rest Pre-LN; final LN."""
    post_layers = math.floor(m.c["post_fraction"] * m.n_layers)

    def layer(l, x):
        for b in m.branches:
            name = f"layers.{l}.ln_{b}"
            x = m.norm(name, x + m.sublayer(l, b, x)) if l < post_layers else x + m.sublayer(l, b, m.norm(name, x))
        return x

    x, states = m.stack(x, layer)
    return m.norm("final_ln", x), states


def dlcl(m, x):
    """Wang et al. 2019: x_{l+1} = sum_k W_{l+1,k} n_k, n_0 = x, n_k = LN(y_k), Pre-LN layers."""
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


def rezero(m, x):
    """Bachlechner et al. 2020: x <- x + alpha_l S(x), no normalization."""

    def layer(l, x):
        for b in m.branches:
            x = x + m.p[f"layers.{l}.alpha"] * m.sublayer(l, b, x)
        return x

    return m.stack(x, layer)


SCHEMES = {f.__name__: f for f in (post, pre, residual, b2t, admin, deepnorm, sandwich, peri, mixln, dlcl, rezero)}
STREAMS = {  # the names of a state's arrays, by layer and config
    "residual": lambda layer, config=None: ("x_a", "x_d"),
    "dlcl": lambda layer, config=None: ("x", *(f"n_{k}" for k in range(layer + 1))),
}
