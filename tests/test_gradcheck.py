"""The gradient checker: it passes correct models in every mode and catches broken ones."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import lnref
from lnref import gradcheck as checker
from lnref.autograd import PRIMITIVES, kernels, ops
from lnref.cli import main
from lnref.finite_diff import central_difference
from lnref.gradcheck import point as point_module
from lnref.gradcheck.point import Point, linear_per_row
from lnref.gradcheck.report import compare
from lnref.model import refusal
from lnref.process import workers

SMALL = dict(d_model=8, n_heads=2, d_ff=16)
SHAPE = dict(batch=2, seq=4)


def check(scheme, layers=3, mode="directional", point="generic", **options):
    model = lnref.build(scheme, n_layers=layers, **{**SMALL, **options})
    return checker.gradcheck(model, mode=mode, point=point, **SHAPE)


def failed(report):
    return {r.tensor for r in report.results if r.status == "failed"}


def unresolved_other_than_key_biases(report):
    return [r.tensor for r in report.results if r.status == "unresolved" and not r.tensor.endswith(".bk")]


# ----- correct models pass -----


@pytest.mark.parametrize(
    "scheme, norm", [(s, n) for s in lnref.SCHEMES for n in ("layernorm", "rmsnorm") if refusal(s, norm=n) is None]
)
@pytest.mark.parametrize("mode", ["directional", "blockwise"])
def test_every_scheme_and_norm_passes(scheme, norm, mode):
    report = check(scheme, norm=norm, mode=mode)
    assert report.ok, report.to_text()
    assert report.counts["passed"] > 0


@pytest.mark.parametrize(
    "options",
    [
        dict(cross_attention=True),
        dict(causal=True),
        dict(activation="gelu"),
        dict(activation="gelu_tanh"),
        dict(dtype="float32"),
    ],
)
def test_decoder_causal_gelu_and_float32_models_pass(options):
    report = check("residual", **options)
    assert report.ok, report.to_text()


@pytest.mark.parametrize("scheme", ["post", "residual", "admin", "dlcl", "rezero"])
def test_full_mode_passes_at_two_layers(scheme):
    model = lnref.build(scheme, n_layers=2, d_model=4, n_heads=2, d_ff=8)
    report = checker.gradcheck(model, mode="full", batch=1, seq=3)
    assert report.ok, report.to_text()


def test_entries_mode_checks_the_requested_number_of_elements():
    model = lnref.build("pre", n_layers=2, **SMALL)
    report = checker.gradcheck(model, mode="entries", entries=3, **SHAPE)
    wq = next(r for r in report.results if r.tensor == "layers.0.attn.wq")
    assert sum(wq.counts.values()) == 3 and report.ok


def test_every_tensor_and_the_input_are_checked():
    model = lnref.build("peri", n_layers=2, cross_attention=True, **SMALL)
    report = checker.gradcheck(model, **SHAPE)
    assert {r.tensor for r in report.results} == set(model.params) | {"input", "memory"}


def test_blockwise_checks_every_parameter_and_every_layer_input():
    model = lnref.build("residual", n_layers=3, **SMALL)
    names = {r.tensor for r in checker.gradcheck(model, mode="blockwise", **SHAPE).results}
    assert set(model.params) <= names
    assert {"layers.0.input.0", "layers.0.input.1", "layers.2.input.1", "readout.input.0"} <= names


def test_deep_post_ln_lower_layers_are_resolved_in_blockwise_mode():
    report = check("post", layers=24, mode="blockwise")
    assert report.ok and unresolved_other_than_key_biases(report) == []


def test_key_biases_are_zero_by_structure_never_passed():
    # Softmax ignores a shift shared by all keys of a query: dL/dbk is exactly zero.
    report = check("pre")
    statuses = {r.tensor: r.status for r in report.results}
    assert statuses["layers.0.attn.bk"] == "zero"
    assert report.counts["zero"] == 3 and "zero by structure (*.bk)" in report.to_text()


def test_a_key_bias_with_a_norm_on_k_is_no_structural_zero_and_passes():
    report = check("pre", qk_norm="head")
    assert {r.tensor: r.status for r in report.results}["layers.0.attn.bk"] == "passed"


def test_a_broken_key_bias_gradient_is_caught_not_labelled_zero(monkeypatch):
    # With a norm on k, dL/dbk is not zero; a backward that drops it must fail.
    from lnref.autograd import PRIMITIVES

    vjp = PRIMITIVES["linear"].vjp

    def without_the_bias_gradient(dout, residuals):
        dx, dweight, dbias = vjp(dout, residuals)
        return dx, dweight, dbias * 0.0

    monkeypatch.setitem(PRIMITIVES, "linear", PRIMITIVES["linear"]._replace(vjp=without_the_bias_gradient))
    report = check("pre", qk_norm="head")
    statuses = {r.tensor: r.status for r in report.results}
    assert statuses["layers.0.attn.bk"] == "failed"
    assert {name for name, status in statuses.items() if status == "zero"} <= {
        f"layers.{i}.attn.k_norm.beta" for i in range(3)
    }


def test_the_main_job_leaves_nothing_unresolved_but_the_zeros_by_structure():
    model = lnref.build("residual", n_layers=48, d_model=16, n_heads=2, d_ff=64)
    report = checker.gradcheck(model)
    assert report.ok and report.counts["unresolved"] == 0
    assert report.counts["zero"] == 48 and "0 unresolved apart from the zeros by structure" in report.to_text()


def test_unresolved_layer_parameters_are_checked_again_with_their_layer_alone(monkeypatch):
    # Negative control: without the second check the deep model leaves tensors unresolved.
    monkeypatch.setattr(checker, "_recheck_unresolved", lambda at, results, *args: results)
    model = lnref.build("residual", n_layers=48, d_model=16, n_heads=2, d_ff=64)
    assert checker.gradcheck(model).counts["unresolved"] > 0


# ----- broken models fail, and the checker names the tensor -----


def _layer_norm_backward_without_projection(dy, x, gamma, mean, rstd, residuals_checked=False):
    g = dy * gamma
    dx = rstd[:, None] * (g - g.mean(axis=1, keepdims=True))
    return dx, (dy * (x - mean[:, None]) * rstd[:, None]).sum(axis=0), dy.sum(axis=0)


@pytest.mark.parametrize("scheme", ["post", "pre", "residual", "b2t"])
def test_a_dropped_layer_norm_term_fails(monkeypatch, scheme):
    monkeypatch.setattr(kernels, "layer_norm_backward", _layer_norm_backward_without_projection)
    report = check(scheme)
    assert not report.ok and "input" in failed(report)


def test_a_layer_norm_backward_that_ignores_gamma_passes_at_init_but_fails_at_a_generic_point(monkeypatch):
    original = kernels.layer_norm_backward
    monkeypatch.setattr(
        kernels,
        "layer_norm_backward",
        lambda dy, x, gamma, mean, rstd, **flags: original(dy, x, np.ones_like(gamma), mean, rstd, **flags),
    )
    assert check("post", point="init").ok
    assert not check("post", point="generic").ok


def test_a_forward_backward_mismatch_fails(monkeypatch):
    # The forward uses exact GELU, the backward still differentiates the tanh approximation.
    def forward_with_exact_gelu(x, w1, b1, w2, b2, activation):
        hidden = kernels.linear_forward(x, w1, b1)
        acted = kernels.gelu_forward(hidden, "none")
        return kernels.linear_forward(acted, w2, b2), hidden, acted

    monkeypatch.setattr(kernels.seam.twin("feed_forward_forward"), "override", forward_with_exact_gelu)
    report = check("sandwich", activation="gelu_tanh")
    assert any(name.startswith("layers.0.ffn") for name in failed(report))


@pytest.mark.usefixtures("ffn_backward_without_the_relu_pattern")
def test_a_relu_backward_without_its_pattern_fails():
    # The frozen ReLU patterns used for finite differences must not hide a broken ReLU VJP.
    assert "layers.0.ffn.w1" in failed(check("pre"))


def _scale_one_weight_gradient(monkeypatch, target, factor=1 + 1e-6):
    """Scale the gradient of the FFN weight equal to ``target`` (W1 or W2) in the FFN's VJP."""
    vjp = PRIMITIVES["feed_forward"].vjp

    def scaled(dout, residuals):
        grads = list(vjp(dout, residuals))
        for output, weight in ((1, residuals[2]), (3, residuals[3])):  # dW1 from W1, dW2 from W2
            if np.shape(weight) == target.shape and np.array_equal(weight, target):
                grads[output] = grads[output] * factor
        return tuple(grads)

    monkeypatch.setitem(PRIMITIVES, "feed_forward", PRIMITIVES["feed_forward"]._replace(vjp=scaled))


