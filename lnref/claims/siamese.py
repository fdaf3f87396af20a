"""Li et al. 2026, "SiameseNorm: Breaking the Barrier to Reconciling Pre/Post-Norm", Sec. 3: the
Pre-Norm-like stream y has an identity path, so every block receives a gradient that does not
vanish with depth, where Post-LN's lowest layers lose theirs. Measured in the decoder setting of
proofs/post-ln-decoder-shrink.md, where Post-LN's gradient does vanish at init. Derivation:
proofs/siamese-gradient-bound.md.
"""

from __future__ import annotations

import math

import numpy as np

from lnref import probes
from lnref.claims import common
from lnref.claims.core import Check, Claim, Result
from lnref.claims.stats import mean_se, slope_over_seeds

INF = math.inf
Y_STREAM = 1


def decoder_gradients(scheme, depth, seed, d):
    """One forward and backward of a decoder stack (causal, cross-attention to a coherent memory):
    (R = min/max over layers of the FFN weight gradient norms, G_0 the lowest layer's,
    ||dL/dy_1|| / ||dL/dy_L|| along the y stream, sigma_y = sqrt(E||y_L||^2/d)); the last two NaN
    for a one-stream scheme. y_1 rather than y_0, which is the input shared with x."""
    model = common.build(scheme, depth, seed, d, setting="lnref", cross_attention=True, causal=True)
    x, dy, memory = model.sample_inputs(batch=2, seq=16)
    grads, _, states = model.gradients(x, dy, common.coherent_memory(memory), keep_states=True)
    norms = probes.weight_grad_norms(grads, depth)["ffn"]
    carried, sigma = math.nan, math.nan
    if len(states[0]) > Y_STREAM:
        along_y = probes.hidden_grad_norms(states, Y_STREAM)
        carried = along_y[1] / along_y[-1]
        sigma = math.sqrt(probes.hidden_sq_norms_per_token(states, Y_STREAM)[-1] / d)
    return norms.min() / norms.max(), norms[0], carried, sigma


def run(quick=False, progress=None, scheme=None):
    """Override (negative control): ``scheme`` alone, judged by SiameseNorm's power-law bound."""
    d = 32 if quick else 64
    depths = (4, 8, 16) if quick else (4, 8, 16, 32)
    seeds = range(6 if quick else 8)
    deeper = depths[-2:]
    schemes = ("post", "siamese") if scheme is None else (scheme,)
    measured = {}
    for name in schemes:
        common.progress_line(progress, f"siamese-gradient-bound: {name}")
        measured[name] = np.array([[decoder_gradients(name, depth, seed, d) for depth in depths] for seed in seeds])
    checks, figures = [], {}
    if "post" in measured and scheme is None:
        post_rate = slope_over_seeds(depths, np.log(measured["post"][:, :, 0]))
        figures["post_rate"] = post_rate[0]
        checks.append(
            Check(
                "Post-LN decoder: lower layers' gradients vanish exponentially (slope of ln(min/max) in L <= -0.2)",
                "paper",
                -INF,
                -0.2,
                *post_rate,
            )
        )
    for name, values in measured.items():
        if name == "post" and scheme is None:
            continue
        power = slope_over_seeds(deeper, values[:, -2:, 0], log_x=True, log_y=True)
        figures[f"{name}_power"] = power[0]
        figures[f"{name}_min_max_at_deepest"] = float(values[:, -1, 0].mean())
        checks.append(
            Check(
                f"{name}: bounded below by a power of L, not exponentially (log-log exponent of min/max over L = "
                f"{deeper[0]}..{deeper[1]} >= -0.7)",
                "paper",
                -0.7,
                INF,
                *power,
            )
        )
        if name != "siamese":
            continue
        carried = mean_se(values[:, -1, 2])
        lowest = slope_over_seeds(deeper, values[:, -2:, 1] * values[:, -2:, 3], log_x=True, log_y=True)
        figures.update({"siamese_y_ratio_at_deepest": carried[0], "siamese_lowest_times_sigma_power": lowest[0]})
        checks += [
            Check(
                f"siamese: the identity path, ||dL/dy_1|| >= ||dL/dy_L|| (ratio at L = {depths[-1]})",
                "proof",
                1.0,
                INF,
                *carried,
            ),
            Check(
                "siamese: the lowest layer's gradient falls no faster than 1/sigma_y (exponent in L of "
                "||dL/dW_0|| * sigma_y >= -0.15)",
                "proof",
                -0.15,
                INF,
                *lowest,
            ),
        ]
    measurement = ", ".join(f"{n} min/max ~ L^{figures[n + '_power']:.2f}" for n in measured if n + "_power" in figures)
    if "post_rate" in figures:
        measurement = f"post ln(min/max) {figures['post_rate']:+.3f} per layer of depth; " + measurement
    if "siamese_y_ratio_at_deepest" in figures:
        measurement += (
            f"; ||dL/dy_1||/||dL/dy_L|| {figures['siamese_y_ratio_at_deepest']:.2f} at L = {depths[-1]}, "
            f"lowest gradient * sigma_y ~ L^{figures['siamese_lowest_times_sigma_power']:.2f}"
        )
    return Result(
        claim=CLAIM,
        prediction="y_L = y_l + sum of the later branches' outputs, so dL/dy_l = dL/dy_L + branch terms that add in "
        "quadrature at init: ||dL/dy_l|| >= ||dL/dy_L|| ~ 1/sigma_y ~ L^(-1/2), and every block's output z reaches the "
        "loss through y: min/max ~ a power of L; Post-LN's ~ exp(-L ln(2)/2) in a decoder",
        measurement=measurement,
        checks=checks,
        figures=figures,
        config={
            "setting": "lnref",
            "cross_attention": True,
            "causal": True,
            "memory": "coherent",
            "d_model": d,
            "depths": list(depths),
            "seeds": len(seeds),
            "batch": 2,
            "seq": 16,
            "weights": "ffn (W1, W2)",
        },
    )


CLAIM = Claim(
    id="siamese-gradient-bound",
    title="SiameseNorm: the y stream's identity path keeps the lowest layers' gradient bounded below where "
    "Post-LN's vanishes (decoder)",
    paper="Li et al. 2026, SiameseNorm, Sec. 3",
    proof="siamese-gradient-bound.md",
    run=run,
    failure_verdict="refuted",
)
