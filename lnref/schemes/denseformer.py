"""DenseFormer (Pagliardini, Mohtashami, Fleuret and Jaggi 2024, "DenseFormer: Enhancing
Information Flow in Transformers via Depth Weighted Averaging", NeurIPS, Sec. 3).

Pre-LN blocks whose input is a learned weighted average (Depth-Weighted-Average, DWA) of the
embedding and of every earlier block's output:

    X_0 = x,   X_{i+1} = PreLNBlock_i(x_i)   (the block output, before any average)
    x_{i+1} = sum_{j=0}^{i+1} alpha_{i,j} X_j     after block i (0-based)
    y = LN_final(x_L)

``layers.{i}.dwa_weights`` holds alpha_{i,.} (i + 2 entries, the embedding's first), one-hot on
the newest output at init: x_{i+1} = X_{i+1}, and DenseFormer starts as Pre-LN exactly.

Read against epfml/DenseFormer @c99a623, denseformer/denseformer.py (DWAModules: one weight row
per block of (i + 1 + dilation) // dilation entries, zero but the last, which is 1; the
accumulator holds the embedding and each block's output) and experiments/models/denseformer.py.
The code's dilation and period (the DenseFormer k x p variants: averaging over every k-th
output, after every p-th block) are left out: lnref's is the paper's 1 x 1 DenseFormer.
The state carries (x_i, X_0, ..., X_i); the last block hands on x_L alone, as nothing after it
reads the outputs.
"""

import numpy as np

from lnref.autograd import ops

SUMMARY = "x_{i+1} = sum_{j<=i+1} alpha_ij X_j over the embedding and every block output (Pre-LN blocks)"
PAPER = "Pagliardini et al. 2024, DenseFormer: Enhancing Information Flow via Depth Weighted Averaging, Sec. 3"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)


def streams(index, config):
    """The state entering block ``index``: its input and the outputs so far, the embedding first
    (after the last block, its average alone)."""
    if config is not None and index == config.n_layers:
        return ("x",)
    return ("x", *(f"X_{j}" for j in range(index + 1)))


def layer_params(index, branches, config):
    weights = np.zeros(index + 2)
    weights[-1] = 1.0
    return {"dwa_weights": weights}


def embed(x, stack):
    return (x, x)


def layer(state, layer):
    x, *outputs = state
    for name, branch in layer.branches:
        x = x + branch(layer.norm(f"ln_{name}", x))
    outputs.append(x)
    averaged = ops.weighted_sum(layer.param("dwa_weights"), *outputs)
    return averaged if layer.index == layer.n_layers - 1 else (averaged, *outputs)


def readout(x, stack):
    return stack.norm("final_ln", x)
