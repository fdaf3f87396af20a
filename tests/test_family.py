"""The rest of the family, part 1: reordered, subln, hybridnorm, normformer, lns, layerscale,
parallel, tfixup and dslm.

What every scheme gets from the shared tests (shapes, the gradient check in both modes and both
norms, fast paths, replay, profiles, golden files) is not repeated here. Here: their options and
decoder forms under the gradient check, the identities their papers state that hold exactly, the
CLI on each, and the bad input each refuses.
"""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import lnref
from lnref import gradcheck as checker
from lnref.cli import main
from lnref.golden import compare_files, export_golden
from lnref.schemes import get_scheme

SMALL = dict(d_model=8, n_heads=2, d_ff=16)
NEW = ("reordered", "subln", "hybridnorm", "normformer", "lns", "layerscale", "parallel", "tfixup", "dslm")
VARIANTS = [(scheme, {}) for scheme in NEW] + [
    ("reordered", {"init": "swinv2"}),
    ("hybridnorm", {"first_block": "pre"}),
    ("normformer", {"head_scale": "fairseq", "resid_scale": True}),
    ("parallel", {"norms": "two"}),
    ("layerscale", {"init_scale": "0.5"}),
    ("dslm", {"placement": "post"}),
]


def label(variant):
    scheme, options = variant
    return "-".join([scheme, *(f"{k}={v}" for k, v in options.items())])


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def generic(model, seed=0):
    """The model's parameters moved off the initialization (gains off 1, shifts off 0)."""
    rng = np.random.default_rng(seed)
    for value in model.params.values():
        value += 0.1 * (np.sqrt(np.mean(value**2)) or 1.0) * rng.standard_normal(value.shape)
    return model


# ----- the registry and the gradient check ------------------------------------------------


def test_lnref_schemes_lists_the_schemes_with_their_papers():
    result = run("schemes")
    assert result.exit_code == 0
    schemes_part = result.output.partition("\naliases")[0]  # the aliases follow: tests/test_family2.py
    names = [line.split()[0] for line in schemes_part.splitlines() if not line.startswith(" ")]
    assert names == list(lnref.SCHEMES) and set(NEW) <= set(names)
    for scheme in NEW:
        assert get_scheme(scheme).PAPER in result.output


@pytest.mark.parametrize("mode", ["directional", "blockwise"])
@pytest.mark.parametrize("variant", VARIANTS, ids=label)
def test_each_option_of_each_scheme_passes_the_gradient_check_in_a_causal_decoder(variant, mode):
    scheme, options = variant
    model = lnref.build(scheme, 3, **SMALL, options=options, cross_attention=True, causal=True)
    report = checker.gradcheck(model, mode=mode, batch=2, seq=4, workers=1)
    assert report.ok, report.to_text()
    key_shifts = [f"layers.{i}.{branch}" for i in range(3) for branch in ("attn", "cross")]  # zero gradient
    unresolved = [r.tensor for r in report.results if r.status == "unresolved"]
    zero = [r.tensor for r in report.results if r.status == "zero"]
    assert unresolved == []
    if scheme == "hybridnorm":  # see the next test but one
        assert zero == [f"{at}.k_norm.beta" for at in key_shifts]
    else:
        assert zero == [f"{at}.bk" for at in key_shifts]


def test_deep_reordered_norm_passes_the_directional_check_at_a_finer_step():
    # Each block's Jacobian is I + J_N J_S with J_N ~ 1/|S(x)|: the input gradient grows by
    # orders of magnitude from the top layers to the bottom ones, and the loss is no longer
    # smooth on the default step's scale there (a few tensors of this model fail at 1e-3,
    # none in blockwise mode). At 1e-4 the differences resolve every one of them.
    model = lnref.build("reordered", 24, norm="rmsnorm", seed=3)
    report = checker.gradcheck(model, mode="directional", step=1e-4)
    assert report.ok and report.counts["unresolved"] == 0, report.to_text()


