"""Norms on the queries and keys: HybridNorm (Zhuo et al. 2025, Sec. 3), QKNorm (Henry et al.
2020), QK-LayerNorm (Dehghani et al. 2023; Wortsman et al. 2024), Swin V2's cosine attention
(Liu et al. 2022). With a norm after W_q and W_k (and after W_v where there is one), attention is
invariant to the scale of those weights: the loss's gradient is orthogonal to each of them and
scales as 1/c; and the logits stay bounded whatever that scale. Derivations:
proofs/qk-norm-scale-invariance.md, proofs/qk-norm-bounded-logits.md.
"""

from __future__ import annotations

import math

import numpy as np

from lnref.autograd import Tensor
from lnref.building import build
from lnref.claims.core import Check, Claim, Result
from lnref.claims.trace import trace
from lnref.qk_norms import MAX_LOG_LOGIT_SCALE, QK_NORMS

INF = math.inf
SCALES = (0.1, 10.0)
# (label, scheme, --qk-norm, the projections followed by a norm)
INVARIANT = (
    ("head", "pre", "head", ("wq", "wk")),
    ("full", "pre", "full", ("wq", "wk")),
    ("head+v", "pre", "head+v", ("wq", "wk", "wv")),
    ("l2", "pre", "l2", ("wq", "wk")),
    ("cosine", "pre", "cosine", ("wq", "wk")),
    ("hybridnorm", "hybridnorm", "none", ("wq", "wk", "wv")),
)
WITHOUT_VALUE_NORM = ("head", "full", "l2", "cosine")
BOUND_NAMES = {"head": "sqrt(D_h)", "full": "d/sqrt(D_h)", "l2": "g", "cosine": "exp(min(t, ln 100))"}


def _model(scheme, qk_norm, seed, d, eps):
    return build(scheme, 2, d_model=d, n_heads=4, d_ff=4 * d, seed=seed, qk_norm=qk_norm, eps=eps)


def scale_response(model, x, dy, name, factor):
    """(||y(cW) - y(W)|| / ||y(W)||, |cos(dL/dW, W)| at W, |c ||dL/dW at cW|| / ||dL/dW at W|| - 1|)
    for the parameter ``name`` scaled by ``factor`` (y the model's output, L = sum(y * dy))."""
    original = model.params
    y = model(x)
    grad, weight = model.value_and_grad(x, dy)[1][name], original[name]
    cosine = abs(float(np.sum(grad * weight)) / (np.linalg.norm(grad) * np.linalg.norm(weight)))
    model.params = {**original, name: weight * factor}
    scaled_y = model(x)
    scaled_grad = model.value_and_grad(x, dy)[1][name]
    model.params = original
    return (
        float(np.linalg.norm(scaled_y - y) / np.linalg.norm(y)),
        cosine,
        abs(factor * np.linalg.norm(scaled_grad) / np.linalg.norm(grad) - 1.0),
    )


def run_invariance(quick=False, progress=None, law=None):
    """Override (negative control): ``law="value"`` judges W_v without a norm as invariant too."""
    d = 32 if quick else 64
    seeds = range(2 if quick else 4)
    worst = {"output": 0.0, "cosine": 0.0, "gradient": 0.0}
    value_changes, figures = [], {}
    for label, scheme, variant, projections in INVARIANT:
        for seed in seeds:
            model = _model(scheme, variant, seed, d, eps=1e-12)
            x, dy, _ = model.sample_inputs(batch=2, seq=16)
            for projection in projections:
                for factor in SCALES:
                    responses = scale_response(model, x, dy, f"layers.0.attn.{projection}", factor)
                    for key, value in zip(worst, responses):
                        worst[key] = max(worst[key], value)
                        figures[f"{label}_{key}"] = max(figures.get(f"{label}_{key}", 0.0), value)
            if variant in WITHOUT_VALUE_NORM:
                value_changes.append(min(scale_response(model, x, dy, "layers.0.attn.wv", f)[0] for f in SCALES))
    checks = [
        Check(
            "the output is unchanged by W -> cW, c in {0.1, 10} (max relative change)",
            "paper",
            0.0,
            1e-9,
            worst["output"],
        ),
        Check("dL/dW is orthogonal to W (max |cos|)", "paper", 0.0, 1e-9, worst["cosine"]),
        Check(
            "||dL/dW|| scales as 1/c (max |c ||dL/dW(cW)|| / ||dL/dW(W)|| - 1|)", "paper", 0.0, 1e-8, worst["gradient"]
        ),
    ]
    if law == "value":
        checks.append(
            Check(
                "W_v without a norm after it: the output is unchanged (min relative change)",
                "paper",
                0.0,
                1e-9,
                min(value_changes),
            )
        )
    else:
        checks.append(
            Check(
                "W_v without a norm after it is not scale-invariant (min relative output change >= 1e-2)",
                "proof",
                1e-2,
                INF,
                min(value_changes),
            )
        )
    figures["value_without_norm_min_change"] = min(value_changes)
    return Result(
        claim=INVARIANCE,
        prediction="N(c q) = N(q) for c > 0 (eps -> 0; zero biases): y(cW) = y(W), so d/dc L(cW) = <dL/dW, W> = 0 "
        "and dL/dW at cW is dL/dW at W over c; W_v is covered only where its output is normalized too",
        measurement=f"max relative output change {worst['output']:.1e}, max |cos(dL/dW, W)| {worst['cosine']:.1e}, "
        f"max 1/c deviation {worst['gradient']:.1e} over head, full, head+v, l2, cosine and HybridNorm; W_v without "
        f"a norm changes the output by >= {min(value_changes):.2f}",
        checks=checks,
        figures=figures,
        config={
            "d_model": d,
            "n_layers": 2,
            "n_heads": 4,
            "seeds": len(seeds),
            "eps": 1e-12,
            "scales": list(SCALES),
            "variants": [v[0] for v in INVARIANT],
        },
    )


