"""An independent PyTorch implementation of the LayerNorm placements, for checking lnref.

Written from the papers' equations with torch's own operations and autograd; it imports
nothing from lnref and reads a golden file (docs/golden-format.md) with NumPy alone. Every
sublayer S is one of

    A(x)  = softmax(Q K^T / sqrt(d_h) [+ causal mask]) V W_o + b_o,  Q = x W_q + b_q, ...
    C(x)  = the same with K, V computed from the memory (decoders; never masked)
    F(x)  = act(x W_1 + b_1) W_2 + b_2,  act = ReLU, GELU or tanh-approximated GELU

and a layer applies them in the order A, (C,) F. Weights are (d_in, d_out): y = x @ W + b.
The config's "gelu" is the exact x Phi(x), torch's default, and "gelu_tanh" the tanh
approximation; files of format version 1 called the tanh approximation "gelu".
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import torch.nn.functional as F


def read_golden(path):
    """(config document, {name: numpy array}) of an .npz golden file."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    config = json.loads(arrays.pop("config").tobytes().decode("utf-8"))
    if config["format_version"] == 1 and config["model"]["activation"] == "gelu":
        config["model"]["activation"] = "gelu_tanh"
    return config, arrays


class Transformer:
    """One stack, parameters given as a dict of torch tensors keyed by lnref's names."""

    def __init__(self, config, params, memory=None):
        self.c = config
        self.p = params
        self.memory = memory
        self.d = config["d_model"]
        self.branches = ["attn"] + (["cross"] if config["cross_attention"] else []) + ["ffn"]

    # -- sublayers --

    def sublayer(self, layer, branch, x):
        prefix = f"layers.{layer}.{branch}."
        if branch == "ffn":
            return self.feed_forward(prefix, x)
        source = self.memory if branch == "cross" else x
        return self.attention(prefix, x, source, causal=self.c["causal"] and branch == "attn")

    def attention(self, prefix, x, source, causal):
        p = {name: self.p[prefix + name] for name in ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")}
        heads = self.c["n_heads"]
        head_dim = self.d // heads

        def split(t):  # (B, T, d) -> (B, H, T, d_h)
            return t.reshape(t.shape[0], t.shape[1], heads, head_dim).transpose(1, 2)

        q = split(x @ p["wq"] + p["bq"])
        k = split(source @ p["wk"] + p["bk"])
        v = split(source @ p["wv"] + p["bv"])
        scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
        if causal:
            future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(diagonal=1)
            scores = scores.masked_fill(future, float("-inf"))
        context = torch.softmax(scores, dim=-1) @ v
        merged = context.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.d)
        return merged @ p["wo"] + p["bo"]

    def feed_forward(self, prefix, x):
        hidden = x @ self.p[prefix + "w1"] + self.p[prefix + "b1"]
        activation = self.c["activation"]
        if activation == "relu":
            hidden = torch.relu(hidden)
        elif activation == "gelu":
            hidden = F.gelu(hidden)  # torch's default: the exact erf form
        elif activation == "gelu_tanh":
            hidden = F.gelu(hidden, approximate="tanh")
        else:
            raise ValueError(f"unknown activation {activation!r}")
        return hidden @ self.p[prefix + "w2"] + self.p[prefix + "b2"]

    def norm(self, name, x):
        gamma = self.p[name + ".gamma"]
        if self.c["norm"] == "rmsnorm":
            return F.rms_norm(x, (self.d,), gamma, eps=self.c["eps"])
        return F.layer_norm(x, (self.d,), gamma, self.p[name + ".beta"], eps=self.c["eps"])

    # -- the schemes: each returns (y, states), states[l] the tuple entering layer l --

    def forward(self, x):
        return getattr(self, "scheme_" + self.c["scheme"])(x)

    def _stack(self, x, layer_fn):
        states = [(x,)]
        for layer in range(self.c["n_layers"]):
            x = layer_fn(layer, x)
            states.append((x,))
        return x, states

    def scheme_post(self, x):
        """Vaswani et al. 2017: x <- LN(x + S(x)); no final LN."""

        def layer_fn(l, x):
            for b in self.branches:
                x = self.norm(f"layers.{l}.ln_{b}", x + self.sublayer(l, b, x))
            return x

        return self._stack(x, layer_fn)

    def scheme_pre(self, x):
        """Xiong et al. 2020: x <- x + S(LN(x)); y = LN_final(x_L)."""

        def layer_fn(l, x):
            for b in self.branches:
                x = x + self.sublayer(l, b, self.norm(f"layers.{l}.ln_{b}", x))
            return x

        x, states = self._stack(x, layer_fn)
        return self.norm("final_ln", x), states

    def scheme_residual(self, x):
        """Xie et al. 2023: a = S(x_a); x_d += a; x_a = LN(x_a + a); y = x_a + LN(x_d)."""
        x_a, x_d = x, x
        states = [(x_a, x_d)]
        for l in range(self.c["n_layers"]):
            for b in self.branches:
                out = self.sublayer(l, b, x_a)
                x_d = x_d + out
                x_a = self.norm(f"layers.{l}.ln_{b}", x_a + out)
            states.append((x_a, x_d))
        return x_a + self.norm("final_ln", x_d), states

    def scheme_b2t(self, x):
        """Takase et al. 2023: the layer input joins before the layer's last LN."""

        def layer_fn(l, x):
            bottom = x
            for b in self.branches[:-1]:
                x = self.norm(f"layers.{l}.ln_{b}", x + self.sublayer(l, b, x))
            last = self.branches[-1]
            return self.norm(f"layers.{l}.ln_{last}", x + self.sublayer(l, last, x) + bottom)

        return self._stack(x, layer_fn)

    def scheme_admin(self, x):
        """Liu et al. 2020: x <- LN(omega * x + S(x)), omega a per-dimension vector."""

        def layer_fn(l, x):
            for b in self.branches:
                omega = self.p[f"layers.{l}.omega_{b}"]
                x = self.norm(f"layers.{l}.ln_{b}", omega * x + self.sublayer(l, b, x))
            return x

        return self._stack(x, layer_fn)

    def scheme_deepnorm(self, x):
        """Wang et al. 2022: x <- LN(alpha x + S(x)), alpha = (2N)^(1/4), decoders (3M)^(1/4)."""
        n = self.c["n_layers"]
        alpha = (3 * n) ** 0.25 if self.c["cross_attention"] else (2 * n) ** 0.25

        def layer_fn(l, x):
            for b in self.branches:
                x = self.norm(f"layers.{l}.ln_{b}", alpha * x + self.sublayer(l, b, x))
            return x

        return self._stack(x, layer_fn)

    def _sandwich_layer(self, l, x):
        for b in self.branches:
            inner = self.sublayer(l, b, self.norm(f"layers.{l}.ln_{b}", x))
            x = x + self.norm(f"layers.{l}.ln_{b}_out", inner)
        return x

    def scheme_sandwich(self, x):
        """Ding et al. 2021: x <- x + LN_out(S(LN(x))); y = LN_final(x_L)."""
        x, states = self._stack(x, self._sandwich_layer)
        return self.norm("final_ln", x), states

    def scheme_peri(self, x):
        """Kim et al. 2025: Sandwich layers between an embedding LN and a final LN."""
        x, states = self._stack(self.norm("embed_ln", x), self._sandwich_layer)
        return self.norm("final_ln", x), states

    def scheme_mixln(self, x):
        """Li et al. 2024: the first floor(alpha L) layers Post-LN, the rest Pre-LN; final LN."""
        post_layers = math.floor(self.c["post_fraction"] * self.c["n_layers"])

        def layer_fn(l, x):
            for b in self.branches:
                name = f"layers.{l}.ln_{b}"
                if l < post_layers:
                    x = self.norm(name, x + self.sublayer(l, b, x))
                else:
                    x = x + self.sublayer(l, b, self.norm(name, x))
            return x

        x, states = self._stack(x, layer_fn)
        return self.norm("final_ln", x), states

    def scheme_dlcl(self, x):
        """Wang et al. 2019: x_{l+1} = sum_k W_{l+1,k} n_k, n_0 = x, n_k = LN(y_k), Pre-LN layers."""
        outputs = [x]
        states = [(x, *outputs)]
        for l in range(self.c["n_layers"]):
            y = x
            for b in self.branches:
                y = y + self.sublayer(l, b, self.norm(f"layers.{l}.ln_{b}", y))
            outputs.append(self.norm(f"layers.{l}.ln_out", y))
            weights = self.p[f"layers.{l}.dlcl_weights"]
            x = sum(weights[k] * n for k, n in enumerate(outputs))
            states.append((x, *outputs))
        return self.norm("final_ln", x), states

    def scheme_rezero(self, x):
        """Bachlechner et al. 2020: x <- x + alpha_l S(x), no normalization."""

        def layer_fn(l, x):
            for b in self.branches:
                x = x + self.p[f"layers.{l}.alpha"] * self.sublayer(l, b, x)
            return x

        return self._stack(x, layer_fn)


