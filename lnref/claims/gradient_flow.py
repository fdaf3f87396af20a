"""Does a Post-LN stack lose gradient layer by layer at initialization?

Xiong et al. 2020 (appendix) argue that every Post-LN layer multiplies the backward gradient
by about sqrt(2/3) (its last LN divides by the scale sqrt(3/2) of x5), so the gradient decays
geometrically towards the input. Liu et al. 2020 (Sec. 3) argue that an encoder sublayer's
Jacobian I + dF/dx gives back what its LN takes, and that only a sublayer whose branch does
not read its input (a decoder's attention to the encoder output) shrinks the gradient, by
1/sqrt(1 + Var[branch]) ~ 1/sqrt(2). Derivations: proofs/post-ln-encoder-decay.md,
proofs/post-ln-decoder-shrink.md.

Both arguments are about the two factors of one Post-LN sublayer x_out = LN(x_in + F(x_in)):

    dL/dx_in = (I + J_F)^T  J_LN^T  dL/dx_out
               `residual'   `LN'

so each sublayer's ratio ||dL/dx_in|| / ||dL/dx_out|| is measured as the product of
||J_LN^T g|| / ||g|| and ||(I + J_F)^T u|| / ||u||, from one traced backward pass.
"""

from __future__ import annotations

import math

import numpy as np

from lnref import probes
from lnref.claims import common
from lnref.claims.core import Check, Claim, Result
from lnref.claims.stats import mean_se, slope_over_seeds
from lnref.claims.trace import grad_of, sublayers, trace

HALF_LN_3_2 = 0.5 * math.log(1.5)
HALF_LN_2 = 0.5 * math.log(2.0)


def sublayer_factors(model, x, dy, memory=None):
    """Per sublayer: (layer, branch name, log LN factor, log residual factor, branch output
    variance per token averaged, token cosine of x_in), from one traced backward pass."""
    traced = trace(model, x, dy, memory)
    rows = []
    for layer, branch, norm in sublayers(traced):
        g_out = np.linalg.norm(grad_of(norm.output))
        g_z = np.linalg.norm(grad_of(norm.input))
        g_in = np.linalg.norm(grad_of(branch.input))
        variance = float(np.mean(np.var(branch.output.value, axis=-1)))
        rows.append(
            (
                layer,
                branch.name,
                math.log(g_z / g_out),
                math.log(g_in / g_z),
                variance,
                _token_cosine(branch.input.value),
            )
        )
    return rows, traced


def _token_cosine(x):
    """Mean cosine between distinct tokens of a sequence (after centring each vector):
    1 when the tokens have collapsed onto one direction."""
    centred = x - x.mean(axis=-1, keepdims=True)
    unit = centred / np.linalg.norm(centred, axis=-1, keepdims=True)
    gram = np.einsum("bid,bjd->bij", unit, unit)
    n = x.shape[1]
    return float(np.mean((gram.sum(axis=(1, 2)) - n) / (n * n - n)))


def _collect(model_factory, seeds, batch, seq, memory_transform=None):
    per_seed = []
    for seed in seeds:
        model = model_factory(seed)
        x, dy, memory = model.sample_inputs(batch=batch, seq=seq)
        if memory_transform is not None:
            memory = memory_transform(memory)
        rows, traced = sublayer_factors(model, x, dy, memory)
        grad_norms = probes.hidden_grad_norms(traced.states)
        per_seed.append((rows, grad_norms))
    return per_seed


def _kind_means(per_seed, kind, column):
    """Per seed, the mean of one column over the sublayers of one kind; then mean, se."""
    values = [np.mean([row[column] for row in rows if row[1] == kind]) for rows, _ in per_seed]
    return mean_se(values)


def _stack_slope(per_seed):
    """Least-squares slope of log ||dL/dx_l|| against l: positive when the gradient is smaller
    in lower layers (decays towards the input)."""
    depth = len(per_seed[0][1]) - 1
    return slope_over_seeds(np.arange(depth + 1), np.array([g for _, g in per_seed]), log_y=True)


# ===== the encoder: Xiong's appendix against Liu ===================================================