@pytest.mark.parametrize("mode,layers", [("full", 2), ("blockwise", 48)])
def test_one_gradient_scaled_by_one_plus_1e_6_is_caught(monkeypatch, mode, layers):
    dims = dict(d_model=4, n_heads=2, d_ff=8) if mode == "full" else SMALL
    model = lnref.build("residual", n_layers=layers, **dims)
    name = f"layers.{layers - 2}.ffn.w2"
    _scale_one_weight_gradient(monkeypatch, checker.jitter_params(model.params, model.config.seed)[name])
    report = checker.gradcheck(model, mode=mode, batch=1 if mode == "full" else 2, seq=3)
    assert failed(report) == {name}, report.to_text()


def test_the_failing_tensor_is_named_in_the_text_report(monkeypatch):
    model = lnref.build("post", n_layers=2, **SMALL)
    name = "layers.1.ffn.w1"
    _scale_one_weight_gradient(monkeypatch, checker.jitter_params(model.params, 0)[name], factor=1.01)
    text = checker.gradcheck(model, **SHAPE).to_text()
    assert f"{name} [direction] failed" in text and ", 1 failed" in text.splitlines()[-1]


# ----- full mode: every element, block by block -----


def full(scheme="residual", layers=2, workers=1, **options):
    model = lnref.build(scheme, n_layers=layers, **{**SMALL, **options})
    return model, checker.gradcheck(model, mode="full", workers=workers, **SHAPE)


