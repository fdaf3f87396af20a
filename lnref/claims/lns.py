"""Sun et al. 2025, "The Curse of Depth in Large Language Models", Sec. 3-4: Pre-LN's hidden
state variance grows with depth, so its deep blocks' Jacobians approach the identity; LayerNorm
Scaling (each norm output of layer l times 1/sqrt(l)) slows the growth. Derivations:
proofs/lns-curse-of-depth.md, proofs/lns-scaling.md.
"""

from __future__ import annotations

import math

import numpy as np

from lnref.claims import common
from lnref.claims.core import Check, Claim, Result
from lnref.claims.stats import fit_line, mean_se, slope_over_seeds
from lnref.claims.trace import block_jacobian_deviation, trace

INF = math.inf


def profile(scheme, depth, seeds, d, probes, batch=2, seq=16, progress=None, tag=""):
    """Per seed: Var_l = E||x_l||^2 / d (l = 0..L), the block Jacobians' ||J_l - I||_F / sqrt(nd)
    (l = 0..L-1) and the FFN branch outputs' E||a_l||^2 / d (l = 0..L-1)."""
    variances, deviations, ffn = [], [], []
    for seed in seeds:
        model = common.build(scheme, depth, seed, d, setting="lnref")
        x, _, _ = model.sample_inputs(batch=batch, seq=seq)
        traced = trace(model, x)
        states = traced.states
        rng = np.random.default_rng([seed, 31])
        variances.append([np.mean(np.sum(s[0].value ** 2, axis=-1)) / d for s in states])
        deviations.append([block_jacobian_deviation(model, states[l], l, probes, rng) for l in range(depth)])
        ffn.append([np.mean(np.sum(e.output.value**2, axis=-1)) / d for e in traced.select("branch", "ffn")])
        common.progress_line(progress, f"{tag}: {scheme}, seed {seed}")
    return np.array(variances), np.array(deviations), np.array(ffn)


def _sizes(quick):
    return dict(d=32 if quick else 64, depth=16 if quick else 32, seeds=range(3 if quick else 6), probes=2)


def run_curse(quick=False, progress=None, law=None):
    """Override (negative control): ``law="exponential"`` judges the abstract's exponential
    growth as holding."""
    size = _sizes(quick)
    d, depth = size["d"], size["depth"]
    var, dev, _ = profile("pre", depth, size["seeds"], d, size["probes"], progress=progress, tag="lns-curse-of-depth")
    layers = np.arange(depth + 1)
    half = depth // 2
    c = common.ffn_gain(d, 4 * d)
    slope = slope_over_seeds(layers, var)
    # The rate of ln Var per layer over the upper half of the layers, against the lower half's.
    rate_ratio = mean_se(np.log(var[:, -1] / var[:, half]) / np.log(var[:, half] / var[:, 0]))
    upper = np.arange(half, depth)
    jac_in_l = slope_over_seeds(upper + 1, dev[:, upper], log_x=True, log_y=True)
    sigma = np.sqrt(var[:, :-1])
    jac_in_sigma = mean_se([fit_line(np.log(s[upper]), np.log(j[upper])).slope for s, j in zip(sigma, dev)])
    checks = [
        Check(
            "pre: the hidden-state variance grows with depth (slope of E||x_l||^2/d per layer >= 0.1)",
            "paper",
            0.1,
            INF,
            *slope,
        ),
        Check(
            f"pre: each layer adds between c and 1 + c (c = {c:.2f}) to E||x_l||^2/d (slope)", "proof", c, 1 + c, *slope
        ),
        Check(
            "pre: the variance grows exponentially (ln Var gains as much per layer over the upper half as over the "
            "lower half: ratio >= 0.8)",
            "paper",
            0.8,
            INF,
            *rate_ratio,
            law == "exponential",
        ),
        Check(
            "pre: deep blocks approach the identity (exponent of ||J_l - I|| in l over the upper half <= -0.2)",
            "paper",
            -INF,
            -0.2,
            *jac_in_l,
        ),
        Check(
            "pre: ||J_l - I|| ~ 1/sigma_l (exponent against the stream's RMS over the upper half, -1 +- 0.15)",
            "proof",
            -1.15,
            -0.85,
            *jac_in_sigma,
        ),
    ]
    figures = {
        "slope": slope[0],
        "rate_ratio": rate_ratio[0],
        "jacobian_exponent_in_l": jac_in_l[0],
        "jacobian_exponent_in_sigma": jac_in_sigma[0],
        "var_last": float(var[:, -1].mean()),
        "jacobian_first": float(dev[:, 0].mean()),
        "jacobian_last": float(dev[:, -1].mean()),
    }
    return Result(
        claim=CURSE,
        prediction="each layer adds c d plus the attention's ||mean_j p_ij LN(x_j)||^2 to E||x_l||^2: linear growth, "
        "not exponential; every branch reads LN(x_l), whose Jacobian is 1/sigma_l times a projection, so "
        "||J_l - I|| ~ 1/sigma_l ~ l^(-1/2)",
        measurement=f"Var grows {slope[0]:.2f} per layer to {figures['var_last']:.1f} at layer {depth} (upper/lower "
        f"rate of ln Var {rate_ratio[0]:.2f}); ||J_l - I|| from {figures['jacobian_first']:.2f} to "
        f"{figures['jacobian_last']:.3f}, ~ l^{jac_in_l[0]:.2f}, ~ sigma^{jac_in_sigma[0]:.2f}",
        checks=checks,
        figures=figures,
        config={
            "setting": "lnref",
            "d_model": d,
            "n_layers": depth,
            "seeds": len(size["seeds"]),
            "batch": 2,
            "seq": 16,
            "jacobian_probes": size["probes"],
        },
    )


