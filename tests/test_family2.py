"""The rest of the family, part 2: siamese, ngpt, gpas, hyper, mhc and denseformer, post's
DS-Init and the aliases (gemma2, gemma3, skipinit).

What every scheme gets from the shared tests (shapes, fast paths, replay, profiles) is not
repeated here. Here: each option under the gradient check in a causal decoder, golden files of
each, the identities their papers state that hold exactly, with negative controls, the aliases,
and the bad input each refuses.
"""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import lnref
from lnref import gradcheck as checker
from lnref.autograd import Tape, Tensor, ops
from lnref.cli import main
from lnref.golden import compare_files, export_golden
from lnref.schemes import ALIASES, get_scheme
from lnref.views import Layer

SMALL = dict(d_model=8, n_heads=2, d_ff=16)
NEW = ("siamese", "ngpt", "gpas", "hyper", "mhc", "denseformer")
VARIANTS = [(scheme, {}) for scheme in NEW] + [
    ("hyper", {"dynamic": True, "n": 3}),
    ("hyper", {"n": 1}),
    ("mhc", {"n": 2, "sinkhorn_iterations": 5}),
    ("post", {"init": "ds_paper"}),
    ("post", {"init": "ds_code"}),
    ("gemma2", {}),
    ("gemma3", {}),
    ("skipinit", {}),
]


def label(variant):
    scheme, options = variant
    return "-".join([scheme, *(f"{k}={v}" for k, v in options.items())])


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def generic(model, seed=0):
    """The model's parameters moved off the initialization."""
    rng = np.random.default_rng(seed)
    for value in model.params.values():
        value += 0.1 * (np.sqrt(np.mean(value**2)) or 1.0) * rng.standard_normal(value.shape)
    return model


# ----- the registry, the aliases and the gradient check ---------------------------------------


def test_lnref_schemes_lists_both_parts_of_the_family_and_then_the_aliases():
    result = run("schemes")
    assert result.exit_code == 0
    schemes_part, _, aliases_part = result.output.partition("\naliases")
    names = [line.split()[0] for line in schemes_part.splitlines() if line and not line.startswith(" ")]
    assert names == list(lnref.SCHEMES) and len(names) >= 26
    for scheme in NEW:
        assert get_scheme(scheme).PAPER in schemes_part
    listed = [line.split()[0] for line in aliases_part.splitlines()[1:] if line and not line.startswith(" ")]
    assert listed == list(ALIASES) == ["gemma2", "gemma3", "skipinit"]
    assert "= rezero" in aliases_part and "rmsnorm_plus_one" in aliases_part


def test_lnref_schemes_json_gives_each_alias_its_base_and_settings():
    document = json.loads(run("schemes", "--json").output)
    assert [entry["name"] for entry in document["schemes"]] == list(lnref.SCHEMES)
    aliases = {entry["name"]: entry for entry in document["aliases"]}
    assert aliases["gemma3"]["base"] == "sandwich"
    assert aliases["gemma3"]["settings"] == {"norm": "rmsnorm_plus_one", "eps": 1e-6, "qk_norm": "head"}
    assert aliases["skipinit"] == {**aliases["skipinit"], "base": "rezero", "settings": {}}


def test_an_alias_builds_its_base_scheme_with_its_settings():
    model = lnref.build("gemma3", 2, **SMALL)
    assert (model.config.norm, model.config.eps, model.config.qk_norm) == ("rmsnorm_plus_one", 1e-6, "head")
    assert model.scheme is get_scheme("sandwich")
    np.testing.assert_array_equal(model.params["layers.0.ln_attn.gamma"], 0.0)  # gamma_0 = 0: a gain of 1
    skipinit, rezero = lnref.build("skipinit", 2, **SMALL), lnref.build("rezero", 2, **SMALL)
    x, _, _ = rezero.sample_inputs()
    np.testing.assert_array_equal(skipinit(x), rezero(x))


def test_an_alias_refuses_a_setting_against_its_preset_in_one_line():
    with pytest.raises(lnref.ConfigError, match="gemma3 is sandwich with norm=rmsnorm_plus_one, got norm='dyt'"):
        lnref.build("gemma3", 2, norm="dyt", **SMALL)
    result = run("gradcheck", "--scheme", "gemma2", "--layers", 2, "--norm", "dyt")
    assert result.exit_code == 2 and "gemma2 is sandwich" in result.output