def test_full_mode_checks_every_element_of_every_parameter_and_layer_input():
    model, report = full()
    counts = {r.tensor: sum(r.counts.values()) for r in report.results}
    assert all(counts[name] == value.size for name, value in model.params.items())
    states = model.hidden_states(*model.sample_inputs(**SHAPE)[::2])
    assert counts["layers.1.input.1"] == states[1][1].size
    assert sum(report.check_counts.values()) == sum(counts.values())
    assert report.ok, report.to_text()


@pytest.mark.parametrize(
    "options",
    [
        dict(cross_attention=True, causal=True),
        dict(activation="gelu"),
        dict(activation="gelu_tanh"),
        dict(norm="rmsnorm"),
    ],
)
def test_full_mode_passes_decoder_gelu_and_rmsnorm_models(options):
    _, report = full("peri", **options)
    assert report.ok, report.to_text()


def test_full_mode_reports_the_same_bits_with_one_or_two_workers():
    reports = [full("b2t", layers=3, workers=workers)[1] for workers in (1, 2)]
    for report in reports:
        report.seconds = 0.0
    assert reports[0].to_json() == reports[1].to_json()


@pytest.mark.parametrize("mode", ["directional", "entries"])
def test_directional_and_entries_checks_report_the_same_bits_with_one_or_two_workers(mode):
    model = lnref.build("post", n_layers=3, **SMALL)
    reports = [checker.gradcheck(model, mode=mode, workers=workers, **SHAPE) for workers in (1, 2)]
    for report in reports:
        report.seconds = 0.0
    assert reports[0].to_json() == reports[1].to_json()