STREAMS = {"residual": lambda layer: ("x_a", "x_d"), "dlcl": lambda layer: ("x", *(f"n_{k}" for k in range(layer + 1)))}


def evaluate(path, **overrides):
    """Everything a golden file predicts, recomputed by torch autograd: {name: numpy array}.

    Returns y, loss, grads/<param>, grads/input (grads/memory) and hidden/<l>/<stream>.
    ``overrides`` replace entries of the file's model config (for negative controls).
    """
    document, arrays = read_golden(path)
    config = {**document["model"], **overrides}
    names = [name[len("params/") :] for name in arrays if name.startswith("params/")]
    params = {name: torch.tensor(arrays["params/" + name], requires_grad=True) for name in names}
    x = torch.tensor(arrays["x"], requires_grad=True)
    memory = torch.tensor(arrays["memory"], requires_grad=True) if "memory" in arrays else None
    dy = torch.tensor(arrays["dy"])

    y, states = Transformer(config, params, memory).forward(x)
    loss = (y * dy).sum()
    loss.backward()

    def grad_of(leaf):
        return torch.zeros_like(leaf) if leaf.grad is None else leaf.grad

    results = {"y": y.detach(), "loss": loss.detach()}
    results.update({f"grads/{name}": grad_of(leaf) for name, leaf in params.items()})
    results["grads/input"] = grad_of(x)
    if memory is not None:
        results["grads/memory"] = grad_of(memory)
    stream_names = STREAMS.get(config["scheme"], lambda layer: ("x",))
    for layer, state in enumerate(states):
        for stream, value in zip(stream_names(layer), state):
            results[f"hidden/{layer}/{stream}"] = value.detach()
    return {name: value.numpy() for name, value in results.items()}