def test_rmsnorm_plus_one_is_rmsnorm_with_its_gain_stored_minus_one():
    plus_one = lnref.build("gemma2", 2, **SMALL)
    plain = lnref.build("sandwich", 2, **SMALL, norm="rmsnorm", eps=1e-6)
    generic(plus_one)
    plain.load({name: value + 1 if name.endswith("gamma") else value for name, value in plus_one.params.items()})
    x, _, _ = plain.sample_inputs()
    np.testing.assert_allclose(plus_one(x), plain(x), rtol=1e-13, atol=1e-13)
    plain.load(plus_one.params)  # the stored gain read as the gain itself: another function
    assert not np.allclose(plus_one(x), plain(x), atol=1e-3)


@pytest.mark.parametrize("mode", ["directional", "blockwise"])
@pytest.mark.parametrize("variant", VARIANTS, ids=label)
def test_each_option_of_each_scheme_passes_the_gradient_check_in_a_causal_decoder(variant, mode):
    scheme, options = variant
    model = lnref.build(scheme, 3, **SMALL, options=options, cross_attention=True, causal=True)
    report = checker.gradcheck(model, mode=mode, batch=2, seq=4, workers=1)
    assert report.ok, report.to_text()
    unresolved = {r.tensor for r in report.results if r.status == "unresolved"}
    if scheme == "mhc":  # see test_mhc_residual_mixing_of_equal_copies_has_no_gradient
        assert unresolved <= {f"layers.0.mhc_attn.{p}" for p in ("phi_res", "alpha_res", "b_res")}
    else:
        assert unresolved == set()


@pytest.mark.parametrize("variant", VARIANTS, ids=label)
def test_export_and_compare_take_each_scheme_and_its_options(tmp_path, variant):
    scheme, options = variant
    model = lnref.build(scheme, 2, **SMALL, options=options, seed=3)
    path = tmp_path / "golden.npz"
    export_golden(model, path, batch=1, seq=3)
    golden = lnref.load_golden(path)
    assert golden.config == model.config
    assert [list(state) for state in golden.hidden] == [list(model.stream_names(i)) for i in range(3)]
    assert compare_files(path, path).ok
    assert lnref.from_golden(path).params.keys() == model.params.keys()


# ----- DenseFormer ----------------------------------------------------------------------------


def test_denseformer_at_init_is_pre_ln_forward_and_backward():
    dense, pre = lnref.build("denseformer", 4, **SMALL), lnref.build("pre", 4, **SMALL)
    x, dy, _ = pre.sample_inputs()
    np.testing.assert_array_equal(dense(x), pre(x))
    _, dense_grads = dense.value_and_grad(x, dy)
    _, pre_grads = pre.value_and_grad(x, dy)
    for name, grad in pre_grads.items():
        np.testing.assert_array_equal(dense_grads[name], grad)
    assert np.abs(dense_grads["layers.2.dwa_weights"]).max() > 0  # the other outputs are one step away


def test_denseformer_differs_from_pre_ln_once_a_weight_reaches_an_earlier_output():
    dense, pre = lnref.build("denseformer", 4, **SMALL), lnref.build("pre", 4, **SMALL)
    dense.params["layers.2.dwa_weights"][0] = 0.1  # the embedding into block 3's input
    x, _, _ = pre.sample_inputs()
    assert not np.allclose(dense(x), pre(x), atol=1e-3)