@pytest.mark.usefixtures("ffn_backward_without_the_relu_pattern")
def test_a_broken_backward_is_caught_when_workers_share_the_checks():
    model = lnref.build("pre", n_layers=3, **SMALL)
    assert "layers.0.ffn.w1" in failed(checker.gradcheck(model, workers=2, **SHAPE))


def test_small_models_are_checked_in_one_process_by_default(monkeypatch):
    def no_fork(*args):
        raise AssertionError("a worker pool was started")

    monkeypatch.setattr(workers.multiprocessing, "get_context", no_fork)
    assert check("pre", layers=6).ok


def _break_one_element(monkeypatch, primitive, output, index, when, factor=1 + 1e-5):
    """Scale one element of one gradient output of ``primitive``'s VJP, in the calls ``when``
    accepts (by their residuals)."""
    vjp = PRIMITIVES[primitive].vjp

    def broken(dout, residuals):
        grads = list(vjp(dout, residuals))
        if when(residuals):
            grads[output] = grads[output].copy()
            grads[output][index] *= factor
        return tuple(grads)

    monkeypatch.setitem(PRIMITIVES, primitive, PRIMITIVES[primitive]._replace(vjp=broken))


@pytest.mark.parametrize(
    "primitive,output,tensor,when",
    [
        # FFN weights: moved copies stacked one per batch row. W1 is the (d_model, d_ff) one.
        ("feed_forward", 1, "ffn.w1", lambda residuals: True),
        # The other parameters: moved in place, one run per move.
        ("attention_sublayer", 4, "attn.wk", lambda residuals: True),
    ],
)
def test_full_mode_names_the_one_wrong_element(monkeypatch, primitive, output, tensor, when):
    _break_one_element(monkeypatch, primitive, output, (3, 5), when)
    _, report = full("pre", layers=1)
    wrong = [r for r in report.results if r.status == "failed"]
    assert [r.tensor for r in wrong] == [f"layers.0.{tensor}"], report.to_text()
    assert wrong[0].counts["failed"] == 1 and wrong[0].worst.probe == "(3, 5)"


def test_full_mode_fails_when_its_batched_runs_disagree_with_the_model(monkeypatch):
    # The checker's linear map of weights moved per batch row made to differ from the model's.
    per_row = PRIMITIVES["linear_per_row"]

    def off_by_1e_9(x, w, b):
        out, residuals = per_row.forward(x, w, b)
        return out * (1 + 1e-9), residuals

    monkeypatch.setitem(PRIMITIVES, "linear_per_row", per_row._replace(forward=off_by_1e_9))
    model, report = full("pre", layers=1)
    assert failed(report) == model.linear_params
    assert all(r.worst.probe == "unmoved point, batched run" for r in report.results if r.status == "failed")


# ----- the checker's own linear map: weights moved one per batch row -----


def test_a_linear_map_given_one_weight_per_batch_row_runs_each_row_with_its_own():
    model = lnref.build("pre", n_layers=2, d_model=8, n_heads=2, d_ff=16)
    x, _, _ = model.sample_inputs(batch=3, seq=4)
    rng = np.random.default_rng(5)
    assert model.linear_params == {
        f"layers.{i}.{group}.{n}"
        for i in range(2)
        for group, names in (("attn", lnref.nn.ATTENTION_PARAMS), ("ffn", lnref.nn.FFN_PARAMS))
        for n in names
    }
    for name in sorted(model.linear_params):
        copies = [model.params[name] + 0.1 * rng.standard_normal(model.params[name].shape) for _ in range(3)]
        run = model.run({**model.params, name: np.stack(copies)}, linear=linear_per_row)
        y, _ = model.forward(run, x)
        for row, copy in enumerate(copies):
            expected, _ = model.forward(model.run({**model.params, name: copy}), x[row : row + 1])
            np.testing.assert_allclose(y.value[row], expected.value[0], rtol=1e-12, atol=1e-14)


