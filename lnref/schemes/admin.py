"""Admin, adaptive model initialization (Liu et al. 2020, "Understanding the Difficulty of
Training Transformers", Sec. 4.3, Algorithm 1).

Post-LN whose skip is scaled per dimension by omega, set by one profiling forward pass:

    x <- LN_S(omega_S * x + S(x))       for each sublayer S; no final LN

Profiling walks the sublayers i = 1, 2, ... in order on a seeded random batch, with a
running ratio that starts at 1 (as in the authors' code):

    omega_i = ratio
    ratio   = sqrt(Var[omega_i * x_{i-1}] + Var[S_i(x_{i-1})])    (over all elements)
    x_i     = LN_i(omega_i * x_{i-1} + S_i(x_{i-1}))

so omega_i^2 ~ 1 + sum_{j<i} Var[S_j], the variance the skip must balance. In an encoder-decoder
model each stack runs its own chain from 1, as in the authors' code; the decoder's cross-attention
attends to the encoder's output for a random source (a memory of random numbers for a decoder
stack of its own).
"""

import numpy as np

SUMMARY = "x <- LN(omega * x + S(x)), omega profiled so omega_i^2 ~ 1 + sum_{j<i} Var S_j"
PAPER = "Liu et al. 2020, Understanding the Difficulty of Training Transformers, Sec. 4.3"
NORMS = ("ln_{}",)
PROFILE_SHAPE = (4, 16)  # batch and sequence length of the profiling batch


def layer_params(index, branches, config):
    return {f"omega_{name}": np.ones(config.d_model) for name in branches}


def initialize(model, rng):
    config = model.config
    x = rng.standard_normal((*PROFILE_SHAPE, config.d_model)).astype(model.dtype)
    memory = None
    if config.cross_attention:
        memory = rng.standard_normal((*PROFILE_SHAPE, config.d_model)).astype(model.dtype)
        if model.encoder is not None:
            memory = model.encoder(memory)
    run = model.run(memory=memory)
    ratio = 1.0
    for index in range(config.n_layers):
        layer = model.layer_view(run, index)
        for name, branch in layer.branches:
            omega = layer.param(f"omega_{name}")
            omega[:] = ratio
            out = branch(x).value
            ratio = float(np.sqrt(np.var(x * omega) + np.var(out)))
            x = layer.norm(f"ln_{name}", x * omega + out).value


def layer(x, layer):
    for name, branch in layer.branches:
        x = layer.norm(f"ln_{name}", x * layer.param(f"omega_{name}") + branch(x))
    return x
