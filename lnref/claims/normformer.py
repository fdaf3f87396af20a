"""Shleifer, Weston and Ott 2021, "NormFormer", Sec. 1 and 2: Pre-LN's gradients are much larger
at early layers than at late ones; NormFormer's extra norms (after the attention, after the FFN's
activation) and head scales alleviate the mismatch. Measured at init. Derivation:
proofs/normformer-gradient-ratio.md.
"""

from __future__ import annotations

import math

import numpy as np

from lnref import probes
from lnref.claims import common
from lnref.claims.core import Check, Claim, Result
from lnref.claims.stats import mean_se, slope_over_seeds

INF = math.inf


def gradient_profile(scheme, depth, seeds, d, batch=2, seq=16, progress=None):
    """Per seed: ||dL/dW|| of each layer's weight matrices (all of them, and W_2 alone) and
    E||x_l||^2 / d for l = 0..L."""
    weights, w2, variance = [], [], []
    for seed in seeds:
        model = common.build(scheme, depth, seed, d, setting="lnref")
        x, dy, _ = model.sample_inputs(batch=batch, seq=seq)
        profile = probes.layer_profile(model, x, dy)
        norms = profile.weight_grad_norms
        weights.append(np.sqrt(norms["attn"] ** 2 + norms["ffn"] ** 2))
        w2.append(norms["ffn.w2"])
        variance.append(profile.hidden_sq_norm_per_token / d)
        common.progress_line(progress, f"normformer-gradient-ratio: {scheme}, seed {seed}")
    return np.array(weights), np.array(w2), np.array(variance)


def run(quick=False, progress=None, law=None):
    """Override (negative control): ``law="paper"`` judges the paper's narrowing as holding at init."""
    d = 32 if quick else 64
    depth = 6 if quick else 12
    seeds = range(8 if quick else 16)
    pre, pre_w2, pre_var = gradient_profile("pre", depth, seeds, d, progress=progress)
    nf, nf_w2, nf_var = gradient_profile("normformer", depth, seeds, d, progress=progress)
    pre_ratio = pre[:, 0] / pre[:, -1]
    nf_ratio = nf[:, 0] / nf[:, -1]
    # Layer l's weights see the gradient of the stream they write to, ~ 1/sigma_(l+1).
    predicted = np.sqrt(pre_var[:, -1] / pre_var[:, 1])
    growth = 1 + 2 * 4 * d / (d + 4 * d)
    nf_slope = slope_over_seeds(np.arange(depth + 1), nf_var)
    checks = [
        Check(
            "pre: early layers' weight gradients are larger (first layer over last >= 1.5)",
            "paper",
            1.5,
            INF,
            *mean_se(pre_ratio),
        ),
        Check(
            "pre: first over last = sigma_L / sigma_1, the stream's RMS at the layers' outputs (mean log ratio +- 0.2)",
            "proof",
            -0.2,
            0.2,
            *mean_se(np.log(pre_ratio / predicted)),
        ),
        Check(
            "normformer narrows the ratio (log of NormFormer's first/last ratio over Pre-LN's < 0)",
            "paper",
            -INF,
            0.0,
            *mean_se(np.log(nf_ratio / pre_ratio)),
            law == "paper",
        ),
        Check(
            f"normformer: the stream grows by 1 + 2 d_ff/(d + d_ff) = {growth:.1f} d per layer (slope, 5%)",
            "proof",
            growth * 0.95,
            growth * 1.05,
            *nf_slope,
        ),
    ]
    figures = {
        "pre_ratio": float(pre_ratio.mean()),
        "normformer_ratio": float(nf_ratio.mean()),
        "pre_w2_ratio": float(np.mean(pre_w2[:, 0] / pre_w2[:, -1])),
        "normformer_w2_ratio": float(np.mean(nf_w2[:, 0] / nf_w2[:, -1])),
        "normformer_slope": nf_slope[0],
        "pre_slope": slope_over_seeds(np.arange(depth + 1), pre_var)[0],
    }
    return Result(
        claim=CLAIM,
        prediction="a layer's weight gradient follows the gradient of the stream it writes to, ~ 1/sigma; "
        f"NormFormer's extra norms make each layer add {growth:.1f} d to E||x||^2 where Pre-LN's adds about d, so at "
        "init its first/last ratio sigma_L/sigma_1 is wider, not narrower",
        measurement=f"first/last layer weight gradient: pre {figures['pre_ratio']:.2f}, normformer "
        f"{figures['normformer_ratio']:.2f} (W_2 alone: {figures['pre_w2_ratio']:.2f}, "
        f"{figures['normformer_w2_ratio']:.2f}); stream growth per layer pre {figures['pre_slope']:.2f} d, "
        f"normformer {figures['normformer_slope']:.2f} d",
        checks=checks,
        figures=figures,
        config={"setting": "lnref", "d_model": d, "n_layers": depth, "seeds": len(seeds), "batch": 2, "seq": 16},
    )


CLAIM = Claim(
    id="normformer-gradient-ratio",
    title="Pre-LN's early layers get larger weight gradients than late ones; NormFormer narrows the ratio",
    paper="Shleifer, Weston and Ott 2021, NormFormer, Sec. 1-2",
    proof="normformer-gradient-ratio.md",
    run=run,
    failure_verdict="refuted",
)
