"""A pure-JAX port of lnref's LayerNorm placements, written from the papers' equations.

It imports nothing of lnref's computation: only the parameter names (lnref's, documented in
docs/golden-format.md) and the configuration's fields are shared, so that it can disagree with
lnref where lnref is wrong, and so that it is what a JAX user copies from. Every function is
pure: ``forward(config, params, x, memory)`` of a config dict (a golden file's ``model``
object), a dict of arrays by lnref's names, the input (B, T, d) and, for decoder stacks, the
memory (B, M, d). Importing this module turns on float64 in JAX (``jax_enable_x64``): lnref is
the float64 oracle, and the port is checked against it at 1e-10.

    A(x)  = softmax(N_q(Q) N_k(K)^T / sqrt(d_h) [+ causal mask]) V W_o + b_o,  Q = x W_q + b_q, ...
    C(x)  = the same with K and V from the memory (decoders; never masked)
    F(x)  = act(x W_1 + b_1) W_2 + b_2,   act: relu, gelu = x Phi(x), gelu_tanh (tanh approximation)

A layer applies its sublayers in the order A, (C,) F. Weights are (d_in, d_out): y = x @ W + b.
N_q and N_k are the QK-norm switch (``qk_norm``: none, head, full); a norm is the config's kind
(``norm``: layernorm, rmsnorm) with the config's one eps.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

Params = dict[str, Any]

# ----- norm kinds, activations, QK-norm -------------------------------------------------------


def layer_norm(x, p, eps):
    """Ba et al. 2016: gamma (x - mean) / sqrt(var + eps) + beta over the last axis, biased variance."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["gamma"] + p["beta"]


def rms_norm(x, p, eps):
    """Zhang and Sennrich 2019: gamma x / sqrt(mean(x^2) + eps)."""
    return x / jnp.sqrt((x**2).mean(-1, keepdims=True) + eps) * p["gamma"]


NORM_KINDS: dict[str, Callable[..., Any]] = {"layernorm": layer_norm, "rmsnorm": rms_norm}

ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "relu": jax.nn.relu,
    "gelu": lambda h: jax.nn.gelu(h, approximate=False),  # h Phi(h); jax.nn.gelu's default is the tanh form
    "gelu_tanh": lambda h: jax.nn.gelu(h, approximate=True),
}


def per_head(fn, x, heads):
    """``fn`` applied to each head's d/H features of x (..., d) on their own."""
    split = x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)
    return fn(split).reshape(x.shape)


# Each variant maps the projected q and k (B, T, d) of one attention: norm(name, x) applies
# the model's norm kind with the attention's parameters of that name (layers.3.attn.q_norm).
QK_NORMS: dict[str, Callable[..., Any]] = {
    "none": lambda q, k, heads, norm: (q, k),
    # Gemma 3, HybridNorm: over each head's d_h features
    "head": lambda q, k, heads, norm: (
        per_head(lambda t: norm("q_norm", t), q, heads),
        per_head(lambda t: norm("k_norm", t), k, heads),
    ),
    # OLMo 2: over the whole d-wide projections, before the heads are split
    "full": lambda q, k, heads, norm: (norm("q_norm", q), norm("k_norm", k)),
}


# ----- the sublayers: jitted once per shape and setting, reused by every layer -------------------


@functools.partial(jax.jit, static_argnames=("kind", "eps"))
def norm(x, p, kind, eps):
    """The norm of ``kind`` with parameters p ({"gamma": ..., "beta": ...})."""
    return NORM_KINDS[kind](x, p, eps)


@functools.partial(jax.jit, static_argnames=("activation",))
def feed_forward(x, p, activation):
    """F(x) = act(x W_1 + b_1) W_2 + b_2."""
    return ACTIVATIONS[activation](x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


@functools.partial(jax.jit, static_argnames=("heads", "causal", "qk_norm", "kind", "eps"))
def attention(x, source, p, heads, causal, qk_norm, kind, eps):
    """A(x) = softmax(N_q(Q) N_k(K)^T / sqrt(d_h) + M) V W_o + b_o; Q from x, K and V from source.

    p holds W_q, b_q, ... and the QK-norm's parameters (``q_norm.gamma``, ...)."""

    def qk(name, t):
        return NORM_KINDS[kind](t, {k.partition(".")[2]: v for k, v in p.items() if k.startswith(name + ".")}, eps)

    q, k, v = x @ p["wq"] + p["bq"], source @ p["wk"] + p["bk"], source @ p["wv"] + p["bv"]
    q, k = QK_NORMS[qk_norm](q, k, heads, qk)
    head_dim = q.shape[-1] // heads

    def split(t):  # (B, T, d) -> (B, H, T, d_h)
        return t.reshape(t.shape[0], t.shape[1], heads, head_dim).transpose(0, 2, 1, 3)

    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(head_dim)
    if causal:
        t, s = scores.shape[-2:]
        scores = jnp.where(jnp.tril(jnp.ones((t, s), dtype=bool)), scores, -jnp.inf)
    heads_out = jax.nn.softmax(scores, axis=-1) @ split(v)
    merged = heads_out.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)
    return merged @ p["wo"] + p["bo"]


# ----- the stack's pieces ---------------------------------------------------------------------