def run_encoder(quick=False, progress=None):
    d = 32 if quick else 64
    depth = 12 if quick else 24
    seeds = range(6 if quick else 10)
    batch, seq = 2, 16
    results = {}
    for setting in common.SETTINGS:
        common.progress_line(progress, f"post-ln-encoder-decay: {setting} setting")
        results[setting] = _collect(
            lambda s, st=setting: common.build("post", depth, s, d, setting=st), seeds, batch, seq
        )
    xi = results["xiong"]
    ln_ffn, res_ffn = _kind_means(xi, "ffn", 2), _kind_means(xi, "ffn", 3)
    net_ffn = mean_se([np.mean([r[2] + r[3] for r in rows if r[1] == "ffn"]) for rows, _ in xi])
    gain = common.setting_ffn_gain("lnref", d)
    net_ffn_lnref = mean_se([np.mean([r[2] + r[3] for r in rows if r[1] == "ffn"]) for rows, _ in results["lnref"]])
    slope_xi, slope_ours = _stack_slope(xi), _stack_slope(results["lnref"])
    attn = [(r[2] + r[3], r[5]) for rows, _ in xi for r in rows if r[1] == "attn"]
    collapsed = [f for f, cos in attn if cos > 0.9]
    spread = [f for f, cos in attn if cos < 0.5]
    checks = [
        Check(
            "Xiong appendix: each FFN sublayer scales the gradient by sqrt(2/3) (mean log factor)",
            "paper",
            -HALF_LN_3_2 - 0.05,
            -HALF_LN_3_2 + 0.05,
            *net_ffn,
            expected=False,
        ),
        Check(
            "Xiong appendix: the gradient decays towards the input by >= sqrt(2/3) per layer "
            "(slope of log||dL/dx_l|| in l, xiong setting)",
            "paper",
            HALF_LN_3_2 - 0.05,
            math.inf,
            *slope_xi,
            expected=False,
        ),
        Check(
            "Liu: no per-layer decay in an encoder (slope of log||dL/dx_l|| in l, xiong setting)",
            "paper",
            -0.1,
            0.1,
            *slope_xi,
        ),
        Check("Liu: no per-layer decay in an encoder (slope, lnref setting)", "paper", -0.1, 0.1, *slope_ours),
        Check(
            "FFN sublayer's LN factor = -1/2 ln(3/2) (mean log, xiong setting)",
            "proof",
            -HALF_LN_3_2 - 0.05,
            -HALF_LN_3_2 + 0.05,
            *ln_ffn,
        ),
        Check(
            "FFN sublayer's residual factor I + J_F = +1/2 ln(3/2) (mean log, xiong setting)",
            "proof",
            HALF_LN_3_2 - 0.05,
            HALF_LN_3_2 + 0.05,
            *res_ffn,
        ),
        Check("FFN sublayer's net factor = 0 (mean log, xiong setting)", "proof", -0.05, 0.05, *net_ffn),
        Check(
            f"FFN sublayer's net factor = 0 (mean log, lnref setting, c = {gain:.2f})",
            "proof",
            -0.05,
            0.05,
            *net_ffn_lnref,
        ),
    ]
    figures = {
        "ffn_ln_log_factor": ln_ffn[0],
        "ffn_residual_log_factor": res_ffn[0],
        "ffn_net_log_factor": net_ffn[0],
        "stack_slope_xiong": slope_xi[0],
        "stack_slope_lnref": slope_ours[0],
        "attn_net_log_factor_collapsed_tokens": float(np.mean(collapsed)) if collapsed else float("nan"),
        "attn_net_log_factor_spread_tokens": float(np.mean(spread)) if spread else float("nan"),
        "top_token_cosine": float(np.mean([rows[-1][5] for rows, _ in xi])),
    }
    return Result(
        claim=ENCODER,
        prediction=(
            "Xiong appendix: ~sqrt(2/3) lost per layer; ours (with Liu): each FFN's I + J_F gives back "
            "exactly what its LN takes, E gain (1 + c)/(1 + c) = 1, so no per-layer decay from the FFN"
        ),
        measurement=(
            f"FFN log factors: LN {ln_ffn[0]:+.3f}, residual {res_ffn[0]:+.3f}, net {net_ffn[0]:+.3f}; "
            f"stack slope {slope_xi[0]:+.3f} (xiong), {slope_ours[0]:+.3f} (lnref) per layer"
        ),
        checks=checks,
        figures=figures,
        config={
            "scheme": "post",
            "d_model": d,
            "n_layers": depth,
            "seeds": len(seeds),
            "batch": batch,
            "seq": seq,
            "settings": list(common.SETTINGS),
        },
    )