def test_hybridnorm_reports_the_key_shifts_as_its_zeros_by_structure():
    # A shift added to every key moves each query's scores by one constant: softmax ignores it.
    # With per-head key norms that shift is the key norm's beta; b_k now reaches the scores
    # and is checked.
    model = lnref.build("hybridnorm", 3, **SMALL)
    report = checker.gradcheck(model, mode="directional", batch=2, seq=4, workers=1)
    assert report.ok
    assert [r.tensor for r in report.results if r.status == "zero"] == [
        f"layers.{i}.attn.k_norm.beta" for i in range(3)
    ]
    assert {r.tensor: r.status for r in report.results}["layers.1.attn.bk"] == "passed"


def test_a_broken_per_head_norm_backward_fails_hybridnorms_value_norms(monkeypatch):
    from lnref.autograd import PRIMITIVES

    vjp = PRIMITIVES["layer_norm"].vjp

    def without_gamma(dout, residuals):
        rows, gamma, mu, rstd = residuals
        return vjp(dout, (rows, np.ones_like(gamma), mu, rstd))

    monkeypatch.setitem(PRIMITIVES, "layer_norm", PRIMITIVES["layer_norm"]._replace(vjp=without_gamma))
    report = checker.gradcheck(lnref.build("hybridnorm", 2, **SMALL), mode="blockwise", batch=2, seq=4)
    assert "layers.0.attn.v_norm.gamma" in {r.tensor for r in report.results if r.status == "failed"}


def test_a_broken_backward_of_the_head_scale_reshape_fails_the_fairseq_head_scale(monkeypatch):
    from lnref.autograd import PRIMITIVES

    model = lnref.build("normformer", 2, **SMALL, options={"head_scale": "fairseq"})
    vjp, scales = PRIMITIVES["reshape"].vjp, (model.config.n_heads,)  # (H,) -> (H, 1): the scales' reshape

    def broken(dout, shape):
        return (0.5 * vjp(dout, shape)[0],) if shape == scales else vjp(dout, shape)

    monkeypatch.setitem(PRIMITIVES, "reshape", PRIMITIVES["reshape"]._replace(vjp=broken))
    failed = {
        r.tensor for r in checker.gradcheck(model, mode="directional", batch=2, seq=4).results if r.status == "failed"
    }
    assert {"layers.0.head_scale", "layers.1.head_scale"} <= failed


@pytest.mark.parametrize("variant", VARIANTS, ids=label)
def test_the_claims_trace_sees_every_branch_of_each_scheme(variant):
    # The norms a scheme calls itself are recorded; those inside a sublayer (pieces such as
    # Sub-LN's ln_hidden) belong to the branch's output.
    from lnref.claims.trace import trace

    scheme, options = variant
    model = lnref.build(scheme, 2, **SMALL, options=options, cross_attention=True)
    x, dy, memory = model.sample_inputs()
    traced = trace(model, x, dy, memory)
    branches = [(e.layer, e.name) for e in traced.select(kind="branch")]
    assert branches == [(i, name) for i in range(2) for name in ("attn", "cross", "ffn")]
    assert all(e.input.grad is not None for e in traced.select(kind="branch"))
    norms = {f"layers.{e.layer}.{e.name}" for e in traced.select(kind="norm")}
    assert norms <= {name.rpartition(".")[0] for name in model.params} and (bool(norms) or scheme == "tfixup")


# ----- golden files -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=label)
def test_export_and_compare_take_each_scheme_and_its_options(tmp_path, variant):
    scheme, options = variant
    golden = tmp_path / "golden.npz"
    flags = [item for name, value in options.items() for item in ("--option", f"{name}={value}")]
    assert run("export", "--scheme", scheme, "--layers", 2, *flags, "-o", golden).exit_code == 0
    assert (
        lnref.from_golden(golden).config.to_dict()["options"]
        == lnref.build(scheme, 2, options=options).config.to_dict()["options"]
    )
    result = run("compare", golden, golden)
    assert result.exit_code == 0 and ", 0 failed" in result.output


def test_compare_tells_a_normformer_of_one_head_scale_reading_from_the_other(tmp_path):
    # At init (every head scale 1) the readings agree; off it, a port of the wrong one fails.
    model = generic(lnref.build("normformer", 2, **SMALL))
    other = lnref.build("normformer", 2, **SMALL, options={"head_scale": "fairseq"})
    other.load(model.params)
    export_golden(model, tmp_path / "paper.npz", batch=2, seq=4)
    export_golden(other, tmp_path / "fairseq.npz", batch=2, seq=4)
    report = compare_files(tmp_path / "paper.npz", tmp_path / "fairseq.npz")
    assert not report.ok and "y" in {r.name for r in report.results if r.status == "FAIL"}