# ----- hyper-connections and mHC ----------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"dynamic": True}, {"n": 3}], ids=["static", "dynamic", "n=3"])
def test_hyper_connections_at_init_carry_pre_lns_stream_in_every_copy_and_its_output_after_the_final_norm(options):
    hyper, pre = lnref.build("hyper", 4, **SMALL, options=options), lnref.build("pre", 4, **SMALL)
    x, _, _ = pre.sample_inputs()
    for copies, (stream,) in zip(hyper.hidden_states(x), pre.hidden_states(x)):
        for copy in copies:
            np.testing.assert_array_equal(copy, stream)
    # the final norm sees the sum of the n copies, n times the stream: equal after it up to its eps
    n, (last,) = hyper.config.option("n"), pre.hidden_states(x)[-1]
    final = {"gamma": pre.params["final_ln.gamma"], "beta": pre.params["final_ln.beta"]}
    np.testing.assert_array_equal(hyper(x), lnref.nn.norm(n * last, final, "layernorm", 1e-5).value)
    np.testing.assert_allclose(hyper(x), pre(x), rtol=1e-4, atol=1e-4)
    if n > 1:
        assert not np.allclose(hyper(x), pre(x), rtol=1e-10, atol=1e-12)  # LN(n x, eps) = LN(x, eps / n^2)


def test_hyper_connections_leave_pre_ln_once_the_width_connection_reads_another_copy():
    hyper, pre = lnref.build("hyper", 4, **SMALL), lnref.build("pre", 4, **SMALL)
    hyper.params["layers.1.hc_attn.ar"][0, 1] = 0.5  # copy 0 leaks into copy 1
    x, _, _ = pre.sample_inputs()
    copies = hyper.hidden_states(x)[2]
    assert not np.allclose(copies[1], pre.hidden_states(x)[2][0])


def test_mhc_at_init_is_hyper_connections_at_init():
    mhc, hyper = lnref.build("mhc", 3, **SMALL), lnref.build("hyper", 3, **SMALL)
    x, _, _ = mhc.sample_inputs()
    np.testing.assert_array_equal(mhc(x), hyper(x))


def residual_mixing(model, index=1, name="ffn", seed=1):
    """H_res of one sublayer of ``model`` (an mhc) per token, at a state of distinct copies."""
    from lnref.schemes import mhc

    n, d = model.config.option("n"), model.config.d_model
    rng = np.random.default_rng(seed)
    copies = [rng.standard_normal((2, 3, d)) for _ in range(n)]
    flat = np.concatenate(copies, axis=-1)
    _, _, h_res = mhc.mappings(Layer(model.run(), index), name, flat, n)
    return h_res.value


@pytest.mark.parametrize("n", [2, 4])
def test_mhc_residual_mixing_has_unit_row_and_column_sums(n):
    model = generic(lnref.build("mhc", 2, **SMALL, options={"n": n}), seed=5)
    model.params["layers.1.mhc_ffn.alpha_res"][...] = 1.0  # far from uniform
    h_res = residual_mixing(model)
    assert h_res.shape == (2, 3, n, n) and (h_res >= 0).all()
    assert np.abs(h_res - 1 / n).max() > 0.05  # not the uniform matrix of the init
    np.testing.assert_allclose(h_res.sum(axis=-2), 1.0, rtol=0, atol=1e-14)  # the last step: columns
    np.testing.assert_allclose(h_res.sum(axis=-1), 1.0, rtol=0, atol=1e-10)  # rows: converged in 20
    assert np.linalg.norm(h_res, ord=2, axis=(-2, -1)).max() <= 1 + 1e-10


def test_one_sinkhorn_iteration_leaves_the_rows_off_unit_sums():
    model = generic(lnref.build("mhc", 2, **SMALL, options={"sinkhorn_iterations": 1}), seed=5)
    model.params["layers.1.mhc_ffn.alpha_res"][...] = 1.0
    rows = residual_mixing(model).sum(axis=-1)
    assert np.abs(rows - 1).max() > 1e-3


def test_mhc_residual_mixing_of_equal_copies_has_no_gradient():
    # Layer 0 receives n equal copies of the input: any mixing whose rows sum to 1 maps them to
    # themselves, so the first sublayer's H_res parameters have no gradient there, while the
    # later ones do. The checker reports those three tensors unresolved, never passed.
    model = generic(lnref.build("mhc", 2, **SMALL))
    x, dy, _ = model.sample_inputs()
    _, grads = model.value_and_grad(x, dy)
    for name in ("b_res", "phi_res", "alpha_res"):
        scale = np.abs(grads[f"layers.0.mhc_ffn.{name}"]).max()  # the copies differ after one sublayer
        assert scale > 1e-7
        assert np.abs(grads[f"layers.0.mhc_attn.{name}"]).max() < 1e-12 * scale


