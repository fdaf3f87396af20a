"""Zhu, Chen, He, LeCun and Liu 2025, "Transformers without Normalization" (DyT), Sec. 3-4:
gamma tanh(alpha x) + beta stands in for LN because, with alpha matched to the input's spread,
it is LN's linear map in the bulk of the inputs and squashes their extremes. Measured through
lnref's two norm kinds on Gaussian inputs, in the tails, and with one massive activation in a
token. Derivation: proofs/dyt-tracks-ln.md.
"""

from __future__ import annotations

import math

import numpy as np

from lnref.claims.core import Check, Claim, Result
from lnref.claims.stats import mean_se
from lnref.norms import NORM_KINDS

SPREAD = 2.0  # the inputs' standard deviation s; alpha = 1 / s
OUTLIER = 80.0  # the massive activation, in units of s
TAIL = 3.0  # |z| beyond this is "the tails"


def gaussian_moments(d):
    """For z ~ N(0, 1), by quadrature: (E[z tanh z] / sqrt(E[z^2] E[tanh^2 z]); the bulk's relative RMS gap
    between LN(x) and tanh(z), LN computed from d entries (its sample mean m ~ N(0, 1/d) and std 1 + delta,
    delta ~ N(0, 1/(2d)), give LN - z = -m - z delta to first order):
    sqrt((E[(z - tanh z)^2; B] + P(B)/d + E[z^2; B]/(2d)) / E[z^2; B]), B = {|z| <= 1};
    the tails' mean deficit E[1 - tanh(z)/z | |z| > TAIL])."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = weights / weights.sum()
    correlation = np.sum(weights * nodes * np.tanh(nodes)) / math.sqrt(np.sum(weights * np.tanh(nodes) ** 2))
    z = np.linspace(-1.0, 1.0, 200001)
    density = np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    second = np.trapezoid(z**2 * density, z)
    gap = np.trapezoid((z - np.tanh(z)) ** 2 * density, z) + np.trapezoid(density, z) / d + second / (2 * d)
    bulk = math.sqrt(gap / second)
    t = np.linspace(TAIL, 40.0, 400001)
    density = np.exp(-(t**2) / 2)
    tail = np.trapezoid((1 - np.tanh(t) / t) * density, t) / np.trapezoid(density, t)
    return float(correlation), float(bulk), float(tail)


def norms(x):
    """(DyT(x) with alpha = 1/s, gamma = 1, beta = 0; LN(x) with gain 1, shift 0), lnref's norm kinds."""
    width = x.shape[-1]
    dyt = NORM_KINDS["dyt"].init(width, np.float64)
    dyt["alpha"] = np.asarray(1.0 / SPREAD)
    ln = NORM_KINDS["layernorm"].init(width, np.float64)
    return NORM_KINDS["dyt"].apply(x, dyt, 1e-5).value, NORM_KINDS["layernorm"].apply(x, ln, 1e-5).value


