"""Huang, Perez, Ba and Volkovs 2020, "Improving Transformer Optimization Through Better
Initialization", Sec. 3: with T-Fixup's init, and no norm anywhere, one Adam update changes the
model's output by Theta(eta) whatever the depth. Measured under the first Adam step and, for
comparison, under the random update (lnref/claims/updates.py). Derivation:
proofs/tfixup-update.md.
"""

from __future__ import annotations

import math

from lnref.claims.adam import exponent, identity_check
from lnref.claims.core import Check, Claim, Result
from lnref.claims.updates import sweep


def tfixup_embedding(model, x):
    """T-Fixup's input embedding: entries N(0, 1/d), times (9N)^(-1/4) (x is N(0, 1) per entry)."""
    d, depth = model.config.d_model, model.config.n_layers
    return x / math.sqrt(d) * (9 * depth) ** -0.25


def run(quick=False, progress=None, law=None):
    """Override (negative control): ``law="paper"`` judges the paper's depth-independent Adam
    update as holding."""
    d = 32 if quick else 64
    depths = (2, 4, 8, 16) if quick else (2, 4, 8, 16, 32)
    seeds = range(3 if quick else 6)
    common = dict(prepare=tfixup_embedding, progress=progress, tag="tfixup-update")
    random = sweep("tfixup", depths, seeds, d, "random", **common)
    adam = sweep("tfixup", depths, seeds, d, "adam", **common)
    k_random = exponent(depths, random.change)
    k_adam = exponent(depths, adam.change)
    k_descent = exponent(depths, adam.descent)
    k_rho = exponent(depths, adam.rho)
    figures = {
        "random_exponent": k_random[0],
        "adam_exponent": k_adam[0],
        "descent_exponent": k_descent[0],
        "rho_exponent": k_rho[0],
        "rho_at_deepest": float(adam.rho[:, -1].mean()),
    }
    checks = [
        Check(
            "tfixup: the output change of the first Adam step is depth-independent (exponent of Delta in N, 0 +- 0.25)",
            "paper",
            -0.25,
            0.25,
            *k_adam,
            law == "paper",
        ),
        Check(
            "tfixup: random update: sum over 2N sublayers of (a s)^2 is flat (exponent 0 +- 0.15)",
            "proof",
            -0.15,
            0.15,
            *k_random,
        ),
        Check("tfixup: Adam: ||g||_1 ~ 2N a s ~ N^(1/2)", "proof", 0.4, 0.6, *k_descent),
        Check("tfixup: Adam: Delta ~ (||g||_1)^2 ~ N (exponent 1 +- 0.15)", "proof", 0.85, 1.15, *k_adam),
        Check(
            "tfixup: Adam: the share rho of the change along dy is flat in N (+- 0.15)", "proof", -0.15, 0.15, *k_rho
        ),
        identity_check("tfixup", adam, figures),
    ]
    return Result(
        claim=CLAIM,
        prediction="each sublayer's change is O(eta a s) with a s ~ N^(-1/2) (input and branch weights each "
        "~ N^(-1/4)): in quadrature (random update) the 2N sublayers sum to O(1); Adam's sign step moves them "
        "all against one loss, so they add coherently to O(N^(1/2)) and Delta ~ N",
        measurement=f"random update N^{k_random[0]:.2f}; first Adam step N^{k_adam[0]:.2f} "
        f"(||g||_1 ~ N^{k_descent[0]:.2f})",
        checks=checks,
        figures=figures,
        config={
            "setting": "lnref (encoder: W_v, W_o, W_1, W_2 times 0.67 N^(-1/4))",
            "input": "N(0, 1/d) entries times (9N)^(-1/4), T-Fixup's embedding",
            "d_model": d,
            "depths": list(depths),
            "seeds": len(seeds),
            "batch": 2,
            "seq": 16,
        },
    )


CLAIM = Claim(
    id="tfixup-update",
    title="T-Fixup: one Adam update changes the output by Theta(eta) whatever the depth, with no norm",
    paper="Huang et al. 2020, Sec. 3",
    proof="tfixup-update.md",
    run=run,
    failure_verdict="refuted",
)