# ----- identities the papers state --------------------------------------------------------


def test_swin_v2_init_makes_every_block_the_identity():
    model = lnref.build("reordered", 4, **SMALL, options={"init": "swinv2"}, cross_attention=True)
    x, dy, memory = model.sample_inputs()
    assert all(np.array_equal(state[0], x) for state in model.hidden_states(x, memory))
    _, grads = model.value_and_grad(x, dy, memory)
    for name in ("attn.wq", "attn.wo", "cross.wv", "ffn.w1", "ffn.b2"):
        assert not grads[f"layers.2.{name}"].any(), name  # the zero gains block every branch
    assert grads["layers.2.ln_ffn_out.gamma"].any()


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_lns_is_pre_ln_with_each_layers_norm_gains_and_shifts_divided_by_sqrt_l(norm):
    lns = generic(lnref.build("lns", 4, **SMALL, norm=norm))
    pre = lnref.build("pre", 4, **SMALL, norm=norm)
    scaled = {}
    for name, value in lns.params.items():
        parts = name.split(".")
        in_layer_norm = parts[0] == "layers" and parts[2].startswith("ln_")
        scaled[name] = value / math.sqrt(int(parts[1]) + 1) if in_layer_norm else value.copy()
    pre.load(scaled)
    x, _, _ = lns.sample_inputs()
    np.testing.assert_allclose(lns(x), pre(x), rtol=1e-12, atol=1e-12)


def test_lns_differs_from_pre_ln_whose_gains_are_divided_by_l_instead():
    # Negative control of the identity above.
    lns = generic(lnref.build("lns", 4, **SMALL))
    pre = lnref.build("pre", 4, **SMALL)
    pre.load({n: v / (int(n.split(".")[1]) + 1) if ".ln_" in n else v for n, v in lns.params.items()})
    x, _, _ = lns.sample_inputs()
    assert not np.allclose(lns(x), pre(x), rtol=1e-6)


def _dslm_and_deepnorm(deepnorm_eps, dslm_eps, norm="layernorm", layers=6):
    """Post-DSLM with lambda / beta = DeepNorm's alpha, and DeepNorm at the same weights;
    ``dslm_eps(beta_sq)`` is the eps of DSLM's norms."""
    alpha = (2 * layers) ** 0.25  # DeepNorm's, encoder-only
    beta_sq = 1 / (1 + alpha**2)
    options = {"placement": "post", "beta_sq": beta_sq}
    dslm = generic(lnref.build("dslm", layers, **SMALL, norm=norm, eps=dslm_eps(beta_sq), options=options))
    deepnorm = lnref.build("deepnorm", layers, **SMALL, norm=norm, eps=deepnorm_eps)
    deepnorm.load(dslm.params)
    return dslm, deepnorm


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_post_dslm_is_deepnorm_with_alpha_lambda_over_beta_at_the_same_weights(norm):
    dslm, deepnorm = _dslm_and_deepnorm(1e-5, lambda beta_sq: 1e-5 * beta_sq, norm)
    x, dy, _ = dslm.sample_inputs()
    np.testing.assert_allclose(dslm(x), deepnorm(x), rtol=1e-11, atol=1e-11)
    _, ours = dslm.value_and_grad(x, dy)
    _, theirs = deepnorm.value_and_grad(x, dy)
    scale = {}  # round-off is relative to the largest gradient of a tensor's group (layers.3.attn.*)
    for name, grad in theirs.items():
        scale[name.rpartition(".")[0]] = max(scale.get(name.rpartition(".")[0], 0.0), np.abs(grad).max())
    for name, grad in ours.items():
        assert np.abs(grad - theirs[name]).max() <= 1e-10 * scale[name.rpartition(".")[0]], name


