# %% [markdown]
# # Your own placement in one file
#
# A scheme of lnref is one short module: the paper's equation in code, and nothing else. The
# model, the gradient checker, the profiles and the golden files read it through the *scheme
# protocol* (`lnref/schemes/__init__.py`), so a placement written in a file of your own gets all
# of them without a change to lnref. This tutorial writes one, checks its gradients from the
# command line and from Python, and compares its profile with Pre-LN's.
#
# The placement: Pre-LN whose branches are scaled by $s/\sqrt{L}$, $L$ the number of layers,
#
# $$ x \leftarrow x + \frac{s}{\sqrt L}\, S\big(\operatorname{LN}(x)\big), \qquad y = \operatorname{LN}(x_L), $$
#
# the residual scaling of depth-$\mu$P (Yang et al. 2023, "Tensor Programs VI"; Bordelon et al.
# 2023) and of MiniCPM (Hu et al. 2024). lnref has no module for it: a good first scheme.

# %%
import subprocess
import sys
from pathlib import Path

import numpy as np

import lnref
from lnref import profile, profile_charts
from lnref.golden import export_golden, from_golden
from lnref.gradcheck import gradcheck

# %% [markdown]
# ## The file
#
# A scheme declares `SUMMARY` and `PAPER`, the norms it places (`NORMS`, `"ln_{}"` standing for
# each branch: attn, cross, ffn; `STACK_NORMS` for the final one), its own options, and the
# function `layer(x, layer)`. The view `layer` hands it the branches, the norms by name, the
# options and the layer's place in the stack; `readout` closes the stack.

# %%
SOURCE = '''"""Pre-LN with depth-scaled branches (depth-muP: Yang et al. 2023, "Tensor Programs VI";
Bordelon et al. 2023; MiniCPM, Hu et al. 2024).

Every branch is scaled by s / sqrt(L), L the number of layers:

    x <- x + (s / sqrt(L)) * S(LN_S(x))     for each sublayer S
    y  = LN_final(x_L)
"""

import math

from lnref.schemes import Option

SUMMARY = "x <- x + (s / sqrt(L)) * S(LN(x)); y = LN(x_L)"
PAPER = "Yang et al. 2023, Tensor Programs VI: Feature Learning in Infinite-Depth Neural Networks"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)
OPTIONS = {"s": Option(1.0, None, "the branch scale before the 1/sqrt(L) factor")}


def layer(x, layer):
    scale = layer.option("s") / math.sqrt(layer.n_layers)
    for name, branch in layer.branches:
        x = x + scale * branch(layer.norm(f"ln_{name}", x))
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
'''
Path("depth_scaled.py").write_text(SOURCE)

# %% [markdown]
# The scale is a constant of the configuration (the depth and an option), never computed from
# a tensor's values: that is what lets lnref replay a repeated gradient pass without running
# the Python of the layers again.
#
# ## Every command takes the file
#
# `--scheme` takes a path to a scheme file as it takes a built-in name, and so does every
# function of lnref that takes a scheme. The gradient check from the command line first: every
# tensor of a 12-layer stack against finite differences.

# %%
command = ["lnref", "gradcheck", "--scheme", "depth_scaled.py", "--layers", "12", "--option", "s=2"]
done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
print("$", " ".join(command), "\n")
print(done.stdout)
assert done.returncode == 0, done.stderr

# %% [markdown]
# Nothing in the scheme has a backward of its own: the branches, the norms and the scaling are
# primitives with hand-written VJPs. The check still belongs to the scheme, since it is the
# composition that could be wrong. In Python, the file's path is the scheme's name:

# %%
model = lnref.build("depth_scaled.py", n_layers=12, d_model=16, n_heads=2, d_ff=64, seed=0)
print(model.config)
print(f"{len(model.params)} parameters; layer 0's: {', '.join(n for n in model.params if n.startswith('layers.0.'))}")
report = gradcheck(model, mode="blockwise", workers=1)  # layer by layer
print("blockwise:", report.summary())
assert report.ok

# %% [markdown]
# Options are checked against the scheme's declaration, and a file that does not follow the
# protocol is refused, each with one line that says what is wrong:

# %%
for bad in ({"t": 1.0}, {"s": "large"}):
    try:
        lnref.build("depth_scaled.py", n_layers=2, options=bad)
    except lnref.ConfigError as error:
        print(f"options={bad}: {error}")

Path("no_layer.py").write_text('SUMMARY = "x <- x"\nPAPER = "none"\n')
try:
    lnref.build("no_layer.py", n_layers=2)
except lnref.ConfigError as error:
    print(f"no_layer.py: {error}")

# %% [markdown]
# ## What the scaling does, measured
#
# Pre-LN's residual stream grows with depth: each layer adds a branch output of about the size of
# the stream's first value, so $\|x_l\|^2$ grows linearly in $l$ (Xiong et al.'s Lemma 2,
# [measured here](../proofs/xiong-lemma2-pre.md)). With branches scaled by $1/\sqrt L$, the $L$
# layers together add about what one unscaled layer adds, at any depth. The profile of both at
# 12 and 48 layers:

# %%
settings = {"d_model": 32, "n_heads": 2, "d_ff": 128, "norm": "layernorm", "activation": "relu"}
sweep = profile.run_sweep(("pre", "depth_scaled.py"), (12, 48), settings, seeds=range(2), seq=8)
profile_charts.save_figure(sweep, "hidden_norm", "hidden_norm.png")
print("||x_L|| / ||x_0||, mean over seeds")
for depth in sweep.depths:
    ratios = []
    for scheme in sweep.schemes:
        norms = sweep.results[(scheme, depth)].mean["hidden_norm"]
        ratios.append(f"{scheme} {norms[-1] / norms[0]:5.2f}")
    print(f"{depth:3d} layers: " + "   ".join(ratios))

growth = {depth: sweep.results[("depth_scaled.py", depth)].mean["hidden_norm"] for depth in sweep.depths}
assert abs(growth[48][-1] / growth[48][0] - growth[12][-1] / growth[12][0]) < 0.2

# %% [markdown]
# The scaled stack ends at about the same multiple of its input at 12 and at 48 layers; Pre-LN's
# keeps growing. That is all the scaling claims at initialization; whether it trains better is a
# question for `lnref train --scheme depth_scaled.py`.
#
# ## A golden file for a port
#
# The golden files read the scheme through the same protocol, so a port of this placement can
# be tested against lnref at once ([the porting tutorial](porting-to-pytorch.md) shows how).

# %%
export_golden(model, "depth_scaled.npz", batch=2, seq=4)
rebuilt = from_golden("depth_scaled.npz")  # rebuilds the model and checks every stored array, bit for bit
print(rebuilt.config.scheme, rebuilt.config.n_layers, "layers: the file reproduces, bit for bit")
assert np.array_equal(rebuilt.params["layers.0.attn.wq"], model.params["layers.0.attn.wq"])
