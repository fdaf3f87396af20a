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
N_q and N_k are the QK-norm switch (``qk_norm``); a norm is the config's kind (``norm``) with
the config's one eps. The schemes are in jax_schemes.py and jax_family2.py.
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


def dyt(x, p, eps):
    """Zhu et al. 2025, Transformers without Normalization: gamma tanh(alpha x) + beta, alpha a
    scalar; no statistics and no eps."""
    return p["gamma"] * jnp.tanh(p["alpha"] * x) + p["beta"]


def scale_norm(x, p, eps):
    """Nguyen and Salazar 2019, Transformers without Tears: g x / max(||x||_2, eps), g a scalar."""
    return p["g"] * x / jnp.maximum(jnp.sqrt((x**2).sum(-1, keepdims=True)), eps)


def derf(x, p, eps):
    """Chen et al. 2025, Stronger Normalization-Free Transformers: gamma erf(alpha x + s) + beta,
    alpha and s scalars; no eps."""
    return p["gamma"] * jax.scipy.special.erf(p["alpha"] * x + p["shift"]) + p["beta"]


def rms_norm_plus_one(x, p, eps):
    """Gemma's RMSNorm (Gemma Team 2024; google-deepmind/gemma _layers.py, RMSNorm):
    (1 + gamma) x / sqrt(mean(x^2) + eps), the gain stored minus one."""
    return x / jnp.sqrt((x**2).mean(-1, keepdims=True) + eps) * (1 + p["gamma"])


NORM_KINDS: dict[str, Callable[..., Any]] = {
    "layernorm": layer_norm,
    "rmsnorm": rms_norm,
    "dyt": dyt,
    "scalenorm": scale_norm,
    "derf": derf,
    "rmsnorm_plus_one": rms_norm_plus_one,
}

ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "relu": jax.nn.relu,
    "gelu": lambda h: jax.nn.gelu(h, approximate=False),  # h Phi(h); jax.nn.gelu's default is the tanh form
    "gelu_tanh": lambda h: jax.nn.gelu(h, approximate=True),
}


def per_head(fn, x, heads):
    """``fn`` applied to each head's d/H features of x (..., d) on their own."""
    split = x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)
    return fn(split).reshape(x.shape)


def unit_heads(x, heads):
    """Each head's vector of x divided by its L2 norm."""
    return per_head(lambda h: h / jnp.sqrt((h**2).sum(-1, keepdims=True)), x, heads)


# The QK-norm switch: each variant maps the projected q, k, v (B, T, d) of one attention to
# (q, k, v, s), the logits of head h being s q_h k_h^T. norm(name, t) applies the model's norm
# kind with the attention's parameters of that name (layers.3.attn.q_norm); p holds the
# attention's own parameters (layers.3.attn.logit_gain is p["logit_gain"]).