# ===== the decoder: attention to a fixed memory ===================================================


def run_decoder(quick=False, progress=None):
    d = 32 if quick else 64
    depth = 8 if quick else 16
    seeds = range(6 if quick else 10)
    batch, seq = 2, 16

    def factory(seed):
        return common.build("post", depth, seed, d, setting="lnref", cross_attention=True, causal=True)

    memories = {"coherent": common.coherent_memory, "iid": None}
    results = {}
    for name, transform in memories.items():
        common.progress_line(progress, f"post-ln-decoder-shrink: {name} memory")
        results[name] = _collect(factory, seeds, batch, seq, transform)
    coh = results["coherent"]
    cross_net = mean_se([np.mean([r[2] + r[3] for r in rows if r[1] == "cross"]) for rows, _ in coh])
    cross_res = max(abs(r[3]) for rows, _ in coh for r in rows if r[1] == "cross")
    slope = _stack_slope(coh)
    checks = [
        Check(
            "Liu: a cross-attention sublayer scales the gradient by 1/sqrt(2) (mean log, coherent memory)",
            "paper",
            -HALF_LN_2 - 0.05,
            -HALF_LN_2 + 0.05,
            *cross_net,
        ),
        Check(
            "Liu: the decoder loses about 1/sqrt(2) per layer (slope of log||dL/dx_l|| in l, coherent memory)",
            "paper",
            HALF_LN_2 - 0.1,
            HALF_LN_2 + 0.1,
            *slope,
        ),
        Check(
            "cross-attention's residual factor is exactly 1 (max |log|, coherent memory)", "proof", 0.0, 1e-9, cross_res
        ),
    ]
    figures = {"cross_log_factor_coherent": cross_net[0], "slope_coherent": slope[0]}
    for name, per_seed in results.items():
        measured, predicted = [], []
        for rows, _ in per_seed:
            cross = [r for r in rows if r[1] == "cross"]
            measured.append(np.mean([r[2] for r in cross]))
            predicted.append(np.mean([-0.5 * math.log(1.0 + r[4]) for r in cross]))
        gap = mean_se(np.array(measured) - np.array(predicted))
        checks.append(
            Check(
                f"cross LN factor = -1/2 ln(1 + Var[cross output]) (mean measured - predicted, {name} memory)",
                "proof",
                -0.05,
                0.05,
                *gap,
            )
        )
        figures[f"cross_ln_log_factor_{name}"] = float(np.mean(measured))
    figures["slope_iid"] = _stack_slope(results["iid"])[0]
    return Result(
        claim=DECODER,
        prediction=(
            "a branch that does not read its input leaves I + J = I: the sublayer scales the gradient by "
            "1/sqrt(1 + Var[branch]), 1/sqrt(2) when the attended memory carries unit variance"
        ),
        measurement=(
            f"cross sublayer log factor {cross_net[0]:+.3f} (ln(1/sqrt 2) = {-HALF_LN_2:.3f}); stack "
            f"{slope[0]:+.3f} per layer (coherent memory), {figures['slope_iid']:+.3f} (iid memory)"
        ),
        checks=checks,
        figures=figures,
        config={
            "scheme": "post",
            "setting": "lnref",
            "causal": True,
            "cross_attention": True,
            "d_model": d,
            "n_layers": depth,
            "seeds": len(seeds),
            "batch": batch,
            "seq": seq,
            "memories": "coherent (one vector, squared norm d) and iid N(0, 1)",
        },
    )


ENCODER = Claim(
    id="post-ln-encoder-decay",
    title="Does a Post-LN encoder lose gradient layer by layer at init? (Xiong appendix vs Liu)",
    paper="Xiong et al. 2020, appendix; Liu et al. 2020, Sec. 3",
    proof="post-ln-encoder-decay.md",
    run=run_encoder,
    failure_verdict="refuted",
)

DECODER = Claim(
    id="post-ln-decoder-shrink",
    title="Post-LN decoder: attention to a fixed memory shrinks the gradient by ~1/sqrt(2) per layer",
    paper="Liu et al. 2020, Sec. 3",
    proof="post-ln-decoder-shrink.md",
    run=run_decoder,
    failure_verdict="corrected",
)