def test_post_dslm_differs_from_deepnorm_unless_the_norms_eps_is_multiplied_by_beta_squared():
    # Negative control of the identity above: the same eps in both.
    dslm, deepnorm = _dslm_and_deepnorm(1e-2, lambda beta_sq: 1e-2)
    x, _, _ = dslm.sample_inputs()
    assert not np.allclose(dslm(x), deepnorm(x), rtol=1e-6)


def test_dslm_init_gives_the_moment_controlled_variances_on_lnrefs_draws():
    d, d_ff, layers = SMALL["d_model"], SMALL["d_ff"], 4
    dslm, pre = lnref.build("dslm", layers, **SMALL), lnref.build("pre", layers, **SMALL)
    r = get_scheme("dslm").correlations(dslm.config)
    assert r[0] == 0.221 and all(a < b <= 1 for a, b in zip(r, r[1:]))
    for index in range(layers):
        at = f"layers.{index}."
        np.testing.assert_array_equal(dslm.params[at + "attn.wq"], pre.params[at + "attn.wq"])  # 1/d already
        for name, variance, fans in (
            ("attn.wv", math.sqrt(1 / r[index]) / d, 2 * d),
            ("ffn.w1", math.sqrt(2 / (d * d_ff)), d + d_ff),
        ):
            ratio = math.sqrt(variance / (2 / fans))
            np.testing.assert_allclose(dslm.params[at + name], ratio * pre.params[at + name], rtol=1e-14)


def test_layerscale_with_lambda_zero_is_the_identity():
    model = lnref.build("layerscale", 3, **SMALL, cross_attention=True)
    for name, value in model.params.items():
        if ".layerscale_" in name:
            value[:] = 0
    x, _, memory = model.sample_inputs()
    assert all(np.array_equal(state[0], x) for state in model.hidden_states(x, memory))


def test_layerscale_branch_gradients_are_proportional_to_eps_as_eps_goes_to_0():
    grads = []
    for eps in (1e-8, 2e-8):
        model = lnref.build("layerscale", 3, **SMALL, options={"init_scale": str(eps)})
        x, dy, _ = model.sample_inputs()
        grads.append(model.value_and_grad(x, dy)[1]["layers.0.ffn.w2"])
    np.testing.assert_allclose(grads[1], 2 * grads[0], rtol=1e-6, atol=1e-6 * np.abs(grads[1]).max())


@pytest.mark.parametrize("layers, eps", [(1, 0.1), (18, 0.1), (19, 1e-5), (24, 1e-5), (25, 1e-6), (48, 1e-6)])
def test_layerscale_eps_follows_the_papers_rule_by_depth(layers, eps):
    model = lnref.build("layerscale", layers, d_model=4, n_heads=1, d_ff=4)
    assert np.all(model.params[f"layers.{layers - 1}.layerscale_attn"] == eps)


def test_subln_scales_wv_wo_w1_w2_by_sqrt_ln_2l_and_leaves_wq_wk():
    subln, pre = lnref.build("subln", 6, **SMALL), lnref.build("pre", 6, **SMALL)
    gamma = math.sqrt(math.log(12))
    for name in ("attn.wv", "attn.wo", "ffn.w1", "ffn.w2"):
        np.testing.assert_array_equal(subln.params[f"layers.3.{name}"], gamma * pre.params[f"layers.3.{name}"])
    for name in ("attn.wq", "attn.wk"):
        np.testing.assert_array_equal(subln.params[f"layers.3.{name}"], pre.params[f"layers.3.{name}"])


def test_subln_decoder_takes_sqrt_ln_3l_and_leaves_the_cross_attention_unscaled():
    subln = lnref.build("subln", 6, **SMALL, cross_attention=True)
    pre = lnref.build("pre", 6, **SMALL, cross_attention=True)
    np.testing.assert_array_equal(
        subln.params["layers.1.ffn.w2"], math.sqrt(math.log(18)) * pre.params["layers.1.ffn.w2"]
    )
    np.testing.assert_array_equal(subln.params["layers.1.cross.wv"], pre.params["layers.1.cross.wv"])
    assert "layers.1.ln_heads.gamma" in subln.params and subln.params["layers.1.ln_hidden.gamma"].shape == (16,)


