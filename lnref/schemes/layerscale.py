"""LayerScale (Touvron et al. 2021, "Going deeper with Image Transformers" (CaiT), Sec. 2).

Pre-LN with a learned per-channel gain on every branch output, initialized small:

    x <- x + diag(lambda_S) S(N_S(x))     lambda_S in R^d, every entry eps at init
    y  = N_final(x_L)

eps is the option ``init_scale``: a number > 0, or "depth" (the default) for the paper's rule,
0.1 up to 18 layers, 1e-5 up to 24 and 1e-6 deeper. As eps -> 0 every block tends to the
identity and the branch weights' gradients to eps times a limit.

Read against facebookresearch/deit @7e160fe, cait_models.py (LayerScale_Block: gamma_1, gamma_2 =
init_values * ones(dim), on the attention and MLP outputs; the final ``self.norm``). Code and
paper differ in the presets: the code's XXS36 models take 1e-5 at depth 36, where the paper's
rule gives 1e-6, and its default argument is 1e-4.
"""

import math

import numpy as np

from lnref.schemes import Option

SUMMARY = "x <- x + diag(lambda) S(LN(x)), lambda = eps at init (0.1, 1e-5, 1e-6 by depth); y = LN(x_L)"
PAPER = "Touvron et al. 2021, Going deeper with Image Transformers (CaiT), Sec. 2"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)
OPTIONS = {"init_scale": Option("depth", None, "lambda's initial entries: a number > 0, or depth (the paper's rule)")}


def initial_scale(config):
    """eps: the option init_scale, or the paper's value for the stack's depth."""
    given = config.option("init_scale")
    if given == "depth":
        return 0.1 if config.n_layers <= 18 else 1e-5 if config.n_layers <= 24 else 1e-6
    try:
        value = float(given)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"option init_scale of layerscale must be depth or a number > 0, got {given!r}")
    return value


def layer_params(index, branches, config):
    return {f"layerscale_{name}": np.full(config.d_model, initial_scale(config)) for name in branches}


def layer(x, layer):
    for name, branch in layer.branches:
        x = x + layer.param(f"layerscale_{name}") * branch(layer.norm(f"ln_{name}", x))
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
