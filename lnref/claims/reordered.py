"""The reordered norm, x <- x + N(S(x)) (OLMo Team 2024, Sec. 3; Liu et al. 2022, Swin V2, Sec. 3.1):
with gains 1 each sublayer adds exactly d to E||x||^2; with Swin V2's init (the branch norms'
gains and shifts 0) every block, and so the whole stack before its final norm, is the identity.
Derivations: proofs/reordered-growth.md, proofs/reordered-swinv2-identity.md.
"""

from __future__ import annotations

import math

import numpy as np

from lnref.autograd import Tensor
from lnref.claims import common
from lnref.claims.core import Check, Claim, Result
from lnref.claims.stats import mean_se, slope_over_seeds
from lnref.claims.trace import trace

INF = math.inf


def run_growth(quick=False, progress=None, scheme=None):
    """Override (negative control): ``scheme`` judged by the d-per-sublayer law."""
    d = 128  # the cross terms' noise falls like d^(-1/2)
    depth = 6 if quick else 12
    seeds = range(12 if quick else 24)
    name = "reordered" if scheme is None else scheme
    rows, added, cross = [], [], []
    for seed in seeds:
        model = common.build(name, depth, seed, d, setting="lnref")
        x, _, _ = model.sample_inputs(batch=2, seq=16)
        traced = trace(model, x)
        rows.append([np.mean(np.sum(s[0].value ** 2, axis=-1)) / d for s in traced.states])
        outputs = [e for e in traced.select("norm") if e.name.endswith("_out")]
        for event in outputs:
            v = np.var(event.input.value, axis=-1)
            measured = np.sum(event.output.value**2, axis=-1) / d
            added.append(float(np.max(np.abs(measured - v / (v + model.config.eps)))))
        if outputs:  # a scheme with no branch-output norm (a negative control's) has no such terms
            pairs = zip(traced.select("branch"), outputs)
            cross.append(np.mean([np.mean(2 * np.sum(b.input.value * o.output.value, axis=-1)) / d for b, o in pairs]))
    slope = slope_over_seeds(np.arange(depth + 1), rows)
    checks = [
        Check(
            f"{name}: each sublayer adds d to E||x||^2 (slope of E||x_l||^2/d per layer, 2 +- 2.5%)",
            "paper",
            1.95,
            2.05,
            *slope,
        )
    ]
    if added:
        checks.append(
            Check(
                f"{name}: every branch-output norm has ||N(S(x))||^2/d = v/(v + eps) (max error over tokens)",
                "proof",
                0.0,
                1e-12,
                max(added),
            )
        )
    if cross:
        checks.append(
            Check(
                f"{name}: the cross terms 2<x, N(S(x))>/d average to 0 (mean over sublayers)",
                "proof",
                -0.05,
                0.05,
                *mean_se(cross),
            )
        )
    return Result(
        claim=GROWTH,
        prediction="N(a) has ||N(a)||^2 = d v/(v + eps) whatever a, and flipping W_o or W_2 flips N(S(x)), so "
        "<x, N(S(x))> has mean 0: E||x_l||^2 = ||x_0||^2 + 2 l d",
        measurement=f"{name}: {slope[0]:.3f} d per layer"
        + (f"; ||N(S)||^2/d = v/(v + eps) to {max(added):.0e}, mean cross term {np.mean(cross):+.3f}" if added else ""),
        checks=checks,
        figures={"slope": slope[0], "norm_error": max(added) if added else float("nan")},
        config={
            "setting": "lnref",
            "d_model": d,
            "n_layers": depth,
            "seeds": len(seeds),
            "batch": 2,
            "seq": 16,
            "init": "olmo2 (gains 1)",
        },
    )


def run_identity(quick=False, progress=None, init="swinv2"):
    """Override (negative control): ``init="olmo2"`` judged by the identity law."""
    d = 32 if quick else 64
    depth = 4 if quick else 12
    seeds = range(2 if quick else 4)
    stack_gap, block_gap, weight_grad, gain_grad = 0.0, 0.0, 0.0, INF
    for seed in seeds:
        model = common.build("reordered", depth, seed, d, setting="lnref", options={"init": init})
        x, dy, _ = model.sample_inputs(batch=2, seq=16)
        run = model.run()
        y = model(x)
        final = model.readout(run, (Tensor(x),)).value
        stack_gap = max(stack_gap, float(np.max(np.abs(y - final))))
        states = model.hidden_states(x)
        block_gap = max(block_gap, max(float(np.max(np.abs(b[0] - a[0]))) for a, b in zip(states, states[1:])))
        _, grads = model.value_and_grad(x, dy)
        for name, grad in grads.items():
            short = name.rsplit(".", 1)[-1]
            if short in ("wq", "wk", "wv", "wo", "w1", "w2"):
                weight_grad = max(weight_grad, float(np.max(np.abs(grad))))
            elif name.startswith("layers.") and ".ln_" in name and short == "gamma":
                gain_grad = min(gain_grad, float(np.linalg.norm(grad)))
        common.progress_line(progress, f"reordered-swinv2-identity: seed {seed}")
    checks = [
        Check(
            f"{init}: the stack is the identity before its final norm (max |y - N_final(x)|)",
            "paper",
            0.0,
            0.0,
            stack_gap,
        ),
        Check(f"{init}: every block is the identity (max |x_(l+1) - x_l|)", "paper", 0.0, 0.0, block_gap),
        Check(f"{init}: every branch weight's gradient is exactly 0 (max |dL/dW|)", "proof", 0.0, 0.0, weight_grad),
        Check(
            f"{init}: every branch norm's gain gets a gradient (min ||dL/dgamma|| > 0)", "proof", 1e-300, INF, gain_grad
        ),
    ]
    return Result(
        claim=IDENTITY,
        prediction="gamma = beta = 0 makes every N(S(x)) exactly 0, so x_(l+1) = x_l bit for bit and y = N_final(x); "
        "dL/dW = 0 since W reaches the output only through N's zero gain; dL/dgamma = sum_t N^(S)_t * u_t is not 0",
        measurement=f"max |y - N_final(x)| {stack_gap:.1e}, max block change {block_gap:.1e}, max |dL/dW| "
        f"{weight_grad:.1e}, min ||dL/dgamma|| {gain_grad:.2e}",
        checks=checks,
        figures={"stack_gap": stack_gap, "block_gap": block_gap, "weight_grad": weight_grad, "gain_grad": gain_grad},
        config={"setting": "lnref", "d_model": d, "n_layers": depth, "seeds": len(seeds), "init": init},
    )


GROWTH = Claim(
    id="reordered-growth",
    title="Reordered norm x + N(S(x)), gains 1: each sublayer adds exactly d to E||x||^2",
    paper="OLMo Team 2024, 2 OLMo 2 Furious, Sec. 3",
    proof="reordered-growth.md",
    run=run_growth,
    failure_verdict="refuted",
)

IDENTITY = Claim(
    id="reordered-swinv2-identity",
    title="Reordered norm with Swin V2's init (branch norms' gains and shifts 0): the stack is the identity",
    paper="Liu et al. 2022, Swin Transformer V2, Sec. 3.1 (init from its code)",
    proof="reordered-swinv2-identity.md",
    run=run_identity,
    failure_verdict="refuted",
)