@pytest.mark.parametrize("variant", ["head", "full", "head+v", "l2", "cosine"])
def test_mhc_with_each_qk_norm_passes_the_blockwise_check(variant):
    model = lnref.build("mhc", 2, d_model=6, n_heads=2, d_ff=8, qk_norm=variant, norm="rmsnorm")
    report = checker.gradcheck(model, mode="blockwise", batch=1, seq=3, workers=1)
    assert report.ok, report.to_text()
    added = [r.tensor for r in report.results if "_norm." in r.tensor or "logit" in r.tensor]
    assert added and all(r.status == "passed" for r in report.results if r.tensor in added)


def test_mhc_and_hyper_refuse_too_few_copies_or_iterations_in_one_line():
    for scheme, options, words in (
        ("mhc", {"n": 1}, "option n of mhc must be an integer >= 2"),
        ("hyper", {"n": 0}, "option n of hyper must be an integer >= 1"),
        ("mhc", {"sinkhorn_iterations": 0}, "sinkhorn_iterations of mhc must be >= 1"),
    ):
        with pytest.raises(ValueError, match=words):
            lnref.build(scheme, 2, **SMALL, options=options)
    result = run("gradcheck", "--scheme", "mhc", "--layers", 2, "--option", "n=1")
    assert result.exit_code == 2 and "must be an integer >= 2" in result.output


# ----- GPAS -------------------------------------------------------------------------------------


def test_gpas_with_its_gates_at_zero_is_pre_ln_forward_and_backward():
    gpas, pre = lnref.build("gpas", 3, **SMALL), lnref.build("pre", 3, **SMALL)
    x, dy, _ = pre.sample_inputs()
    np.testing.assert_array_equal(gpas(x), pre(x))
    _, gpas_grads = gpas.value_and_grad(x, dy)
    _, pre_grads = pre.value_and_grad(x, dy)
    for name, grad in pre_grads.items():
        np.testing.assert_array_equal(gpas_grads[name], grad)


def test_gpas_passes_the_check_of_its_surrogate_and_fails_the_plain_derivative():
    model = lnref.build("gpas", 3, **SMALL)
    surrogate = checker.gradcheck(model, batch=2, seq=4, workers=1)
    assert surrogate.ok and "surrogate" in surrogate.to_text()
    plain = checker.gradcheck(model, batch=2, seq=4, workers=1, hold_stop_gradients=False)
    assert not plain.ok
    assert "layers.0.gate" in {r.tensor for r in plain.results if r.status == "failed"}


def test_lnref_gradcheck_plain_reports_where_gpas_tape_is_not_the_derivative_of_its_function():
    """The default checks the surrogate (stop-gradient values held) and says so, exit 0;
    --plain checks the function itself and fails on the gates, exit 1."""
    command = ("gradcheck", "--scheme", "gpas", "--layers", 3, "--d-model", 8, "--d-ff", 16, "--workers", 1)
    surrogate, plain = run(*command), run(*command, "--plain")
    assert surrogate.exit_code == 0 and "checked function is the surrogate" in surrogate.output
    assert plain.exit_code == 1 and "surrogate" not in plain.output
    held, released = json.loads(run(*command, "--json").output), json.loads(run(*command, "--plain", "--json").output)
    assert "stop_gradient" in held["held"] and "stop_gradient" not in released["held"]
    status = {entry["tensor"]: entry["status"] for entry in released["tensors"]}
    assert status["layers.0.gate"] == status["layers.2.gate"] == "failed"


def test_gpas_scales_the_stream_forward_and_leaves_its_gradient_alone():
    model = silenced(lnref.build("gpas", 1, **SMALL))  # the layer is its two GPAS scalings alone
    model.params["layers.0.gate"][...] = 0.7
    silu = 0.7 / (1 + math.exp(-0.7))
    x, dy, _ = model.sample_inputs()
    (stream,) = model.hidden_states(x)[1]
    np.testing.assert_allclose(stream, (1 - silu) ** 2 * x, rtol=1e-14)
    _, _, states = model.gradients(x, dy, keep_states=True)
    np.testing.assert_array_equal(states[0][0].grad, states[1][0].grad)  # backward: the identity


