"""A PyTorch port of lnref's LayerNorm placements, independent of lnref, for checking it and
for copying from (the extra ``lnref[torch]``).

Written from the papers' equations with torch's own operations and autograd; it imports
nothing from lnref and reads a golden file (docs/golden-format.md) with NumPy alone; lnref's
parameters are loaded by their documented names. ``forward(config, params, x, memory)``
computes a stack, ``run(config, params, x, dy, memory)`` is what lnref.testing.check_port
calls, ``evaluate(path)`` recomputes a golden file. Every sublayer S is one of

    A(x)  = softmax(Q K^T / sqrt(d_h) [+ causal mask]) V W_o + b_o,  Q = x W_q + b_q, ...
    C(x)  = the same with K, V computed from the memory (decoders; never masked)
    F(x)  = act(x W_1 + b_1) W_2 + b_2,  act = ReLU, GELU or tanh-approximated GELU

and a layer applies them in the order A, (C,) F. Weights are (d_in, d_out): y = x @ W + b.
The config's "gelu" is the exact x Phi(x), torch's default, and "gelu_tanh" the tanh
approximation; files of format version 1 called the tanh approximation "gelu".

The schemes are functions ``scheme(m, x) -> (y, states)`` of a :class:`Transformer` m (its
sublayers, norms and parameters), one per scheme: torch_schemes.py holds the first eleven,
torch_family.py the next nine, torch_family2.py the rest. The norm kinds, QK-norm variants and activations are in
torch_norms.py.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from lnref.ports import torch_family, torch_family2, torch_schemes
from lnref.ports.torch_norms import NORM_KINDS, QK_NORMS, activation, per_head

SCHEMES = {**torch_schemes.SCHEMES, **torch_family.SCHEMES, **torch_family2.SCHEMES}
# Names for a scheme with settings preset; a golden file's config holds the settings themselves.
ALIASES = {"gemma2": "sandwich", "gemma3": "sandwich", "skipinit": "rezero"}
SCHEMES.update({alias: SCHEMES[base] for alias, base in ALIASES.items()})
STREAMS = {**torch_schemes.STREAMS, **torch_family.STREAMS, **torch_family2.STREAMS}


def read_golden(path):
    """(config document, {name: numpy array}) of an .npz golden file, its activation named
    as format version 2 names it."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    config = json.loads(arrays.pop("config").tobytes().decode("utf-8"))
    if config["format_version"] == 1 and config["model"]["activation"] == "gelu":
        config["model"]["activation"] = "gelu_tanh"
    return config, arrays


