# %% [markdown]
# # Why Post-LN needs warm-up
#
# The original Transformer (Post-LN, $x_{l+1} = \operatorname{LN}(x_l + S(x_l))$) is trained
# with a learning rate that ramps up over the first thousands of steps. Xiong et al. 2020 ("On
# Layer Normalization in the Transformer Architecture") trace this to the gradients at
# initialization: by their Theorem 1, the gradient of the last layer's FFN weight $W^{2,L}$ is
# of order $d\sqrt{\ln d}$ for Post-LN, whatever the depth $L$, and of order
# $d\sqrt{\ln d / L}$ for Pre-LN ($x_{l+1} = x_l + S(\operatorname{LN}(x_l))$). Large gradients
# near the output meet a large learning rate at the first steps; warm-up keeps the first updates
# small, and Pre-LN, they argue, does not need it.
#
# This tutorial measures the three pieces of that story with lnref: the theorem's scaling
# (`lnref prove`), the per-layer gradient profiles of the two placements, and two short training
# runs of Post-LN, without and with warm-up, beside Pre-LN without.

# %%
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lnref import profile, profile_charts
from lnref.train import TrainConfig, train
from lnref.train_charts import smooth

# %% [markdown]
# ## The theorem, measured: `lnref prove`
#
# The claim `xiong-theorem1` ([its proof file](../proofs/xiong-theorem1.md)) fits the exponent of
# $\|\partial L/\partial W^{2,L}\|_F$ in $L$ over depths and seeds, for each placement, and
# compares the closed form of the gradient with finite differences. `--quick` runs its reduced
# sweep (depths 8, 16, 32, eight seeds).

# %%
command = [sys.executable, "-m", "lnref", "prove", "xiong-theorem1", "--quick", "-v", "--backend", "serial"]
done = subprocess.run([*command, "--out", "prove.jsonl"], capture_output=True, text=True)
print("$ lnref prove xiong-theorem1 --quick -v\n")
print(done.stdout)
assert done.returncode == 0, done.stderr

# %% [markdown]
# Post-LN's exponent in $L$ is near 0 and Pre-LN's near $-\frac12$: Pre-LN's final LayerNorm
# divides by the norm of a residual stream that grows with every layer, Post-LN's last LayerNorm
# by that of a single layer's sum. (On the quick sweep a check can come out *unresolved*, its
# interval and its standard error overlapping; the full sweep, `lnref prove xiong-theorem1`,
# decides it. The verdicts of the full sweep are listed in [the proofs](../proofs/index.md).)
#
# ## The profiles: every layer at initialization
#
# The theorem is about the last layer. `lnref profile` (here through `lnref.profile`, the same
# code) measures every layer: the gradient norm of each layer's $W^2$ at 6, 12 and 24 layers,
# over three seeds.

# %%
settings = {"d_model": 32, "n_heads": 2, "d_ff": 128, "norm": "layernorm", "activation": "relu"}
sweep = profile.run_sweep(("post", "pre"), (6, 12, 24), settings, seeds=range(3), seq=8)
profile_charts.save_figure(sweep, "grad.ffn.w2", "post_vs_pre.png")
print("last layer's ||dL/dW2||_F, mean over seeds")
print("layers   post     pre")
for depth in sweep.depths:
    post, pre = (sweep.results[(scheme, depth)].mean["grad.ffn.w2"][-1] for scheme in ("post", "pre"))
    print(f"{depth:6d}  {post:6.3f}  {pre:6.3f}")

# %% [markdown]
# At the top of the stack Post-LN's gradient stays put as the stack deepens and Pre-LN's falls,
# as the theorem says (right panel). Within one stack, Pre-LN's gradient falls from the first
# layer to the last, while Post-LN's stays roughly level, with a wide spread over the seeds at
# 24 layers.
#
# ## Training, with and without warm-up
#
# Now the consequence. A 6-layer model learns to reverse a sequence of 8 symbols (the task
# `reverse` that ships with lnref) with Adam at a learning rate of $10^{-2}$, high for this
# model: 300 steps without warm-up, and with the learning rate ramped up linearly over the first
# 100 steps. The held-out loss of a model that ignores its context is $\ln 10 \approx 2.30$.

# %%
runs = {
    "Post-LN, no warm-up": TrainConfig("post", 6, "reverse", lr=1e-2, warmup=0, steps=300),
    "Post-LN, 100 warm-up steps": TrainConfig("post", 6, "reverse", lr=1e-2, warmup=100, steps=300),
    "Pre-LN, no warm-up": TrainConfig("pre", 6, "reverse", lr=1e-2, warmup=0, steps=300),
}
results = {label: train(config) for label, config in runs.items()}

figure, axis = plt.subplots(figsize=(7, 4), layout="constrained")
for label, result in results.items():
    axis.plot(range(1, result.steps_run + 1), smooth(result.loss), label=label)
    summary = result.summary()
    print(f"{label:28s} {summary['outcome']:12s} held-out loss {summary['final_loss']:.3f}")
axis.axhline(results["Pre-LN, no warm-up"].task["baseline_loss"], color="gray", linestyle=":", label="context-free")
axis.set_xlabel("step")
axis.set_ylabel("training loss (smoothed)")
axis.legend()
figure.savefig("training.png", dpi=90)

assert results["Post-LN, no warm-up"].summary()["outcome"] == "no progress"
assert results["Post-LN, 100 warm-up steps"].summary()["outcome"] == "trained"
assert results["Pre-LN, no warm-up"].summary()["outcome"] == "trained"

# %% [markdown]
# Without warm-up Post-LN never leaves the loss of a context-free guess; with warm-up it learns
# the task, and Pre-LN learns it without. This is one seed of one small model; the grid of
# [training stability](../stability.md) runs the same experiment over seeds, depths and the
# schemes that were designed to remove the need for warm-up, and finds that at 18 layers
# warm-up no longer rescues Post-LN at this scale.
