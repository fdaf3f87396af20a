"""Wang et al. 2022, "Foundation Transformers" (Magneto, Sub-LN), Sec. 2: a norm inside each branch,
before its output projection, fixes the branch's output variance at gamma^2 times a constant
whatever the scale of the branch's input or of the weights before that norm; the stream then
grows linearly at a rate set by gamma^2 = ln 2L. Derivations: proofs/subln-branch-variance.md,
proofs/subln-growth-rate.md.
"""

from __future__ import annotations

import math

import numpy as np

from lnref.claims import common
from lnref.claims.core import Check, Claim, Result
from lnref.claims.stats import mean_se, slope_over_seeds
from lnref.claims.trace import trace
from lnref.schemes.subln import gain

INF = math.inf
BEFORE_INNER_NORM = ("attn.wv", "ffn.w1")  # the weights between a branch's input and its inner norm


def branch_variances(model, x):
    """{branch name: mean over layers of E||a_l||^2 / d} for one forward."""
    traced = trace(model, x)
    d = model.config.d_model
    return {
        name: float(np.mean([np.mean(np.sum(e.output.value**2, axis=-1)) / d for e in traced.select("branch", name)]))
        for name in ("attn", "ffn")
    }


def scaled(params, factor):
    """``params`` with every W_v and W_1 multiplied by ``factor``."""
    return {
        name: value * factor if name.split(".", 2)[-1] in BEFORE_INNER_NORM else value for name, value in params.items()
    }


def run_branch(quick=False, progress=None, scheme=None, law=None):
    """Overrides (negative control): ``scheme`` judged by Sub-LN's law (``law`` the exponent in the
    weight scale, 0 by default)."""
    d = 32 if quick else 64
    depth = 6
    seeds = range(4 if quick else 8)
    schemes = ("subln", "pre") if scheme is None else (scheme,)
    input_scales, weight_scales = (0.1, 1.0, 10.0, 100.0), (1.0, 10.0, 100.0)
    checks, figures = [], {}
    for name in schemes:
        common.progress_line(progress, f"subln-branch-variance: {name}")
        by_input = {"attn": [], "ffn": []}
        by_weight = {"attn": [], "ffn": []}
        for seed in seeds:
            model = common.build(name, depth, seed, d, setting="lnref")
            x, _, _ = model.sample_inputs(batch=2, seq=16)
            rows = [branch_variances(model, x * s) for s in input_scales]
            for branch in by_input:
                by_input[branch].append([row[branch] for row in rows])
            original = model.params
            rows = []
            for s in weight_scales:
                model.params = scaled(original, s)
                rows.append(branch_variances(model, x))
            model.params = original
            for branch in by_weight:
                by_weight[branch].append([row[branch] for row in rows])
        for branch in ("attn", "ffn"):
            k_input = slope_over_seeds(input_scales, by_input[branch], log_x=True, log_y=True)
            k_weight = slope_over_seeds(weight_scales, by_weight[branch], log_x=True, log_y=True)
            figures[f"{name}_{branch}_input_exponent"] = k_input[0]
            figures[f"{name}_{branch}_weight_exponent"] = k_weight[0]
            figures[f"{name}_{branch}_variance"] = float(np.mean(np.array(by_input[branch])[:, 1]))
            if name == "subln" or law is not None:
                target = 0.0 if law is None else law
                checks += [
                    Check(
                        f"{name}: {branch} output variance ~ (scale of x)^k, k = 0 +- 0.01",
                        "paper",
                        -0.01,
                        0.01,
                        *k_input,
                    ),
                    Check(
                        f"{name}: {branch} output variance ~ (scale of W_v, W_1)^k, k = {target:g} +- 0.01",
                        "paper",
                        target - 0.01,
                        target + 0.01,
                        *k_weight,
                    ),
                ]
            elif branch == "ffn":
                checks.append(
                    Check(
                        f"{name}: ffn output variance ~ (scale of W_1)^2 (ReLU is homogeneous; +- 0.01)",
                        "proof",
                        1.99,
                        2.01,
                        *k_weight,
                    )
                )
        if name == "subln":
            gamma_sq = gain(common.build(name, depth, 0, d, setting="lnref").config) ** 2
            ffn_constant = 2 * 4 * d / (d + 4 * d)
            for branch, constant in (("attn", 1.0), ("ffn", ffn_constant)):
                values = np.array(by_input[branch])[:, 1] / (constant * gamma_sq)
                checks.append(
                    Check(
                        f"subln: {branch} output variance = {constant:.1f} gamma^2 (gamma^2 = ln 2L = {gamma_sq:.3f}; "
                        "mean ratio, 1 +- 0.05)",
                        "proof",
                        0.95,
                        1.05,
                        *mean_se(values),
                    )
                )
    return Result(
        claim=BRANCH,
        prediction="the inner norm outputs ||.||^2 = d (heads) or d_ff (hidden) whatever comes in, so the branch's "
        "output variance is gamma^2 (attention, square W_o) or gamma^2 2 d_ff/(d + d_ff) (FFN), independent of the "
        "scale of x and of W_v, W_1; Pre-LN's grows as the square of W_v's and W_1's scale",
        measurement="; ".join(_exponents_text(n, figures) for n in schemes),
        checks=checks,
        figures=figures,
        config={
            "setting": "lnref",
            "d_model": d,
            "n_layers": depth,
            "seeds": len(seeds),
            "batch": 2,
            "seq": 16,
            "input_scales": list(input_scales),
            "weight_scales": list(weight_scales),
        },
    )