class Transformer:
    """One stack's pieces, parameters given as a dict of torch tensors keyed by lnref's names."""

    def __init__(self, config, params, memory=None):
        self.c = config
        self.p = params
        self.memory = memory
        self.d = config["d_model"]
        self.heads = config["n_heads"]
        self.n_layers = config["n_layers"]
        self.act = activation(config["activation"])
        self.qk_norm = QK_NORMS[config.get("qk_norm", "none")]  # absent from files older than the switch
        self.branches = ["attn"] + (["cross"] if config["cross_attention"] else []) + ["ffn"]
        self.groups = {}  # "layers.3.ln_attn" -> {"gamma": ..., "beta": ...}
        for name, value in params.items():
            group, _, short = name.rpartition(".")
            self.groups.setdefault(group, {})[short] = value

    def option(self, name, default):
        """A scheme's own option: the file's config stores only those set away from the default."""
        return self.c.get("options", {}).get(name, default)

    def norm(self, name, x, heads=False):
        """The norm ``name`` (``layers.3.ln_attn``) of the configured kind; ``heads``: over each
        head's d_h features on its own."""
        p = self.groups[name]
        kind = NORM_KINDS[self.c["norm"]]
        if heads:
            return per_head(lambda t: kind(t, p, self.c["eps"]), x, self.heads)
        return kind(x, p, self.c["eps"])

    # -- sublayers --

    def sublayer(self, layer, branch, x, **pieces):
        """Branch ``branch`` (attn, cross, ffn) of layer ``layer`` on x; ``pieces`` (as below)
        name norms and parameters of the layer: ``heads_norm="ln_inner"`` is layers.{layer}.ln_inner."""
        prefix = f"layers.{layer}.{branch}."
        pieces = {key: f"layers.{layer}.{name}" for key, name in pieces.items()}
        if branch == "ffn":
            return self.feed_forward(prefix, x, **pieces)
        source = self.memory if branch == "cross" else x
        return self.attention(prefix, x, source, causal=self.c["causal"] and branch == "attn", **pieces)

    def attention(
        self, prefix, x, source, causal, q_norm=None, k_norm=None, v_norm=None, head_scale=None, heads_norm=None
    ):
        """A(x) = N_heads(MHA(N_q(Q), N_k(K), N_v(V)) * head_scale) W_o + b_o, each piece optional.

        N_q, N_k, N_v: names of norms over each head's d_h features; head_scale: the name of a
        parameter of one gain per head; N_heads: a norm over the concatenated heads (d features).
        The model's QK-norm switch (torch_norms.QK_NORMS) then acts on every attention.
        """
        p = {name: self.p[prefix + name] for name in ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")}
        q, k, v = x @ p["wq"] + p["bq"], source @ p["wk"] + p["bk"], source @ p["wv"] + p["bv"]
        q = q if q_norm is None else self.norm(q_norm, q, heads=True)
        k = k if k_norm is None else self.norm(k_norm, k, heads=True)
        v = v if v_norm is None else self.norm(v_norm, v, heads=True)

        def norm(name, t):  # the QK-norm switch's parameters sit under the sublayer: layers.3.attn.q_norm
            return self.norm(prefix + name, t)

        q, k, v, scale = self.qk_norm(q, k, v, self.heads, norm, lambda name: self.p[prefix + name])

        def split(t):  # (B, T, d) -> (B, H, T, d_h)
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        scores = scale * (split(q) @ split(k).transpose(-2, -1))
        if causal:
            future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(diagonal=1)
            scores = scores.masked_fill(future, float("-inf"))
        heads = torch.softmax(scores, dim=-1) @ split(v)  # (B, H, T, d_h)
        if head_scale is not None:
            heads = heads * self.p[head_scale].reshape(-1, 1, 1)
        merged = heads.transpose(1, 2).flatten(-2)  # (B, T, d)
        if heads_norm is not None:
            merged = self.norm(heads_norm, merged)
        return merged @ p["wo"] + p["bo"]

    def feed_forward(self, prefix, x, hidden_norm=None):
        """F(x) = N_h(act(x W_1 + b_1)) W_2 + b_2, N_h (over d_ff features) optional."""
        hidden = self.act(x @ self.p[prefix + "w1"] + self.p[prefix + "b1"])
        if hidden_norm is not None:
            hidden = self.norm(hidden_norm, hidden)
        return hidden @ self.p[prefix + "w2"] + self.p[prefix + "b2"]

    # -- a stack of one-stream layers --

    def stack(self, x, layer_fn):
        """(x_L, states) for x_{l+1} = layer_fn(l, x_l); states[l] = (x_l,)."""
        states = [(x,)]
        for layer in range(self.n_layers):
            x = layer_fn(layer, x)
            states.append((x,))
        return x, states


def forward(config, params, x, memory=None):
    """(y, states): the stack of ``config`` (a golden file's ``model`` object) on x, its
    parameters ``params`` torch tensors by lnref's names; states[l] the streams entering layer l."""
    scheme = SCHEMES.get(config["scheme"])
    if scheme is None:
        raise ValueError(f"the PyTorch port has no scheme {config['scheme']!r}; it has {', '.join(SCHEMES)}")
    return scheme(Transformer(config, params, memory), x)


def run(config, params, x, dy, memory=None):
    """Everything a golden record predicts, by torch autograd: {name: numpy array} with y, loss =
    sum(y * dy), grads/<param>, grads/input (grads/memory) and hidden/<l>/<stream>. The
    arguments are arrays (the signature lnref.testing.check_port calls)."""
    params = {name: torch.tensor(np.asarray(value), requires_grad=True) for name, value in params.items()}
    x = torch.tensor(np.asarray(x), requires_grad=True)
    memory = None if memory is None else torch.tensor(np.asarray(memory), requires_grad=True)
    y, states = forward(config, params, x, memory)
    loss = (y * torch.tensor(np.asarray(dy))).sum()
    loss.backward()

    def grad_of(leaf):
        return torch.zeros_like(leaf) if leaf.grad is None else leaf.grad

    results = {"y": y.detach(), "loss": loss.detach()}
    results.update({f"grads/{name}": grad_of(leaf) for name, leaf in params.items()})
    results["grads/input"] = grad_of(x)
    if memory is not None:
        results["grads/memory"] = grad_of(memory)
    stream_names = STREAMS.get(config["scheme"], lambda layer, config=None: ("x",))
    for layer, state in enumerate(states):
        for stream, value in zip(stream_names(layer, config), state):
            results[f"hidden/{layer}/{stream}"] = value.detach()
    return {name: value.numpy() for name, value in results.items()}


def evaluate(path, **overrides):
    """Everything a golden file of one stack predicts, recomputed by torch autograd (as
    :func:`run`); ``overrides`` replace entries of the file's model config (for negative
    controls). An encoder-decoder model's file is ``torch_encdec.evaluate``'s."""
    document, arrays = read_golden(path)
    if document["model"].get("role") == "encoder-decoder":
        raise ValueError(f"{path} holds an encoder-decoder model: lnref.ports.torch_encdec.evaluate reads it")
    config = {**document["model"], **overrides}
    params = {name[len("params/") :]: value for name, value in arrays.items() if name.startswith("params/")}
    return run(config, params, arrays["x"], arrays["dy"], arrays.get("memory"))