def _point(scheme="pre", layers=3):
    model = lnref.build(scheme, n_layers=layers, **SMALL)
    x, dy, memory = model.sample_inputs(**SHAPE)
    return model, Point(model, checker.jitter_params(model.params, 0), x, dy, memory)


def _own_loss(model, point, name, move):
    moved = {**point.params, name: point.params[name] + move}
    y, _ = model.forward(model.run(moved, freeze=point.freezer.hold()), point.x)
    return float(np.sum(y.value * point.dy))


def test_the_moves_of_a_layer_s_tensors_share_a_run_and_each_gets_its_own_loss():
    model, point = _point()
    rng = np.random.default_rng(1)
    names = ["layers.1.attn.wq", "layers.1.ffn.b2", "layers.1.ln_attn.gamma", "layers.1.ln_ffn.beta"]
    assert {point.run_group(name) for name in names} == {1}
    moves = [(name, t * 1e-3 * rng.standard_normal(point.params[name].shape)) for name in names for t in (-1, 0, 2)]
    losses = point.losses(moves)
    for (name, move), loss in zip(moves, losses):
        assert loss == pytest.approx(_own_loss(model, point, name, move), rel=1e-12)


def test_zero_moves_on_one_path_are_run_once(monkeypatch):
    model, point = _point()
    layers = []
    monkeypatch.setattr(
        model, "layer", lambda run, index, state, layer=model.layer: layers.append(index) or layer(run, index, state)
    )
    zero = np.zeros_like(point.params["layers.1.attn.wq"])
    point.losses(
        [
            ("layers.1.attn.wq", zero),
            ("layers.1.attn.wk", zero),
            ("layers.1.ln_attn.gamma", 0 * point.params["layers.1.ln_attn.gamma"]),
        ]
    )
    # layer 1 once for the linear maps' run, once for the norm gain's; layer 2 once for both
    assert layers == [1, 1, 2]


def test_linear_maps_too_big_to_copy_per_row_take_a_run_each(monkeypatch):
    model, point = _point()
    monkeypatch.setattr(point_module, "PER_ROW_ELEMENTS", 0)
    layers = []
    layer = model.layer
    monkeypatch.setattr(model, "layer", lambda run, index, state: layers.append(index) or layer(run, index, state))
    rng = np.random.default_rng(2)
    moves = [
        (name, 1e-3 * rng.standard_normal(point.params[name].shape)) for name in ("layers.1.attn.wq", "layers.1.ffn.w1")
    ]
    losses = point.losses(moves)
    assert layers == [1, 1, 2]
    for (name, move), loss in zip(moves, losses):
        assert loss == pytest.approx(_own_loss(model, point, name, move), rel=1e-12)


def test_moves_of_two_run_groups_are_a_value_error():
    _, point = _point()
    moves = [(name, np.zeros_like(point.params[name])) for name in ("layers.0.attn.wq", "layers.1.attn.wq")]
    with pytest.raises(ValueError, match="one run group"):
        point.losses(moves)


def test_a_norm_gain_given_one_per_batch_row_is_a_value_error():
    model = lnref.build("pre", n_layers=1, d_model=8, n_heads=2, d_ff=16)
    x, _, _ = model.sample_inputs(batch=3, seq=4)
    stacked = np.stack([model.params["layers.0.ln_attn.gamma"]] * 3)
    with pytest.raises(ValueError, match="layer_norm"):
        model.forward(model.run({**model.params, "layers.0.ln_attn.gamma": stacked}, linear=linear_per_row), x)