def _plain(q, k, v, heads, norm, p):
    """Vaswani et al. 2017: q and k as projected, s = 1/sqrt(d_h)."""
    return q, k, v, 1 / math.sqrt(q.shape[-1] // heads)


def _head(q, k, v, heads, norm, p):
    """Gemma 3, HybridNorm: N_q and N_k over each head's d_h features."""
    q, k = per_head(lambda t: norm("q_norm", t), q, heads), per_head(lambda t: norm("k_norm", t), k, heads)
    return q, k, v, 1 / math.sqrt(q.shape[-1] // heads)


def _head_and_v(q, k, v, heads, norm, p):
    """HybridNorm's QKV-norm: N_q, N_k and N_v over each head's d_h features."""
    q, k, v, s = _head(q, k, v, heads, norm, p)
    return q, k, per_head(lambda t: norm("v_norm", t), v, heads), s


def _full(q, k, v, heads, norm, p):
    """OLMo 2: N_q and N_k over the whole d-wide projections, before the heads are split."""
    return norm("q_norm", q), norm("k_norm", k), v, 1 / math.sqrt(q.shape[-1] // heads)


def _l2(q, k, v, heads, norm, p):
    """Henry et al. 2020, Query-Key Normalization: logits g <q_h/|q_h|, k_h/|k_h|>, one learned g."""
    return unit_heads(q, heads), unit_heads(k, heads), v, p["logit_gain"]


def _cosine(q, k, v, heads, norm, p):
    """Liu et al. 2022, Swin Transformer V2, Sec. 3.2: logits cos(q_h, k_h) exp(min(t_h, log 100))."""
    scale = jnp.exp(jnp.minimum(p["log_logit_scale"], math.log(100.0)))
    return unit_heads(q, heads), unit_heads(k, heads), v, scale.reshape(heads, 1, 1)


QK_NORMS: dict[str, Callable[..., Any]] = {
    "none": _plain,
    "head": _head,
    "head+v": _head_and_v,
    "full": _full,
    "l2": _l2,
    "cosine": _cosine,
}


# ----- the sublayers: jitted once per shape and setting, reused by every layer -------------------


@functools.partial(jax.jit, static_argnames=("kind", "eps"))
def norm(x, p, kind, eps):
    """The norm of ``kind`` with parameters p ({"gamma": ..., "beta": ...})."""
    return NORM_KINDS[kind](x, p, eps)


@functools.partial(jax.jit, static_argnames=("activation", "kind", "eps"))
def feed_forward(x, p, pieces, activation, kind, eps):
    """F(x) = N_hidden(act(x W_1 + b_1)) W_2 + b_2; N_hidden (over the d_ff features) when
    ``pieces`` holds its parameters as "hidden_norm"."""
    hidden = ACTIVATIONS[activation](x @ p["w1"] + p["b1"])
    if "hidden_norm" in pieces:
        hidden = NORM_KINDS[kind](hidden, pieces["hidden_norm"], eps)
    return hidden @ p["w2"] + p["b2"]


@functools.partial(jax.jit, static_argnames=("heads", "causal", "qk_norm", "kind", "eps"))
def attention(x, source, p, pieces, heads, causal, qk_norm, kind, eps):
    """A(x) = N_heads(c * softmax(s N_q(Q) N_k(K)^T + M) N_v(V)) W_o + b_o; Q from x, K and V
    from ``source``; s and the QK-norm from the switch ``qk_norm``.

    p holds W_q, b_q, ... and the switch's parameters (``q_norm.gamma``, ``logit_gain``, ...);
    ``pieces`` a scheme's own optional pieces: "q_norm", "k_norm", "v_norm" (norms over each
    head's features), "head_scale" (one gain c_h per head), "heads_norm" (a norm over the d
    features of the concatenated heads)."""

    def own(name):
        return {k.partition(".")[2]: v for k, v in p.items() if k.startswith(name + ".")}

    kind_of = NORM_KINDS[kind]
    q, k, v = x @ p["wq"] + p["bq"], source @ p["wk"] + p["bk"], source @ p["wv"] + p["bv"]
    q, k, v = (
        per_head(lambda t, name=name: kind_of(t, pieces[name], eps), t, heads) if name in pieces else t
        for name, t in (("q_norm", q), ("k_norm", k), ("v_norm", v))
    )
    q, k, v, scale = QK_NORMS[qk_norm](q, k, v, heads, lambda name, t: kind_of(t, own(name), eps), p)
    head_dim = q.shape[-1] // heads

    def split(t):  # (B, T, d) -> (B, H, T, d_h)
        return t.reshape(t.shape[0], t.shape[1], heads, head_dim).transpose(0, 2, 1, 3)

    scores = scale * (split(q) @ split(k).transpose(0, 1, 3, 2))
    if causal:
        t, s = scores.shape[-2:]
        scores = jnp.where(jnp.tril(jnp.ones((t, s), dtype=bool)), scores, -jnp.inf)
    heads_out = jax.nn.softmax(scores, axis=-1) @ split(v)  # (B, H, T, d_h)
    if "head_scale" in pieces:
        heads_out = heads_out * pieces["head_scale"].reshape(heads, 1, 1)
    merged = heads_out.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)
    if "heads_norm" in pieces:
        merged = kind_of(merged, pieces["heads_norm"], eps)
    return merged @ p["wo"] + p["bo"]


# ----- the stack's pieces ---------------------------------------------------------------------


class Stack:
    """One stack's configuration, parameters and memory, and its pieces: the sublayers S_b of
    layer l (``sublayer(l, b, x, **pieces)``), its norms (``norm(name, x)``), its parameters
    (``p[name]``) and the scheme's own options (``option(name, default)``)."""

    def __init__(self, config: dict[str, Any], params: Params, memory: Any = None) -> None:
        self.c, self.p, self.memory = config, params, memory
        self.n_layers, self.heads = config["n_layers"], config["n_heads"]
        self.branches = ["attn"] + (["cross"] if config["cross_attention"] else []) + ["ffn"]
        for name, known in (("norm", NORM_KINDS), ("activation", ACTIVATIONS), ("qk_norm", QK_NORMS)):
            if config.get(name, "none") not in known:
                raise ValueError(f"the JAX port has no {name} {config[name]!r}; it has {', '.join(known)}")
        self.activation = ACTIVATIONS[config["activation"]]  # the function, for schemes with their own FFN

    def option(self, name: str, default: Any) -> Any:
        """A scheme's own option: a golden file's config holds only those set away from the default."""
        return self.c.get("options", {}).get(name, default)

    def group(self, prefix: str) -> Params:
        """{short name: value} of the parameters named ``prefix.<short name>``."""
        return {name[len(prefix) + 1 :]: v for name, v in self.p.items() if name.startswith(prefix + ".")}

    def norm(self, name: str, x: Any) -> Any:
        return norm(x, self.group(name), self.c["norm"], self.c["eps"])

    def sublayer(self, l: int, branch: str, x: Any, **pieces: str) -> Any:
        """S_b(x) of layer l; ``pieces`` name the layer's norms and parameters a scheme adds inside
        it (``heads_norm="ln_heads"``: layers.{l}.ln_heads; ``head_scale="head_scale"``)."""
        prefix, c = f"layers.{l}.{branch}", self.c
        own = {
            key: self.p[f"layers.{l}.{name}"] if key == "head_scale" else self.group(f"layers.{l}.{name}")
            for key, name in pieces.items()
        }
        if branch == "ffn":
            return feed_forward(x, self.group(prefix), own, c["activation"], c["norm"], c["eps"])
        source = self.memory if branch == "cross" else x
        causal = c["causal"] and branch == "attn"
        qk = c.get("qk_norm", "none")
        return attention(x, source, self.group(prefix), own, self.heads, causal, qk, c["norm"], c["eps"])

    def stack(self, x: Any, layer: Callable[[int, Any], Any]) -> tuple[Any, list[tuple[Any, ...]]]:
        """(x_L, states) for x_{l+1} = layer(l, x_l); states[l] = (x_l,)."""
        states = [(x,)]
        for l in range(self.n_layers):
            x = layer(l, x)
            states.append((x,))
        return x, states


from lnref.ports.jax_schemes import SCHEMES, STREAMS  # noqa: E402  (the schemes use the pieces above)

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
    streams = STREAMS.get(config["scheme"], lambda layer, config=None: ("x",))
    for l, state in enumerate(states):
        results.update({f"hidden/{l}/{name}": value for name, value in zip(streams(l, config), state)})
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
