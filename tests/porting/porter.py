"""A porter's own PyTorch model, written as ports are usually written: nn.Linear and nn.LayerNorm
modules, lnref's parameters loaded into them by name. Four placements (post, pre, residual,
deepnorm), each with the mistake that public ports of it have made, switched on by a flag:

    final_norm_in_loop   ResiDual: the final norm of the dual stream applied inside the layer loop
    alpha_on_branch      DeepNorm: LN(x + alpha S(x)) where the paper has LN(alpha x + S(x))
    double_final_norm    Pre-LN: the final LayerNorm applied twice
    eps                  an eps of one's own (a framework's default) in every LayerNorm
    untransposed         lnref's W (d_in, d_out) copied into nn.Linear's weight as it is
    no_beta              DeepNorm's initialization without its beta scaling
"""

from __future__ import annotations

import math

import torch
from torch import nn

PROJECTIONS = ("q", "k", "v", "o")


class Attention(nn.Module):
    def __init__(self, d, heads, causal):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.proj = nn.ModuleDict({p: nn.Linear(d, d) for p in PROJECTIONS})

    def forward(self, x):
        b, t, d = x.shape

        def split(h):
            return h.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = (split(self.proj[p](x)) for p in "qkv")
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        if self.causal:
            scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        return self.proj["o"]((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, d, d_ff):
        super().__init__()
        self.w1, self.w2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

    def forward(self, x):
        return self.w2(torch.relu(self.w1(x)))


class Port(nn.Module):
    """The stack of ``config["scheme"]`` (post, pre, residual, deepnorm), float64."""

    def __init__(self, config, eps=None, dtype=torch.float64, **mistakes):
        super().__init__()
        self.c, self.mistakes = config, mistakes
        d, n = config["d_model"], config["n_layers"]
        eps = config["eps"] if eps is None else eps
        self.attn = nn.ModuleList(Attention(d, config["n_heads"], config["causal"]) for _ in range(n))
        self.ffn = nn.ModuleList(FeedForward(d, config["d_ff"]) for _ in range(n))
        self.ln = nn.ModuleList(nn.ModuleDict({b: nn.LayerNorm(d, eps=eps) for b in ("attn", "ffn")}) for _ in range(n))
        self.final_ln = nn.LayerNorm(d, eps=eps)
        self.to(dtype)

    def branches(self, l):
        return (("attn", self.attn[l]), ("ffn", self.ffn[l]))

    def forward(self, x):
        scheme, n = self.c["scheme"], self.c["n_layers"]
        if scheme == "residual":
            return self.residual(x)
        alpha = (2 * n) ** 0.25 if scheme == "deepnorm" else 1.0
        states = [{"x": x}]
        for l in range(n):
            for name, branch in self.branches(l):
                norm = self.ln[l][name]
                if scheme == "pre":
                    x = x + branch(norm(x))
                elif scheme == "deepnorm" and self.mistakes.get("alpha_on_branch"):
                    x = norm(x + alpha * branch(x))
                else:
                    x = norm(alpha * x + branch(x))
            states.append({"x": x})
        if scheme == "pre":
            x = self.final_ln(x)
            if self.mistakes.get("double_final_norm"):
                x = self.final_ln(x)
        return x, states

    def residual(self, x):
        x_a = x_d = x
        states = [{"x_a": x_a, "x_d": x_d}]
        for l in range(self.c["n_layers"]):
            for name, branch in self.branches(l):
                a = branch(x_a)
                x_d = x_d + a
                x_a = self.ln[l][name](x_a + a)
            if self.mistakes.get("final_norm_in_loop"):
                x_d = self.final_ln(x_d)
            states.append({"x_a": x_a, "x_d": x_d})
        if self.mistakes.get("final_norm_in_loop"):
            return x_a + x_d, states
        return x_a + self.final_ln(x_d), states

    # -- lnref's names --

    def named(self):
        """{lnref name: (parameter, transposed)}: nn.Linear stores W^T."""
        names = {"final_ln.gamma": (self.final_ln.weight, False), "final_ln.beta": (self.final_ln.bias, False)}
        for l in range(self.c["n_layers"]):
            for p in PROJECTIONS:
                linear = self.attn[l].proj[p]
                untransposed = self.mistakes.get("untransposed", False)
                names[f"layers.{l}.attn.w{p}"] = (linear.weight, not untransposed)
                names[f"layers.{l}.attn.b{p}"] = (linear.bias, False)
            for w in ("w1", "w2"):
                linear = getattr(self.ffn[l], w)
                names[f"layers.{l}.ffn.{w}"] = (linear.weight, True)
                names[f"layers.{l}.ffn.b{w[1]}"] = (linear.bias, False)
            for b in ("attn", "ffn"):
                names[f"layers.{l}.ln_{b}.gamma"] = (self.ln[l][b].weight, False)
                names[f"layers.{l}.ln_{b}.beta"] = (self.ln[l][b].bias, False)
        if self.c["scheme"] == "post" or self.c["scheme"] == "deepnorm":
            names = {k: v for k, v in names.items() if not k.startswith("final_ln")}
        return names

    def load_lnref(self, params):
        with torch.no_grad():
            for name, (parameter, transposed) in self.named().items():
                value = torch.as_tensor(params[name]).to(parameter.dtype)
                parameter.copy_(value.T if transposed else value)

    def lnref_grads(self):
        return {f"grads/{n}": (p.grad.T if t else p.grad) for n, (p, t) in self.named().items()}

    def initialized(self, seed):
        """Xavier-normal weights, zero biases (and DeepNorm's beta, unless ``no_beta``)."""
        generator = torch.Generator().manual_seed(seed)
        n = self.c["n_layers"]
        beta = (8 * n) ** -0.25 if self.c["scheme"] == "deepnorm" and not self.mistakes.get("no_beta") else 1.0
        params = {}
        for name, (parameter, transposed) in self.named().items():
            value = torch.zeros_like(parameter)
            if name.endswith("gamma"):
                value += 1
            elif parameter.dim() == 2:
                d_out, d_in = parameter.shape
                value = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                value *= math.sqrt(2 / (d_in + d_out))
            if name.split(".", 2)[-1] in ("attn.wv", "attn.wo", "ffn.w1", "ffn.w2"):
                value *= beta
            params[name] = (value.T if transposed else value).numpy()
        return params


def run(config, params, x, dy, memory, dtype=torch.float64, **mistakes):
    """What lnref.testing.check_port calls: the port's y, loss, gradients and hidden states,
    computed in ``dtype``."""
    model = Port(config, dtype=dtype, **mistakes)
    model.load_lnref(params)
    x = torch.tensor(x, dtype=dtype, requires_grad=True)
    y, states = model(x)
    loss = (y * torch.tensor(dy, dtype=dtype)).sum()
    loss.backward()
    hidden = {f"hidden/{l}/{s}": v for l, state in enumerate(states) for s, v in state.items()}
    return {"y": y, "loss": loss, "grads/input": x.grad, **model.lnref_grads(), **hidden}