@pytest.mark.parametrize(
    "options, factor", [({}, 0.67 * 6**-0.25), ({"causal": True}, 54**-0.25), ({"cross_attention": True}, 54**-0.25)]
)
def test_tfixup_scales_wv_wo_w1_w2_by_the_encoder_or_decoder_rule(options, factor):
    tfixup, pre = lnref.build("tfixup", 6, **SMALL, **options), lnref.build("pre", 6, **SMALL, **options)
    scaled = ["attn.wv", "attn.wo", "ffn.w1", "ffn.w2"] + (
        ["cross.wv", "cross.wo"] if "cross_attention" in options else []
    )
    for name in scaled:
        np.testing.assert_allclose(
            tfixup.params[f"layers.2.{name}"], factor * pre.params[f"layers.2.{name}"], rtol=1e-15
        )
    np.testing.assert_array_equal(tfixup.params["layers.2.attn.wq"], pre.params["layers.2.attn.wq"])
    assert not any("gamma" in name or ".ln" in name for name in tfixup.params)


def test_hybridnorm_attention_is_invariant_to_the_scale_of_wq_wk_wv():
    model = lnref.build("hybridnorm", 2, **SMALL, eps=1e-12)
    x, dy, _ = model.sample_inputs()
    y = model(x)
    _, grads = model.value_and_grad(x, dy)
    assert abs(np.sum(grads["layers.0.attn.wv"] * model.params["layers.0.attn.wv"])) < 1e-9  # <dL/dW_v, W_v> = 0
    for name in ("wq", "bq", "wk", "bk", "wv", "bv"):
        model.params[f"layers.0.attn.{name}"] *= 3.0
    np.testing.assert_allclose(model(x), y, rtol=1e-9, atol=1e-9)


def test_hybridnorm_star_has_a_norm_on_its_first_block_input_only():
    star = lnref.build("hybridnorm", 3, **SMALL, options={"first_block": "pre"})
    plain = lnref.build("hybridnorm", 3, **SMALL)
    assert [n for n in star.params if n not in plain.params] == ["layers.0.ln_attn.gamma", "layers.0.ln_attn.beta"]
    assert plain.params["layers.1.attn.v_norm.gamma"].shape == (4,)


def test_hybridnorm_star_first_block_is_pre_norm_so_a_shift_of_its_input_passes_through():
    # LayerNorm ignores a shift c * (1, ..., 1): a Pre-Norm block maps x + c to its image of x, + c.
    star = generic(lnref.build("hybridnorm", 2, **SMALL, options={"first_block": "pre"}))
    plain = lnref.build("hybridnorm", 2, **SMALL)
    plain.load({name: value for name, value in star.params.items() if name in plain.params})
    x, _, _ = star.sample_inputs()
    first = {name: model.hidden_states(x)[1][0] for name, model in (("star", star), ("plain", plain))}
    shifted = {name: model.hidden_states(x + 3.0)[1][0] for name, model in (("star", star), ("plain", plain))}
    np.testing.assert_allclose(shifted["star"], first["star"] + 3.0, rtol=1e-12, atol=1e-12)
    assert not np.allclose(shifted["plain"], first["plain"] + 3.0, atol=1e-3)  # HybridNorm's reads x itself


def test_profile_takes_hybridnorm_star_whose_first_layer_has_one_more_norm():
    result = run(
        "profile", "--scheme", "hybridnorm", "--option", "first_block=pre", "--layers", 3, "--seeds", 2, "--json"
    )
    assert result.exit_code == 0, result.output
    assert "grad.norm_gain" in result.output


def test_normformer_head_scale_readings_agree_at_init_and_differ_once_the_scales_do():
    paper = lnref.build("normformer", 3, **SMALL)
    fairseq = lnref.build("normformer", 3, **SMALL, options={"head_scale": "fairseq"})
    x, _, _ = paper.sample_inputs()
    np.testing.assert_allclose(paper(x), fairseq(x), rtol=1e-12)
    for model in (paper, fairseq):
        model.params["layers.1.head_scale"][:] = [0.5, 2.0]
    assert not np.allclose(paper(x), fairseq(x), rtol=1e-6)