def run(quick=False, progress=None, law=None):
    """Override (negative control): ``law="tails"`` judges DyT as tracking LN in the tails too."""
    d = 1024
    tokens = 256 if quick else 1024
    seeds = range(4 if quick else 8)
    correlation_pred, bulk_pred, tail_pred = gaussian_moments(d)
    slope_pred = math.sqrt(d / (d - 1 + OUTLIER**2 * (1 - 1 / d)))
    correlation, bulk, tail, slope, dyt_change = [], [], [], [], []
    for seed in seeds:
        z = np.random.default_rng([seed, 11]).standard_normal((tokens, d))
        dyt, ln = norms(SPREAD * z)
        correlation.append(np.corrcoef(dyt.ravel(), ln.ravel())[0, 1])
        core = np.abs(z) <= 1
        bulk.append(math.sqrt(np.sum((ln[core] - dyt[core]) ** 2) / np.sum(ln[core] ** 2)))
        far = np.abs(z) > TAIL
        tail.append(np.mean(1 - dyt[far] / ln[far]))
        spiked = z.copy()
        spiked[:, 0] = OUTLIER
        dyt_spiked, ln_spiked = norms(SPREAD * spiked)
        rest = z[:, 1:].ravel()
        slope.append(np.polyfit(rest, ln_spiked[:, 1:].ravel(), 1)[0] / np.polyfit(rest, ln[:, 1:].ravel(), 1)[0])
        dyt_change.append(float(np.max(np.abs(dyt_spiked[:, 1:] - dyt[:, 1:]))))
    tails_law = law == "tails"
    checks = [
        Check(
            "DyT tracks LN on Gaussian inputs (correlation of the outputs >= 0.95)",
            "paper",
            0.95,
            1.0,
            *mean_se(correlation),
        ),
        Check(
            f"correlation = E[z tanh z]/sqrt(E[tanh^2 z]) = {correlation_pred:.4f} (+- 0.005)",
            "proof",
            correlation_pred - 0.005,
            correlation_pred + 0.005,
            *mean_se(correlation),
        ),
        Check(
            f"|z| <= 1: relative RMS gap = {bulk_pred:.4f} (+- 0.01)",
            "proof",
            bulk_pred - 0.01,
            bulk_pred + 0.01,
            *mean_se(bulk),
        ),
        Check(
            f"DyT departs from LN in the tails (|z| > {TAIL:g}: mean relative deficit 1 - DyT/LN >= 0.5)"
            if not tails_law
            else f"DyT tracks LN in the tails too (|z| > {TAIL:g}: mean relative deficit <= 0.1)",
            "paper",
            0.5 if not tails_law else 0.0,
            1.0 if not tails_law else 0.1,
            *mean_se(tail),
        ),
        Check(
            f"|z| > {TAIL:g}: mean deficit E[1 - tanh(z)/z] = {tail_pred:.4f} (+- 0.02)",
            "proof",
            tail_pred - 0.02,
            tail_pred + 0.02,
            *mean_se(tail),
        ),
        Check(
            f"one entry of {OUTLIER:g} s in a token scales LN's other entries by sqrt(d/(d - 1 + M^2 (1 - 1/d))) = "
            f"{slope_pred:.3f} (ratio of slopes, 3%)",
            "proof",
            slope_pred * 0.97,
            slope_pred * 1.03,
            *mean_se(slope),
        ),
        Check("...and leaves DyT's other entries as they were (max change)", "proof", 0.0, 0.0, max(dyt_change)),
    ]
    figures = {
        "correlation": float(np.mean(correlation)),
        "bulk_gap": float(np.mean(bulk)),
        "tail_deficit": float(np.mean(tail)),
        "outlier_slope": float(np.mean(slope)),
    }
    return Result(
        claim=CLAIM,
        prediction=f"with alpha = 1/s, DyT(x) = tanh(z) and LN(x) ~ z (z = x/s): correlation {correlation_pred:.3f}, "
        f"a gap of {bulk_pred:.3f} (RMS, relative) for |z| <= 1, a deficit of {tail_pred:.3f} beyond |z| = {TAIL:g}; "
        "an outlier of M s divides LN's whole token by its std, DyT acts on each entry alone",
        measurement=f"correlation {figures['correlation']:.4f}, bulk gap {figures['bulk_gap']:.4f}, tail deficit "
        f"{figures['tail_deficit']:.4f}; one {OUTLIER:g} s outlier scales LN's other entries by "
        f"{figures['outlier_slope']:.3f}, DyT's not at all",
        checks=checks,
        figures=figures,
        config={
            "d": d,
            "tokens": tokens,
            "seeds": len(seeds),
            "spread": SPREAD,
            "alpha": 1 / SPREAD,
            "outlier": OUTLIER,
        },
    )


CLAIM = Claim(
    id="dyt-tracks-ln",
    title="DyT (alpha = 1/std) tracks LN on Gaussian inputs and departs from it in the tails and under outliers",
    paper="Zhu et al. 2025, Transformers without Normalization, Sec. 3-4",
    proof="dyt-tracks-ln.md",
    run=run,
    failure_verdict="refuted",
)