# ----- nGPT -------------------------------------------------------------------------------------


def test_ngpts_stream_has_unit_norm_after_every_sublayer(monkeypatch):
    from lnref.schemes import ngpt

    seen = []
    step = ngpt.step
    monkeypatch.setattr(ngpt, "step", lambda h, output, alpha: seen.append(step(h, output, alpha)) or seen[-1])
    model = generic(lnref.build("ngpt", 3, **SMALL, cross_attention=True, causal=True))
    x, _, memory = model.sample_inputs()
    model(x, memory)
    assert len(seen) == 3 * 3
    for h in seen:
        np.testing.assert_allclose(np.linalg.norm(h.value, axis=-1), 1.0, rtol=1e-14)


def test_ngpts_weight_vectors_along_d_model_have_unit_norm_at_init():
    model = lnref.build("ngpt", 2, **SMALL)
    for name, value in model.params.items():
        kind = name.rpartition(".")[2]
        if kind in ("wq", "wk", "wv", "w1", "wo", "w2"):
            axis = 1 if kind in ("wo", "w2") else 0
            np.testing.assert_allclose(np.linalg.norm(value, axis=axis), 1.0, rtol=1e-14)


def test_lnref_train_puts_ngpts_weights_back_on_the_sphere_after_every_step(monkeypatch):
    from lnref.schemes import ngpt
    from lnref.train import TrainConfig, train

    trained = {}
    project = ngpt.project
    monkeypatch.setattr(ngpt, "project", lambda params, config: (project(params, config), trained.update(params)))
    result = train(TrainConfig(scheme="ngpt", layers=2, task="reverse", lr=1e-2, warmup=0, steps=3, d_model=8, batch=4))
    assert len(result.loss) == 3 and trained
    for name in ("layers.1.attn.wq", "layers.1.ffn.w1"):
        np.testing.assert_allclose(np.linalg.norm(trained[name], axis=0), 1.0, rtol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(trained["layers.1.attn.wo"], axis=1), 1.0, rtol=1e-13)


def test_an_adam_step_takes_ngpts_weights_off_the_sphere():
    from lnref.optim import Adam

    model = lnref.build("ngpt", 2, **SMALL)
    x, dy, _ = model.sample_inputs()
    _, grads = model.value_and_grad(x, dy)
    Adam(model.params).step(model.params, grads, 1e-2)
    norms = np.linalg.norm(model.params["layers.1.attn.wq"], axis=0)
    assert np.abs(norms - 1).max() > 1e-4  # what the projection after each step undoes


def attention_logits(monkeypatch, model, x):
    """Every attention logit of a forward pass of ``model``, as the core computes them."""
    recorded = []
    core = ops.multi_head_attention

    def recording(q, k, v, n_heads, causal=False):
        d_head = q.shape[-1] // n_heads
        qh = q.value.reshape(*q.shape[:-1], n_heads, d_head)
        kh = k.value.reshape(*k.shape[:-1], n_heads, d_head)
        recorded.append(np.einsum("bthd,bshd->bhts", qh, kh) / math.sqrt(d_head))
        return core(q, k, v, n_heads=n_heads, causal=causal)

    monkeypatch.setattr(ops, "multi_head_attention", recording)
    model(x)
    return recorded


def test_ngpts_attention_logits_are_bounded_by_sqrt_dh_times_s_qk_squared_and_reach_it(monkeypatch):
    model = lnref.build("ngpt", 2, **SMALL)
    model.fast = False  # the logits as the composition's attention core takes them
    d_head = SMALL["d_model"] // SMALL["n_heads"]
    x, _, _ = model.sample_inputs()
    logits = attention_logits(monkeypatch, model, x)
    assert len(logits) == 2 and max(np.abs(a).max() for a in logits) <= math.sqrt(d_head) * (1 + 1e-12)
    model.params["layers.0.attn.wk"][...] = model.params["layers.0.attn.wq"]  # q = k: the diagonal is the bound
    model.params["layers.0.attn.s_qk"] *= 1.5
    logits = attention_logits(monkeypatch, model, x)[0]
    diagonal = np.diagonal(logits, axis1=-2, axis2=-1)
    np.testing.assert_allclose(diagonal, math.sqrt(d_head) * 1.5**2, rtol=1e-12)