@pytest.mark.skipif(not kernels.USE_NUMBA, reason="the NumPy kernels' product is NumPy's own: nothing rounds apart")
def test_the_recorded_relu_pattern_is_the_one_the_ffn_applied(monkeypatch):
    # The checker holds the ReLU pattern of the point for its finite differences. Layer 0's
    # pre-activations of the first token are set to exactly zero in NumPy's arithmetic; the
    # FFN's own product rounds them either way, and the recorded pattern must be that one, or
    # the frozen function is not the differentiated one.
    model = lnref.build("pre", n_layers=1)
    x, dy, _ = model.sample_inputs(batch=2, seq=8)
    ffn_inputs = []
    ffn = lnref.views.Layer.ffn
    monkeypatch.setattr(
        lnref.views.Layer, "ffn", lambda self, x, **kw: ffn_inputs.append(np.array(x.value)) or ffn(self, x, **kw)
    )
    model(x)
    w1, w2, b2 = (model.params[f"layers.0.ffn.{name}"] for name in ("w1", "w2", "b2"))
    model.params["layers.0.ffn.b1"] = b1 = -(ffn_inputs[0] @ w1)[0, 0]
    frozen = lnref.views.record_frozen(model, lambda run: model.forward(run, x))
    (pattern,) = frozen.values.values()
    rows = ffn_inputs[0].reshape(-1, w1.shape[0])
    acted = kernels.feed_forward_forward(rows, w1, b1, w2, b2, "relu")[1]
    assert (acted[0] > 0).any()  # the case at hand: NumPy's zeros are not all the FFN's
    assert np.array_equal(pattern.reshape(acted.shape), (acted > 0).astype(acted.dtype))


def test_cli_full_mode_prints_the_element_counts():
    result = invoke("gradcheck", "--scheme", "pre", "--layers", "1", "--d-model", "8", "--d-ff", "16", "--mode", "full")
    model = lnref.build("pre", n_layers=1, d_model=8, d_ff=16)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("elements:"))
    assert int(line.split()[1]) >= sum(v.size for v in model.params.values())


# ----- the noise floor -----


def test_central_difference_estimates_rounding_noise_and_is_exact_on_a_quartic():
    derivative, sigma = central_difference(lambda t: 3 * t**4 - t**3 + 2 * t, 0.1, 0.0)
    assert derivative == pytest.approx(2.0, rel=1e-12)
    rng = np.random.default_rng(0)
    noisy = [central_difference(lambda t: t + 1e-9 * rng.standard_normal(), 1e-3, 0.0)[1] for _ in range(400)]
    assert 0.5e-9 < np.sqrt(np.mean(np.square(noisy))) < 2e-9  # about the true sigma


def test_values_under_the_noise_floor_are_unresolved_and_errors_above_it_fail():
    assert compare("w", "layer 0", "direction", 1e-14, 2e-14, 1e-12, 1e-3, 1e-7, 0).status == "unresolved"
    assert compare("w", "layer 0", "direction", 1.0, 1.0 + 1e-5, 1e-16, 1e-3, 1e-7, 0).status == "failed"
    assert compare("w", "layer 0", "direction", 1.0, 1.0 + 1e-9, 1e-16, 1e-3, 1e-7, 0).status == "passed"


# ----- the command line -----


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_passes_with_exit_0_and_a_summary_line():
    result = invoke("gradcheck", "--scheme", "b2t", "--layers", "3", "--d-model", "8", "--d-ff", "16")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("4") and " passed, 0 failed" in result.output


def test_cli_json_is_one_document_with_the_counts():
    result = invoke("gradcheck", "--scheme", "dlcl", "--layers", "2", "--json")
    document = json.loads(result.stdout)
    assert document["ok"] and document["counts"]["failed"] == 0
    assert len(document["tensors"]) == len(lnref.build("dlcl", n_layers=2).params) + 1


