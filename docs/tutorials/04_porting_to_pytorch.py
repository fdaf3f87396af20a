# %% [markdown]
# # Porting a placement to PyTorch and testing it with lnref
#
# lnref is meant as the oracle a port is tested against. This tutorial ports Pre-LN to PyTorch
# the way one would in a real code base (`nn.Linear`, `nn.LayerNorm`, PyTorch's attention
# kernel), tests it against an lnref golden file to float64 precision, and then plants the
# commonest bug of a multi-head port to see what the comparison says.
#
# The workflow: `lnref export` writes a *golden file* (the model's configuration, inputs,
# parameters, output, every gradient and every layer's hidden state); the port loads the
# parameters, runs the same inputs, saves what it computed under lnref's names; `lnref compare`
# (or `lnref.golden.compare_files`) measures every tensor. Needs PyTorch (`pip install torch`).

# %%
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import lnref
from lnref.golden import compare_files, export_golden, load_golden

# %% [markdown]
# ## The oracle
#
# A 3-layer Pre-LN stack, in float64, with the inputs lnref seeds for it; the same as
# `lnref export --scheme pre --layers 3 --d-model 16 --heads 4 -o pre.npz`.

# %%
model = lnref.build("pre", n_layers=3, d_model=16, n_heads=4, d_ff=64, seed=0)
export_golden(model, "pre.npz", batch=2, seq=5)
golden = load_golden("pre.npz")
print(golden.config)
print(f"{len(golden.params)} parameters, e.g. {', '.join(list(golden.params)[:4])}")
print(f"hidden states: {len(golden.hidden)} (entering each layer, and the last layer's output)")

# %% [markdown]
# ## The port
#
# Written from the equations ($x \leftarrow x + S(\operatorname{LN}(x))$ for the attention and
# the FFN, then a final LN), not from lnref's code. lnref splits the heads as contiguous
# blocks of $d/h$ features and scales the scores by $1/\sqrt{d/h}$, as PyTorch's
# `scaled_dot_product_attention` does by default.


# %%
class PreLNLayer(nn.Module):
    def __init__(self, d, heads, d_ff, eps):
        super().__init__()
        self.heads = heads
        self.ln_attn, self.ln_ffn = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d) for _ in range(4))
        self.w1, self.w2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

    def attention(self, x):
        batch, seq, d = x.shape

        def split(t):  # (batch, seq, d) -> (batch, heads, seq, d / heads)
            return t.view(batch, seq, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.wq(x)), split(self.wk(x)), split(self.wv(x)))
        return self.wo(out.transpose(1, 2).reshape(batch, seq, d))

    def forward(self, x):
        x = x + self.attention(self.ln_attn(x))
        return x + self.w2(F.relu(self.w1(self.ln_ffn(x))))


class PreLN(nn.Module):
    def __init__(self, layers, d, heads, d_ff, eps):
        super().__init__()
        self.layers = nn.ModuleList(PreLNLayer(d, heads, d_ff, eps) for _ in range(layers))
        self.final_ln = nn.LayerNorm(d, eps=eps)

    def forward(self, x):
        states = []
        for layer in self.layers:
            states.append(x)
            x = layer(x)
        states.append(x)
        return self.final_ln(x), states


# %% [markdown]
# ## Loading lnref's parameters
#
# Only the names and the layout differ. lnref writes `layers.0.attn.wq` for a weight of shape
# `(d_in, d_out)` used as `x @ W + b`; `nn.Linear` stores `weight` as `(d_out, d_in)`. A norm's
# `gamma` and `beta` are `weight` and `bias`.


# %%
def torch_name(name):
    """lnref's parameter name -> the port's: layers.0.attn.wq -> layers.0.wq.weight."""
    *head, last = name.split(".")
    if last in ("gamma", "beta"):
        return ".".join([*head, "weight" if last == "gamma" else "bias"])
    head = [part for part in head if part not in ("attn", "ffn")]
    linear = "w" + last[1:]  # wq and bq belong to the Linear wq; w1 and b1 to w1
    return ".".join([*head, linear, "bias" if last.startswith("b") else "weight"])


def load(port, params):
    state = {}
    for name, value in params.items():
        tensor = torch.from_numpy(value)
        state[torch_name(name)] = tensor.T if value.ndim == 2 else tensor  # W (d_in, d_out) -> weight (d_out, d_in)
    port.load_state_dict(state)  # strict: every name must match
    return port


cfg = golden.config
port = load(PreLN(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.eps).double(), golden.params)
print(", ".join(torch_name(n) for n in list(golden.params)[:6]), "...")

# %% [markdown]
# ## Running it, and saving what it computed under lnref's names
#
# The loss is lnref's, $L = \sum y \odot dy$ with the stored cotangent, so every gradient is the
# vector-Jacobian product that the golden file holds. The gradients are saved as PyTorch has
# them, `(d_out, d_in)`; `transpose_weights=True` (the CLI's `--transpose-weights`) tells the
# comparison so.


# %%
def run_port(port, path):
    x = torch.from_numpy(golden.x).requires_grad_()
    y, states = port(x)
    (y * torch.from_numpy(golden.dy)).sum().backward()
    by_torch_name = dict(port.named_parameters())
    arrays = {"y": y.detach().numpy(), "grads/input": x.grad.numpy()}
    for name in golden.params:
        arrays[f"grads/{name}"] = by_torch_name[torch_name(name)].grad.numpy()
    for index, state in enumerate(states):
        arrays[f"hidden/{index}/x"] = state.detach().numpy()
    np.savez(path, **arrays)


run_port(port, "port.npz")
comparison = compare_files("pre.npz", "port.npz", transpose_weights=True)
print(comparison.to_text())
assert comparison.ok

# %% [markdown]
# Every tensor agrees with lnref to $10^{-10}$ of its group's scale (the rule is in
# [the golden format](../golden-format.md)): the port is right, to rounding. The same check
# from a shell: `lnref compare pre.npz port.npz --transpose-weights`.
#
# ## A planted bug
#
# The classic mistake of a multi-head port: scaling the scores by $1/\sqrt{d}$, the model's
# width, instead of $1/\sqrt{d/h}$, the head's. Everything runs; nothing crashes.


# %%
class ScaledByWidth(PreLNLayer):
    def attention(self, x):
        batch, seq, d = x.shape

        def split(t):
            return t.view(batch, seq, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.wq(x)), split(self.wk(x)), split(self.wv(x))
        out = F.scaled_dot_product_attention(q, k, v, scale=1 / d**0.5)  # should be 1 / sqrt(d / heads)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, d))


buggy = PreLN(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.eps)
buggy.layers = nn.ModuleList(ScaledByWidth(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.eps) for _ in range(cfg.n_layers))
run_port(load(buggy.double(), golden.params), "buggy.npz")
caught = compare_files("pre.npz", "buggy.npz", transpose_weights=True)
rows = caught.to_text().splitlines()
shown = ("name ", "y ", "hidden/", "grads/layers.0.attn.w")
print("\n".join([row for row in rows if row.startswith(shown)] + rows[-1:]))
failed = {r.name for r in caught.results if r.status not in ("ok", "missing")}
assert not caught.ok and "hidden/1/x" in failed and "hidden/0/x" not in failed

# %% [markdown]
# The hidden states locate the bug: `hidden/0/x`, the input, agrees; `hidden/1/x`, the output of
# the first layer, does not. The first layer is wrong, and what is computed from its output
# fails with it. A comparison of `y` alone would only have said "wrong"; the
# first failing hidden state says where to look. (A port under test can save as much or as
# little as it has: the names missing from ACTUAL are listed and not compared.)
