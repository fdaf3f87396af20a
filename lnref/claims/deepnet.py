"""Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers", Sec. 4: DeepNorm's
constants make the model update after one optimizer step independent of depth. The
constants satisfy (sublayers) * 2 beta^2 / alpha^2 = 1 exactly; the update formula of
proofs/deepnet.md (each sublayer's own change, divided by its LN's scale ~ alpha, reaches
the output unchanged) is evaluated on the network and compared with central differences;
DeepNorm's output change stays flat in N while Post-LN's grows, in the encoder stack and, with
the paper's encoder and decoder constants, in an encoder-decoder model of N layers per stack.
Derivation: proofs/deepnet.md.
"""

from __future__ import annotations

import math

import numpy as np

from lnref.claims.core import Check, Claim, Result
from lnref.claims.liu import measure_output_change
from lnref.claims.stats import mean_se, slope_over_seeds
from lnref.claims.updates import encoder_decoder_model, sweep


def constant_identity_error(max_layers=1000):
    """max over N of |(sublayers per layer) N 2 beta^2 / alpha^2 - 1| for lnref's DeepNorm
    constants, encoder (2 sublayers) and decoder with cross-attention (3)."""
    from lnref.model import Config
    from lnref.schemes.deepnorm import constants

    worst = 0.0
    for n in range(1, max_layers + 1):
        for cross, sublayers in ((False, 2), (True, 3)):
            alpha, beta = constants(Config("deepnorm", n, cross_attention=cross))
            worst = max(worst, abs(sublayers * n * 2 * beta**2 / alpha**2 - 1.0))
    return worst


def run(quick=False, progress=None, scheme=None, law=None):
    """Overrides (negative control): ``scheme`` judged by the flat ``law`` exponent (e.g. post, 0)."""
    d = 32 if quick else 64
    depths = (2, 4, 8, 16) if quick else (2, 4, 8, 16, 32)
    seeds = range(3 if quick else 6)
    batch, seq = 2, 16
    identity = constant_identity_error(200 if quick else 1000)
    schemes = ("deepnorm", "post") if scheme is None else (scheme,)
    checks = [
        Check(
            "2N * 2 beta^2 / alpha^2 = 1 (encoder) and 3M * 2 beta^2 / alpha^2 = 1 (decoder), max error",
            "paper",
            0.0,
            1e-12,
            identity,
        )
    ]
    figures = {"constant_identity_error": identity}
    for name in schemes:
        changes, predicted = measure_output_change(name, depths, seeds, d, batch, seq, progress, tag="deepnet")
        exponent = slope_over_seeds(depths, changes, log_x=True, log_y=True)
        figures[f"{name}_exponent"] = exponent[0]
        figures[f"{name}_delta_at_N{depths[-1]}"] = float(changes[:, -1].mean())
        if name == "deepnorm" or law is not None:
            target = 0.0 if law is None else law
            checks.append(
                Check(
                    f"{name}: output change flat in N (exponent {target:g} +- 0.15)",
                    "paper",
                    target - 0.15,
                    target + 0.15,
                    *exponent,
                )
            )
        if name == "deepnorm":
            log_ratio = np.log(changes / predicted)
            checks.append(
                Check(
                    "deepnorm: update formula sum_i ||J_LN(z_i) t_i||^2 = central differences "
                    "(mean log ratio over depths)",
                    "proof",
                    -0.2,
                    0.2,
                    *mean_se(log_ratio.mean(axis=1)),
                )
            )
            figures["deepnorm_formula_log_ratio"] = float(log_ratio.mean())
        elif law is None:
            checks.append(
                Check(f"{name}: output change grows with N (exponent >= 0.5)", "paper", 0.5, math.inf, *exponent)
            )
    encdec = ""
    if scheme is None:
        depths_ed, seeds_ed = ((2, 4, 8), range(2)) if quick else ((2, 4, 8, 16), range(4))
        laws = {
            "deepnorm": ("output change flat in N per stack (exponent 0 +- 0.15)", -0.15, 0.15),
            "post": ("output change grows with N per stack (exponent >= 0.5)", 0.5, math.inf),
        }
        for name, (statement, low, high) in laws.items():
            result = sweep(
                name,
                depths_ed,
                seeds_ed,
                d,
                "random",
                batch,
                seq,
                make=encoder_decoder_model,
                progress=progress,
                tag="deepnet",
            )
            exponent = slope_over_seeds(depths_ed, result.change, log_x=True, log_y=True)
            figures[f"encdec_{name}_exponent"] = exponent[0]
            checks.append(Check(f"encoder-decoder {name}: {statement}", "paper", low, high, *exponent))
        encdec = "; encoder-decoder " + ", ".join(f"{n} N^{figures[f'encdec_{n}_exponent']:.2f}" for n in laws)
    return Result(
        claim=CLAIM,
        prediction="sum over the 2N sublayers of (v^2 + w^2)/alpha^2 = 2N 2 beta^2/alpha^2 = 1: the first-order "
        "output change is O(1) in N for DeepNorm, while Post-LN's grows",
        measurement=", ".join(f"{n} N^{figures[n + '_exponent']:.2f}" for n in schemes)
        + f"; identity error {identity:.1e}"
        + encdec,
        checks=checks,
        figures=figures,
        config={
            "setting": "lnref",
            "d_model": d,
            "depths": list(depths),
            "seeds": len(seeds),
            "batch": batch,
            "seq": seq,
            "update": "eta * Xavier-scale Gaussian on every weight matrix (not beta-scaled)",
        },
    )


CLAIM = Claim(
    id="deepnet",
    title="DeepNorm: 2N 2 beta^2/alpha^2 = 1 and a depth-independent model update (random update)",
    paper="Wang et al. 2022, Sec. 4.2-4.3",
    proof="deepnet.md",
    run=run,
    failure_verdict="refuted",
)