def test_cli_exits_1_and_names_the_tensor_when_a_check_fails(monkeypatch):
    monkeypatch.setattr(kernels, "layer_norm_backward", _layer_norm_backward_without_projection)
    result = invoke("gradcheck", "--scheme", "post", "--layers", "2")
    assert result.exit_code == 1
    assert "failed" in result.output.splitlines()[-1] and "layers.0." in result.output


@pytest.mark.parametrize(
    "args,words",
    [
        (["--scheme", "nope"], ["--scheme", "post"]),
        (["--scheme", "pre", "--d-model", "10", "--heads", "4"], ["not divisible"]),
        (["--scheme", "pre", "--layers", "0"], ["--layers"]),
        (["--scheme", "pre", "--eps", "inf"], ["finite"]),
        (["--scheme", "pre", "--rtol", "nan"], ["finite"]),
        (["--scheme", "pre", "--atol", "-1"], [">= 0"]),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, words):
    result = invoke("gradcheck", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert all(word in lines[0] for word in words)
    assert "Traceback" not in result.output


def test_cli_warns_that_float32_is_less_precise():
    result = invoke("gradcheck", "--scheme", "pre", "--layers", "1", "--dtype", "float32")
    assert result.exit_code == 0 and "float32" in result.stderr


def test_main_job_residual_48_layers_passes():
    result = invoke("gradcheck", "--scheme", "residual", "--layers", "48")
    assert result.exit_code == 0, result.output
    assert ", 0 failed" in result.output.splitlines()[-1]


# ----- with the language-model head -----


def test_with_head_checks_embeddings_stack_and_head():
    result = invoke("gradcheck", "--scheme", "admin", "--layers", "2", "--with-head", "--json")
    document = json.loads(result.stdout)
    names = {t["tensor"] for t in document["tensors"]}
    assert result.exit_code == 0 and document["counts"]["failed"] == 0
    assert {"embed.tokens", "embed.positions", "head.w", "head.b", "layers.1.omega_ffn"} <= names


def test_with_head_catches_a_broken_cross_entropy_backward(monkeypatch):
    vjp = PRIMITIVES["cross_entropy"].vjp
    monkeypatch.setitem(
        PRIMITIVES,
        "cross_entropy",
        PRIMITIVES["cross_entropy"]._replace(vjp=lambda dout, residuals: (vjp(dout, residuals)[0] * 1.001, None)),
    )
    result = invoke("gradcheck", "--scheme", "pre", "--layers", "1", "--with-head", "--json")
    failed_names = {t["tensor"] for t in json.loads(result.stdout)["tensors"] if t["status"] == "failed"}
    assert result.exit_code == 1 and {"head.w", "embed.tokens"} <= failed_names


def test_with_head_refuses_blockwise_mode():
    result = invoke("gradcheck", "--scheme", "pre", "--with-head", "--mode", "blockwise")
    assert result.exit_code == 2 and "blockwise" in result.stderr


@pytest.mark.skipif(not kernels.USE_NUMBA, reason="compiles Numba kernels")
def test_a_first_run_with_an_empty_compile_cache_says_kernels_are_compiled(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    args = [sys.executable, "-m", "lnref", "gradcheck", "--scheme", "pre", "--layers", "1"]
    first = subprocess.run(args, env=env, capture_output=True, text=True)
    second = subprocess.run(args, env=env, capture_output=True, text=True)
    assert first.returncode == second.returncode == 0
    assert "compiling kernels" in first.stderr and "compiling kernels" not in second.stderr


@pytest.mark.parametrize("per_row", ["weight", "bias", "both"])
def test_the_per_row_linear_map_passes_the_vjp_check(per_row):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 4, 5))
    weight = rng.standard_normal((3, 5, 6) if per_row in ("weight", "both") else (5, 6))
    bias = rng.standard_normal((3, 6) if per_row in ("bias", "both") else (6,))
    assert all(c.status == "passed" for c in checker.check_vjp(linear_per_row, x, weight, bias))


def test_the_per_row_linear_map_with_equal_rows_matches_the_shared_weight():
    rng = np.random.default_rng(13)
    x, weight, bias = rng.standard_normal((3, 4, 5)), rng.standard_normal((5, 6)), rng.standard_normal(6)
    stacked = linear_per_row(x, np.repeat(weight[None], 3, axis=0), bias).value
    np.testing.assert_allclose(stacked, ops.linear(x, weight, bias).value, rtol=1e-13)


def test_the_per_row_linear_map_for_another_batch_size_is_a_value_error():
    rng = np.random.default_rng(14)
    with pytest.raises(ValueError, match="linear_per_row"):
        linear_per_row(rng.standard_normal((3, 4, 5)), rng.standard_normal((2, 5, 6)), rng.standard_normal(6))


# ----- the text report fits a screen -----


def test_the_main_job_prints_at_most_30_lines_with_the_summary_first_and_last():
    result = invoke("gradcheck", "--scheme", "residual", "--layers", "48")
    lines = result.stdout.strip().splitlines()
    assert result.exit_code == 0, result.output
    assert len(lines) <= 30
    assert lines[0] == lines[-1] and " passed, 0 failed" in lines[0]


def test_consecutive_layers_of_one_status_share_a_row_and_verbose_prints_every_layer():
    model = lnref.build("pre", n_layers=6, **SMALL)
    report = checker.gradcheck(model, **SHAPE)
    assert "layers 0-5" in report.to_text() and "layer 3 " not in report.to_text()
    verbose = report.to_text(verbose=True)
    assert all(f"layer {i} " in verbose for i in range(6))


def test_a_failing_layer_breaks_the_run_of_passing_layers(monkeypatch):
    model = lnref.build("post", n_layers=4, **SMALL)
    _scale_one_weight_gradient(monkeypatch, checker.jitter_params(model.params, 0)["layers.2.ffn.w1"], factor=1.01)
    text = checker.gradcheck(model, **SHAPE).to_text()
    assert "layer 2 " in text and "failed (1)" in text


def test_a_failure_of_the_noise_estimate_is_measured_again_at_a_quarter_step_and_a_real_one_stays(monkeypatch):
    from lnref.gradcheck.report import Check, confirmed

    failing = Check("w", "layer 0", "direction", 1.0, 1.0 + 1e-6, 1e-12, 1e-10, "failed")
    slope_one = lambda step: [t * step for t in (-2.0, -1.0, 0.0, 1.0, 2.0)]  # noqa: E731  (f(t) = t)
    smooth = confirmed(failing, slope_one, 0.0, 1e-3, 1e-7, 0.0)
    assert smooth.status == "passed" and "again at step 0.00025" in smooth.probe
    wrong = Check("w", "layer 0", "direction", 2.0, 1.0, 1e-12, 1e-10, "failed")
    assert confirmed(wrong, slope_one, 0.0, 1e-3, 1e-7, 0.0) is wrong


def test_full_mode_measures_its_failed_elements_again_at_a_quarter_step_and_a_real_failure_stays():
    from lnref.gradcheck.report import confirmed_elements, summarize_elements

    slope_one = lambda step: np.array([[t * step] * 2 for t in (-2.0, -1.0, 0.0, 1.0, 2.0)])  # noqa: E731
    analytic = np.array([1.0, 2.0])  # the first right, the second wrong
    numeric = np.array([1.0 + 1e-6, 1.0])  # the first off at the step, as a truncation error would be
    numeric, sigma, steps = confirmed_elements(analytic, numeric, np.full(2, 1e-12), slope_one, 1e-3, 1e-7, 0.0, 0.0)
    assert list(steps) == [0.00025, 1e-3]
    result = summarize_elements("w", "layer 0", analytic, numeric, sigma, steps, 1e-7, 0.0)
    assert result.counts["passed"] == 1 and result.counts["failed"] == 1 and result.worst.probe == "(1,)"