def attention_logits(model, x):
    """Layer 0's self-attention logits q_h . k_h / sqrt(D_h) (batch, head, query, key), from the
    attention's input as the scheme computes it and the QK-norm pieces of the model's variant."""
    (event,) = trace(model, x).select("branch", "attn", layer=0)
    view = model.layer_view(model.run(), 0)
    pieces = QK_NORMS[model.config.qk_norm].pieces(view, "layers.0.attn")
    p = model.params
    u = event.input.value
    projected = {}
    for name in "qk":
        value = Tensor(u @ p[f"layers.0.attn.w{name}"] + p[f"layers.0.attn.b{name}"])
        norm = pieces.get(f"{name}_norm")
        projected[name] = (value if norm is None else norm(value)).value
    heads = model.config.n_heads
    batch, seq, d = u.shape
    q, k = (projected[n].reshape(batch, seq, heads, d // heads).transpose(0, 2, 1, 3) for n in "qk")
    return q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads)


def logit_bound(model):
    """The bound of proofs/qk-norm-bounded-logits.md for the model's variant (inf without a norm)."""
    cfg = model.config
    head = cfg.d_model // cfg.n_heads
    variant = cfg.qk_norm
    if variant == "l2":
        return float(np.max(np.abs(model.params["layers.0.attn.logit_gain"])))
    if variant == "cosine":
        return math.exp(min(float(np.max(model.params["layers.0.attn.log_logit_scale"])), MAX_LOG_LOGIT_SCALE))
    if variant in ("head", "head+v"):
        return math.sqrt(head)
    if variant == "full":
        return cfg.d_model / math.sqrt(head)
    return INF


def run_bounded(quick=False, progress=None, variant=None):
    """Override (negative control): ``variant`` alone, judged by the bounded law (a variant with no
    bound of its own, "none", by the per-head norm's sqrt(D_h))."""
    d = 32 if quick else 64
    seeds = range(2 if quick else 4)
    scales = (1.0, 10.0, 100.0)
    variants = ("head", "full", "l2", "cosine") if variant is None else (variant,)
    checks, figures = [], {}
    for name in variants + (("none",) if variant is None else ()):
        largest = np.zeros((len(seeds), len(scales)))
        bound = INF
        for row, seed in enumerate(seeds):
            model = _model("pre", name, seed, d, eps=1e-5)
            x, _, _ = model.sample_inputs(batch=2, seq=16)
            bound = logit_bound(model)
            original = model.params
            for column, c in enumerate(scales):
                model.params = {
                    key: value * c if key in ("layers.0.attn.wq", "layers.0.attn.wk") else value
                    for key, value in original.items()
                }
                largest[row, column] = np.max(np.abs(attention_logits(model, x)))
            model.params = original
        growth = float(np.max(np.log(largest[:, -1] / largest[:, -2]) / math.log(scales[-1] / scales[-2])))
        figures[f"{name}_max_logit"] = float(largest.max())
        figures[f"{name}_exponent_10_100"] = growth
        if name == "none" and variant is not None:
            bound = math.sqrt(d / 4)
        elif name == "none":
            checks.append(
                Check(
                    "none: the logits grow as c^2 (exponent from c = 10 to 100; +- 0.01)", "proof", 1.99, 2.01, growth
                )
            )
            continue
        shown = BOUND_NAMES.get(name, "the bound")
        checks.append(
            Check(
                f"{name}: |logit| <= {shown} = {bound:.3g} at every scale c of W_q, W_k (max |logit| / bound)",
                "paper",
                0.0,
                1.0,
                float(largest.max()) / bound if math.isfinite(bound) else INF,
            )
        )
        checks.append(
            Check(
                f"{name}: the logits no longer grow with c (exponent from c = 10 to 100, |.| <= 0.01)",
                "proof",
                -0.01,
                0.01,
                growth,
            )
        )
    return Result(
        claim=BOUNDED,
        prediction="Cauchy-Schwarz on normalized q_h, k_h: |logit| <= ||q_h|| ||k_h|| / sqrt(D_h) = sqrt(D_h) "
        "(per-head norm, gain 1), <= d / sqrt(D_h) (norm over the whole projection), <= g (l2), <= exp(min(t, ln 100)) "
        "(cosine); without a norm the logits are bilinear in W_q, W_k and grow as c^2",
        measurement="max |logit| for c up to 100: "
        + ", ".join(f"{n} {figures[f'{n}_max_logit']:.3g}" for n in variants + (("none",) if variant is None else ())),
        checks=checks,
        figures=figures,
        config={"d_model": d, "n_layers": 2, "n_heads": 4, "seeds": len(seeds), "scales": list(scales)},
    )


INVARIANCE = Claim(
    id="qk-norm-scale-invariance",
    title="QK-norm, HybridNorm: attention invariant to the scale of W_q, W_k (W_v with its norm); dL/dW orthogonal "
    "to W, ~ 1/c",
    paper="Zhuo et al. 2025, HybridNorm, Sec. 3; Henry et al. 2020; Dehghani et al. 2023",
    proof="qk-norm-scale-invariance.md",
    run=run_invariance,
    failure_verdict="refuted",
)

BOUNDED = Claim(
    id="qk-norm-bounded-logits",
    title="QK-norm bounds the attention logits whatever the scale of W_q, W_k; without it they grow as c^2",
    paper="Henry et al. 2020, QKNorm; Dehghani et al. 2023, Sec. 3; Liu et al. 2022, Swin V2, Sec. 3.2",
    proof="qk-norm-bounded-logits.md",
    run=run_bounded,
    failure_verdict="refuted",
)