def test_normformer_resid_scale_adds_a_gain_on_the_ffn_skip():
    model = lnref.build("normformer", 2, **SMALL, options={"resid_scale": True})
    assert model.params["layers.1.resid_scale"].shape == (8,) and model.params["layers.1.head_scale"].shape == (2,)
    assert "layers.1.resid_scale" not in lnref.build("normformer", 2, **SMALL).params


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_parallel_block_with_a_silent_ffn_is_pre_ln_with_a_silent_ffn(norm):
    parallel = generic(lnref.build("parallel", 3, **SMALL, norm=norm))
    pre = lnref.build("pre", 3, **SMALL, norm=norm)
    for index in range(3):
        parallel.params[f"layers.{index}.ffn.w2"][:] = 0
        parallel.params[f"layers.{index}.ffn.b2"][:] = 0
    renamed = {name.replace(".ln.", ".ln_attn."): value for name, value in parallel.params.items()}
    renamed.update({n.replace(".ln_attn.", ".ln_ffn."): v for n, v in renamed.items() if ".ln_attn." in n})
    pre.load(renamed)
    x, _, _ = parallel.sample_inputs()
    np.testing.assert_allclose(parallel(x), pre(x), rtol=1e-12, atol=1e-12)


def test_parallel_block_has_one_norm_or_one_per_branch():
    shared = lnref.build("parallel", 2, **SMALL, cross_attention=True)
    two = lnref.build("parallel", 2, **SMALL, cross_attention=True, options={"norms": "two"})
    assert {n.split(".")[2] for n in shared.params if n.startswith("layers.1.ln")} == {"ln"}
    assert {n.split(".")[2] for n in two.params if n.startswith("layers.1.ln")} == {"ln_attn", "ln_cross", "ln_ffn"}


# ----- bad input: one line, exit 2 --------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["--scheme", "tfixup", "--norm", "rmsnorm"], "takes no norm option: T-Fixup has no norm"),
        (["--scheme", "tfixup", "--qk-norm", "head"], "takes no qk_norm option"),
        (["--scheme", "tfixup", "--eps", "1e-6"], "takes no eps option"),
        (["--scheme", "hybridnorm", "--qk-norm", "full"], "normalizes q, k and v per head itself"),
        (
            ["--scheme", "layerscale", "--option", "init_scale=0"],
            "init_scale of layerscale must be depth or a number > 0",
        ),
        (["--scheme", "layerscale", "--option", "init_scale=-1e-5"], "got '-1e-5'"),
        (["--scheme", "layerscale", "--option", "init_scale=deep"], "got 'deep'"),
        (["--scheme", "dslm", "--option", "beta_sq=1.5"], "beta_sq of dslm must be in (0, 1)"),
        (["--scheme", "hybridnorm", "--d-model", "10", "--heads", "3"], "d_model 10 is not divisible by n_heads 3"),
        (["--scheme", "normformer", "--option", "head_scale=middle"], "must be one of paper, fairseq"),
        (["--scheme", "parallel", "--option", "shared=1"], "has no option 'shared'; its options: norms"),
    ],
)
@pytest.mark.parametrize("command", ["gradcheck", "export"])
def test_a_setting_a_scheme_cannot_take_is_one_line_and_exit_2(tmp_path, command, args, words):
    extra = ["-o", tmp_path / "g.npz"] if command == "export" else []
    result = run(command, *args, "--layers", 2, *extra)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.stderr


def test_a_sweep_leaves_out_the_norms_a_scheme_refuses_and_says_so():
    result = run(
        "gradcheck", "--scheme", "tfixup,lns", "--layers", 2, "--norm", "layernorm,rmsnorm", "--backend", "serial"
    )
    assert result.exit_code == 0, result.output
    assert "note: tfixup with rmsnorm left out: scheme tfixup takes no norm option" in result.stderr
    assert "3 models: 3 passed, 0 failed" in result.stdout


def test_profile_leaves_out_a_scheme_that_refuses_the_norm_and_says_so():
    result = run("profile", "--scheme", "tfixup,lns", "--norm", "rmsnorm", "--layers", 2, "--seeds", 1, "--json")
    assert result.exit_code == 0, result.output
    assert "note: tfixup left out: scheme tfixup takes no norm option" in result.stderr
    assert [entry["scheme"] for entry in json.loads(result.stdout)["results"]] == ["lns"]