def test_ngpt_refuses_a_zero_input_vector_and_a_norm_in_one_line():
    model = lnref.build("ngpt", 2, **SMALL)
    x, _, _ = model.sample_inputs()
    x[0, 1] = 0.0
    with pytest.raises(ValueError, match="a vector of norm 0 has no direction"):
        model(x)
    with pytest.raises(lnref.ConfigError, match="scheme ngpt takes no norm option: nGPT has no norm"):
        lnref.build("ngpt", 2, norm="rmsnorm")


# ----- SiameseNorm ------------------------------------------------------------------------------


def stream_gradients(model, stream, cotangent):
    """d<cotangent, stream_L>/d(x_0, y_0) through the layers, for a stream of SiameseNorm."""
    x, _, _ = model.sample_inputs()
    x_0, y_0 = Tensor(x, requires_grad=True), Tensor(x.copy(), requires_grad=True)
    with Tape() as tape:
        run, state = model.run(), (x_0, y_0)
        for index in range(model.config.n_layers):
            state = model.layer(run, index, state)
        loss = ops.sum(state[stream] * cotangent)
    tape.backward(loss)
    return x_0.grad_or_zeros(), y_0.grad_or_zeros()


def silenced(model):
    for name, value in model.params.items():
        if name.endswith(("wo", "bo", "w2", "b2")):
            value[...] = 0.0
    return model


def test_siamese_y_stream_keeps_an_identity_term_in_its_jacobian():
    model = silenced(generic(lnref.build("siamese", 4, **SMALL)))
    cotangent = np.random.default_rng(7).standard_normal((2, 8, SMALL["d_model"]))
    dx_0, dy_0 = stream_gradients(model, 1, cotangent)
    np.testing.assert_array_equal(dy_0, cotangent)  # with the branches silent: exactly I
    np.testing.assert_array_equal(dx_0, 0.0)
    active = generic(lnref.build("siamese", 4, **SMALL))
    _, dy_active = stream_gradients(active, 1, cotangent)
    assert 0 < np.abs(dy_active - cotangent).max()  # the branches add their terms to I


def test_siamese_x_stream_has_no_identity_term():
    model = silenced(generic(lnref.build("siamese", 4, **SMALL)))
    cotangent = np.random.default_rng(7).standard_normal((2, 8, SMALL["d_model"]))
    dx_0, _ = stream_gradients(model, 0, cotangent)
    assert np.abs(dx_0 - cotangent).max() > 0.1  # the Post-Norm stream's norms


@pytest.mark.parametrize(("index", "correct"), [(2, True), (1, False)])
def test_siamese_divides_the_x_streams_update_by_sqrt_2l(index, correct):
    model = lnref.build("siamese", 3, **SMALL)
    for name in ("layers.2.ffn.w2", "layers.2.ffn.b2"):
        model.params[name][...] = 0.0  # a silent FFN: the layer's update is the attention's z
    x, _, _ = model.sample_inputs()
    (x_in, y_in), (x_out, y_out) = model.hidden_states(x)[2:4]
    view = Layer(model.run(), 2)
    c = math.sqrt(2 * (index + 1))  # layer 3 (1-based) has index 2
    expected = view.norm("ln_ffn_x", view.norm("ln_attn_x", x_in) + (y_out - y_in) / c).value
    assert np.allclose(x_out, expected, rtol=1e-12, atol=1e-12) == correct


# ----- DS-Init ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("init", "exponent"), [("ds_paper", -0.5), ("ds_code", -0.25)])
def test_ds_init_scales_the_weights_of_layer_l_by_a_power_of_l(init, exponent):
    plain, scaled = lnref.build("post", 4, **SMALL), lnref.build("post", 4, **SMALL, options={"init": init})
    for name, value in plain.params.items():
        layer = int(name.split(".")[1]) + 1
        expected = value * layer**exponent if name.rpartition(".")[2] in ("wq", "wk", "wv", "wo", "w1", "w2") else value
        np.testing.assert_allclose(scaled.params[name], expected, rtol=1e-15)
    assert not np.allclose(scaled.params["layers.3.ffn.w1"], plain.params["layers.3.ffn.w1"])