class Stack:
    """One stack's configuration, parameters and memory, and its pieces: the sublayers S_b of
    layer l (``sublayer(l, b, x)``) and its norms (``norm(name, x)``)."""

    def __init__(self, config: dict[str, Any], params: Params, memory: Any = None) -> None:
        self.c, self.p, self.memory = config, params, memory
        self.n_layers, self.heads = config["n_layers"], config["n_heads"]
        self.branches = ["attn"] + (["cross"] if config["cross_attention"] else []) + ["ffn"]
        for name, known in (("norm", NORM_KINDS), ("activation", ACTIVATIONS), ("qk_norm", QK_NORMS)):
            if config.get(name, "none") not in known:
                raise ValueError(f"the JAX port has no {name} {config[name]!r}; it has {', '.join(known)}")

    def group(self, prefix: str) -> Params:
        """{short name: value} of the parameters named ``prefix.<short name>``."""
        return {name[len(prefix) + 1 :]: v for name, v in self.p.items() if name.startswith(prefix + ".")}

    def norm(self, name: str, x: Any) -> Any:
        return norm(x, self.group(name), self.c["norm"], self.c["eps"])

    def sublayer(self, l: int, branch: str, x: Any) -> Any:
        prefix, c = f"layers.{l}.{branch}", self.c
        if branch == "ffn":
            return feed_forward(x, self.group(prefix), c["activation"])
        source = self.memory if branch == "cross" else x
        causal = c["causal"] and branch == "attn"
        return attention(
            x, source, self.group(prefix), self.heads, causal, c.get("qk_norm", "none"), c["norm"], c["eps"]
        )

    def stack(self, x: Any, layer: Callable[[int, Any], Any]) -> tuple[Any, list[tuple[Any, ...]]]:
        """(x_L, states) for x_{l+1} = layer(l, x_l); states[l] = (x_l,)."""
        states = [(x,)]
        for l in range(self.n_layers):
            x = layer(l, x)
            states.append((x,))
        return x, states


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


SCHEMES: dict[str, Callable[[Stack, Any], Any]] = {
    f.__name__: f for f in (post, pre, residual, b2t, admin, deepnorm, sandwich, peri, mixln, dlcl, rezero)
}
STREAMS: dict[str, Callable[[int], tuple[str, ...]]] = {
    "residual": lambda layer: ("x_a", "x_d"),
    "dlcl": lambda layer: ("x", *(f"n_{k}" for k in range(layer + 1))),
}


# ----- running a port --------------------------------------------------------------------------


def forward(config: dict[str, Any], params: Params, x: Any, memory: Any = None) -> tuple[Any, list[tuple[Any, ...]]]:
    """(y, states): the stack's output and, per layer l = 0..L, the streams entering layer l."""
    scheme = SCHEMES.get(config["scheme"])
    if scheme is None:
        raise ValueError(f"the JAX port has no scheme {config['scheme']!r}; it has {', '.join(SCHEMES)}")
    return scheme(Stack(config, params, memory), x)


def run(config: dict[str, Any], params: Params, x: Any, dy: Any, memory: Any = None) -> dict[str, np.ndarray]:
    """Everything a golden record predicts, by JAX's autodiff: y, loss = sum(y * dy), grads/<param>,
    grads/input (grads/memory), hidden/<l>/<stream>. The signature lnref.testing.check_port calls."""
    params = {name: jnp.asarray(value) for name, value in params.items()}
    x, dy = jnp.asarray(x), jnp.asarray(dy)
    memory = None if memory is None else jnp.asarray(memory)

    def loss_of(params, x, memory):
        y, states = forward(config, params, x, memory)
        return jnp.sum(y * dy), (y, states)

    argnums = (0, 1, 2) if memory is not None else (0, 1)
    (loss, (y, states)), grads = jax.value_and_grad(loss_of, argnums=argnums, has_aux=True)(params, x, memory)
    results = {"y": y, "loss": loss, "grads/input": grads[1]}
    results.update({f"grads/{name}": g for name, g in grads[0].items()})
    if memory is not None:
        results["grads/memory"] = grads[2]
    streams = STREAMS.get(config["scheme"], lambda layer: ("x",))
    for l, state in enumerate(states):
        results.update({f"hidden/{l}/{name}": value for name, value in zip(streams(l), state)})
    return {name: np.asarray(value) for name, value in results.items()}


def read_golden(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config document, {name: array}) of an .npz golden file, its activation named as format
    version 2 and later name it (in version 1, "gelu" was the tanh approximation)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    document = json.loads(arrays.pop("config").tobytes().decode("utf-8"))
    if document["format_version"] == 1 and document["model"]["activation"] == "gelu":
        document["model"]["activation"] = "gelu_tanh"
    return document, arrays


def evaluate(path: str, **overrides: Any) -> dict[str, np.ndarray]:
    """Every array the golden file at ``path`` predicts, recomputed by this port; ``overrides``
    replace entries of the file's model config (for negative controls)."""
    document, arrays = read_golden(path)
    config = {**document["model"], **overrides}
    params = {name[len("params/") :]: value for name, value in arrays.items() if name.startswith("params/")}
    return run(config, params, arrays["x"], arrays["dy"], arrays.get("memory"))