def harmonic(n):
    return float(np.sum(1.0 / np.arange(1, n + 1)))


def run_scaling(quick=False, progress=None, scheme=None):
    """Override (negative control): ``scheme`` judged by LNS's bound in place of LNS."""
    size = _sizes(quick)
    d, depth = size["d"], size["depth"]
    scaled = "lns" if scheme is None else scheme
    var_pre, dev_pre, _ = profile("pre", depth, size["seeds"], d, size["probes"], progress=progress, tag="lns-scaling")
    var, dev, ffn = profile(scaled, depth, size["seeds"], d, size["probes"], progress=progress, tag="lns-scaling")
    c = common.ffn_gain(d, 4 * d)
    h = harmonic(depth)
    ratio = mean_se(var[:, -1] / var_pre[:, -1])
    ffn_law = mean_se(np.mean(ffn * np.arange(1, depth + 1), axis=1) / c)
    # ||J_l - I||: LNS's branches see LN(x)/sqrt(l), so ||J - I|| ~ 1/(sqrt(l) sigma_l) where Pre-LN's is 1/sigma_l.
    predicted = np.sqrt(var_pre[:, depth - 1] / (depth * var[:, depth - 1]))
    jac_ratio = mean_se(np.log(dev[:, -1] / dev_pre[:, -1] / predicted))
    checks = [
        Check(f"{scaled}: slows Pre-LN's growth (Var(x_L) over Pre-LN's <= 0.5)", "paper", 0.0, 0.5, *ratio),
        Check(
            f"{scaled}: Var(x_L) between 1 + c H_L and 1 + (1 + c) H_L (H_L = {h:.2f}: logarithmic growth)",
            "proof",
            1 + c * h,
            1 + (1 + c) * h,
            *mean_se(var[:, -1]),
        ),
        Check(
            f"{scaled}: the FFN branch of layer l adds c d / l exactly (mean of l E||a_l||^2/(c d), 1 +- 0.05)",
            "proof",
            0.95,
            1.05,
            *ffn_law,
        ),
        Check(
            f"{scaled}: ||J_L - I|| against Pre-LN's = sigma_pre/(sqrt(L) sigma) (mean log ratio to the prediction, "
            "+- 0.2)",
            "proof",
            -0.2,
            0.2,
            *jac_ratio,
        ),
    ]
    figures = {
        "var_ratio": ratio[0],
        "var_last": float(var[:, -1].mean()),
        "var_last_pre": float(var_pre[:, -1].mean()),
        "jacobian_ratio_last": float(np.mean(dev[:, -1] / dev_pre[:, -1])),
    }
    return Result(
        claim=SCALING,
        prediction="layer l's branches read LN(x)/sqrt(l): the FFN adds c d/l, the attention at most d/l, so "
        "E||x_L||^2/d = 1 + O(H_L) ~ ln L where Pre-LN's is ~ L; ||J_l - I|| ~ 1/(sqrt(l) sigma_l)",
        measurement=f"Var(x_{depth}) {figures['var_last']:.2f} against Pre-LN's {figures['var_last_pre']:.1f} "
        f"(ratio {ratio[0]:.2f}); last block ||J - I|| {figures['jacobian_ratio_last']:.2f} of Pre-LN's",
        checks=checks,
        figures=figures,
        config={
            "setting": "lnref",
            "d_model": d,
            "n_layers": depth,
            "seeds": len(size["seeds"]),
            "batch": 2,
            "seq": 16,
            "jacobian_probes": size["probes"],
        },
    )


CURSE = Claim(
    id="lns-curse-of-depth",
    title="Pre-LN: variance grows with depth and deep blocks approach the identity (||J_l - I|| shrinks)",
    paper="Sun et al. 2025, The Curse of Depth, Sec. 3",
    proof="lns-curse-of-depth.md",
    run=run_curse,
    failure_verdict="corrected",
)

SCALING = Claim(
    id="lns-scaling",
    title="LayerNorm Scaling (norm outputs times 1/sqrt(l)) slows Pre-LN's variance growth",
    paper="Sun et al. 2025, The Curse of Depth, Sec. 4",
    proof="lns-scaling.md",
    run=run_scaling,
    failure_verdict="refuted",
)