def _exponents_text(name, figures):
    by_input = max(abs(figures[f"{name}_{b}_input_exponent"]) for b in ("attn", "ffn"))
    attn, ffn = (figures[f"{name}_{b}_weight_exponent"] for b in ("attn", "ffn"))
    return f"{name}: variance ~ (scale of x)^({by_input:.1e}), (scale of W_v, W_1)^({attn:.3f}, {ffn:.3f})"


def run_growth(quick=False, progress=None, law=None):
    """Override (negative control): ``law`` the constant in slope = law * gamma^2."""
    d = 32 if quick else 64
    depths = (4, 8) if quick else (6, 12)
    seeds = range(8 if quick else 16)
    constant = 1 + 2 * 4 * d / (d + 4 * d)
    target = constant if law is None else law
    checks, figures, rates = [], {}, []
    for depth in depths:
        common.progress_line(progress, f"subln-growth-rate: {depth} layers")
        rows = []
        for seed in seeds:
            model = common.build("subln", depth, seed, d, setting="lnref")
            x, _, _ = model.sample_inputs(batch=2, seq=16)
            traced = trace(model, x)
            rows.append([np.mean(np.sum(s[0].value ** 2, axis=-1)) / d for s in traced.states])
        rows = np.array(rows)
        gamma_sq = gain(model.config) ** 2
        layers = np.arange(depth + 1)
        half = depth // 2
        rate = [slope / gamma_sq for slope in (np.polyfit(layers, row, 1)[0] for row in rows)]
        rates.append(rate)
        shape = mean_se(
            [
                np.polyfit(layers[half:], row[half:], 1)[0] / np.polyfit(layers[: half + 1], row[: half + 1], 1)[0]
                for row in rows
            ]
        )
        figures[f"rate_L{depth}"] = float(np.mean(rate))
        figures[f"gamma_sq_L{depth}"] = gamma_sq
        checks.append(
            Check(
                f"{depth} layers: linear growth (slope over the upper half / lower half, 1 +- 0.2)",
                "paper",
                0.8,
                1.25,
                *shape,
            )
        )
        checks.append(
            Check(
                f"{depth} layers: slope of E||x_l||^2/d = {target:.2f} gamma^2 (gamma^2 = ln {2 * depth}; 5%)",
                "proof",
                target * 0.95,
                target * 1.05,
                *mean_se(rate),
            )
        )
    checks.append(
        Check(
            "the rate is set by gamma^2: slope/gamma^2 at the deeper stack over the shallower (1 +- 0.1)",
            "paper",
            0.9,
            1.1,
            *mean_se(np.array(rates[1]) / np.array(rates[0])),
        )
    )
    return Result(
        claim=GROWTH,
        prediction=f"each layer adds gamma^2 d (attention) + gamma^2 d 2 d_ff/(d + d_ff) (FFN), and zero-mean cross "
        f"terms: E||x_l||^2/d = 1 + {constant:.1f} gamma^2 l",
        measurement=", ".join(
            f"{depth} layers: slope {figures[f'rate_L{depth}']:.3f} gamma^2 ({figures[f'gamma_sq_L{depth}']:.3f})"
            for depth in depths
        ),
        checks=checks,
        figures=figures,
        config={"setting": "lnref", "d_model": d, "depths": list(depths), "seeds": len(seeds), "batch": 2, "seq": 16},
    )


BRANCH = Claim(
    id="subln-branch-variance",
    title="Sub-LN: a branch's output variance does not depend on the scale of its input or of the weights before "
    "its inner norm",
    paper="Wang et al. 2022, Foundation Transformers (Magneto), Sec. 2",
    proof="subln-branch-variance.md",
    run=run_branch,
    failure_verdict="refuted",
)

GROWTH = Claim(
    id="subln-growth-rate",
    title="Sub-LN: the stream's variance grows linearly, 2.6 gamma^2 per layer (d_ff = 4d)",
    paper="Wang et al. 2022, Foundation Transformers (Magneto), Sec. 2-3",
    proof="subln-growth-rate.md",
    run=run_growth,
    failure_verdict="corrected",
)
