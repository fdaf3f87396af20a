"""The model API: names, shapes, loading, determinism, and what each scheme promises."""

import numpy as np
import pytest

import lnref
from lnref.model import ConfigError, Model, refusal

SMALL = dict(d_model=8, n_heads=2, d_ff=16)


def test_schemes_are_the_documented_names():
    assert lnref.SCHEMES == (
        "post",
        "pre",
        "residual",
        "b2t",
        "admin",
        "deepnorm",
        "sandwich",
        "peri",
        "mixln",
        "dlcl",
        "rezero",
        "reordered",
        "subln",
        "hybridnorm",
        "normformer",
        "lns",
        "layerscale",
        "parallel",
        "tfixup",
        "dslm",
        "siamese",
        "ngpt",
        "gpas",
        "hyper",
        "mhc",
        "denseformer",
    )


@pytest.mark.parametrize(
    "scheme, norm", [(s, n) for s in lnref.SCHEMES for n in ("layernorm", "rmsnorm") if refusal(s, norm=n) is None]
)
def test_every_scheme_maps_input_shape_to_output_shape_with_finite_values(scheme, norm):
    model = lnref.build(scheme, n_layers=3, norm=norm, **SMALL)
    x, dy, _ = model.sample_inputs(batch=2, seq=5)
    y = model(x)
    loss, grads = model.value_and_grad(x, dy)
    assert y.shape == x.shape and np.isfinite(y).all()
    assert set(grads) == set(model.params) | {"input"}
    assert all(grads[n].shape == model.params[n].shape for n in model.params)
    assert loss == pytest.approx(float(np.sum(y * dy)), rel=1e-12)


def test_parameter_names_follow_the_documented_pattern():
    model = lnref.build("pre", n_layers=2, **SMALL)
    names = list(model.params)
    assert names[:8] == [f"layers.0.attn.{p}" for p in ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")]
    assert "layers.1.ffn.w1" in names and "layers.1.ln_attn.gamma" in names and "final_ln.beta" in names
    assert model.params["layers.0.ffn.w1"].shape == (8, 16)  # y = x @ W + b, W is (d_in, d_out)


def test_rmsnorm_has_gains_only():
    model = lnref.build("post", n_layers=1, norm="rmsnorm", **SMALL)
    assert "layers.0.ln_attn.gamma" in model.params and "layers.0.ln_attn.beta" not in model.params


def test_cross_attention_adds_a_branch_and_a_memory_gradient():
    model = lnref.build("b2t", n_layers=2, cross_attention=True, **SMALL)
    x, dy, memory = model.sample_inputs(batch=2, seq=4, memory_len=6)
    _, grads = model.value_and_grad(x, dy, memory)
    assert memory.shape == (2, 6, 8) and grads["memory"].shape == memory.shape
    assert "layers.1.cross.wv" in model.params and "layers.1.ln_cross.gamma" in model.params


def test_same_seed_same_bits_and_different_seed_different_params():
    a, b = (lnref.build("admin", n_layers=2, seed=3, **SMALL) for _ in range(2))
    c = lnref.build("admin", n_layers=2, seed=4, **SMALL)
    assert all(a.params[n].tobytes() == b.params[n].tobytes() for n in a.params)
    assert any(a.params[n].tobytes() != c.params[n].tobytes() for n in a.params)


def test_float32_model_computes_in_float32():
    model = lnref.build("residual", n_layers=2, dtype="float32", **SMALL)
    x, dy, _ = model.sample_inputs()
    assert model(x).dtype == np.float32
    assert all(g.dtype == np.float32 for g in model.value_and_grad(x, dy)[1].values())


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(scheme="nope", n_layers=2), ["unknown scheme", "post", "rezero"]),
        (dict(scheme="pre", n_layers=0), ["n_layers", ">= 1"]),
        (dict(scheme="pre", n_layers=2, d_model=10, n_heads=4), ["not divisible"]),
        (dict(scheme="pre", n_layers=2, eps=float("nan")), ["eps"]),
        (dict(scheme="pre", n_layers=2, norm="batchnorm"), ["norm"]),
        (dict(scheme="pre", n_layers=2, dtype="float16"), ["dtype"]),
        (dict(scheme="pre", n_layers=2, dropout=0.1), ["unknown option"]),
    ],
)
def test_impossible_configurations_raise_config_errors(kwargs, words):
    with pytest.raises(ConfigError) as err:
        lnref.build(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_load_checks_names_shapes_dtypes_and_values():
    model = lnref.build("pre", n_layers=1, **SMALL)
    params = {n: v.copy() for n, v in model.params.items()}
    with pytest.raises(ConfigError, match="missing layers.0.attn.wq"):
        model.load({n: v for n, v in params.items() if n != "layers.0.attn.wq"})
    with pytest.raises(ConfigError, match="shape"):
        model.load({**params, "layers.0.attn.wq": np.ones((8, 9))})
    with pytest.raises(ConfigError, match="dtype"):
        model.load({**params, "layers.0.attn.wq": params["layers.0.attn.wq"].astype(np.float32)})
    with pytest.raises(ConfigError, match="NaN"):
        model.load({**params, "layers.0.attn.wq": np.full((8, 8), np.nan)})


def test_loaded_params_change_the_output():
    model = lnref.build("pre", n_layers=1, **SMALL)
    x, _, _ = model.sample_inputs()
    before = model(x)
    model.load({n: v * 1.5 for n, v in model.params.items()})
    assert not np.array_equal(before, model(x))


def test_bad_inputs_are_rejected():
    model = lnref.build("pre", n_layers=1, **SMALL)
    with pytest.raises(ConfigError, match="shape"):
        model(np.ones((2, 3, 5)))
    with pytest.raises(ConfigError, match="NaN"):
        model(np.full((2, 3, 8), np.nan))
    with pytest.raises(ConfigError, match="memory"):
        model(np.ones((2, 3, 8)), np.ones((2, 3, 8)))


# ----- what the schemes promise at initialization -----


def _layer_input_and_output(model, x):
    states = model.hidden_states(x)
    return states[0][0], states[1][0]


def test_rezero_starts_as_the_identity():
    model = lnref.build("rezero", n_layers=3, **SMALL)
    x, _, _ = model.sample_inputs()
    np.testing.assert_array_equal(model(x), x)


def test_post_ln_output_rows_are_normalized():
    model = lnref.build("post", n_layers=2, **SMALL)
    y = model(model.sample_inputs()[0])
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose((y**2).mean(-1), 1, rtol=1e-4)  # up to eps


def test_b2t_adds_the_layer_input_before_the_last_norm():
    from lnref.autograd import ops

    model = lnref.build("b2t", n_layers=1, **SMALL)
    x, _, _ = model.sample_inputs()
    p = model.params
    run = model.run()
    view = model.layer_view(run, 0)
    h = ops.layer_norm(
        x + view.self_attention(x).value, p["layers.0.ln_attn.gamma"], p["layers.0.ln_attn.beta"], eps=1e-5
    ).value
    expected = ops.layer_norm(
        h + view.ffn(h).value + x, p["layers.0.ln_ffn.gamma"], p["layers.0.ln_ffn.beta"], eps=1e-5
    ).value
    np.testing.assert_allclose(model(x), expected, rtol=1e-13, atol=1e-13)


def test_residual_output_is_post_stream_plus_normalized_dual_stream():
    model = lnref.build("residual", n_layers=2, **SMALL)
    x, _, _ = model.sample_inputs()
    x_a, x_d = model.hidden_states(x)[-1]
    mu, var = x_d.mean(-1, keepdims=True), x_d.var(-1, keepdims=True)
    np.testing.assert_allclose(model(x), x_a + (x_d - mu) / np.sqrt(var + 1e-5), rtol=1e-12, atol=1e-12)


def test_deepnorm_constants_balance_the_update_bound():
    from lnref.schemes import deepnorm

    for layers, cross, sublayers in [(6, False, 2), (48, False, 2), (12, True, 3)]:
        config = lnref.build("deepnorm", n_layers=layers, cross_attention=cross, **SMALL).config
        alpha, beta = deepnorm.constants(config)
        assert sublayers * layers * 2 * beta**2 / alpha**2 == pytest.approx(1.0, rel=1e-12)


def test_deepnorm_scales_value_output_and_ffn_weights_by_beta():
    deep = lnref.build("deepnorm", n_layers=6, seed=1, **SMALL)
    post = lnref.build("post", n_layers=6, seed=1, **SMALL)
    beta = (8 * 6) ** -0.25
    np.testing.assert_allclose(deep.params["layers.2.attn.wv"], beta * post.params["layers.2.attn.wv"])
    np.testing.assert_allclose(deep.params["layers.2.ffn.w1"], beta * post.params["layers.2.ffn.w1"])
    np.testing.assert_array_equal(deep.params["layers.2.attn.wq"], post.params["layers.2.attn.wq"])


def test_admin_omegas_grow_with_depth_from_one():
    model = lnref.build("admin", n_layers=6, **SMALL)
    omegas = [model.params[f"layers.{i}.omega_{b}"][0] for i in range(6) for b in ("attn", "ffn")]
    assert omegas[0] == 1.0
    assert all(later > earlier for earlier, later in zip(omegas, omegas[1:]))
    assert all(
        np.all(model.params[f"layers.{i}.omega_attn"] == model.params[f"layers.{i}.omega_attn"][0]) for i in range(6)
    )


def test_mixln_is_post_ln_below_the_fraction_and_pre_ln_above():
    model = lnref.build("mixln", n_layers=4, post_fraction=0.5, **SMALL)
    x, _, _ = model.sample_inputs()
    states = model.hidden_states(x)
    after_post_layer = states[1][0]
    np.testing.assert_allclose(after_post_layer.mean(-1), 0, atol=1e-12)  # normalized output
    after_pre_layer = states[3][0]
    assert np.abs(after_pre_layer.mean(-1)).max() > 1e-3  # the Pre-LN stream is not normalized


def test_dlcl_weights_start_as_the_average_of_earlier_layers():
    model = lnref.build("dlcl", n_layers=3, **SMALL)
    np.testing.assert_array_equal(model.params["layers.2.dlcl_weights"], np.full(4, 0.25))


def test_peri_normalizes_the_embedding_where_sandwich_does_not():
    peri = lnref.build("peri", n_layers=1, **SMALL)
    sandwich = lnref.build("sandwich", n_layers=1, **SMALL)
    assert "embed_ln.gamma" in peri.params and "embed_ln.gamma" not in sandwich.params


# ----- the gradient pass and the garbage collector -----


def _objects_left_in_cycles(fn):
    """How many objects ``fn()`` leaves that only the cyclic garbage collector can free.

    ``fn`` runs once before, so that what a first call leaves for good (Numba loading its
    compiled kernels, caches filling) is not counted."""
    import gc

    fn()
    gc.collect()
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)  # found garbage goes to gc.garbage instead of being freed
        fn()
        found = gc.collect()
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


def _taped_passes(model):
    """A function that runs a gradient pass of ``model`` on the tape each call: inputs of a
    new batch size every time, so that no pass replays an earlier one."""
    batch_sizes = iter(range(1, 100))

    def taped_pass():
        x, dy, memory = model.sample_inputs(batch=next(batch_sizes))
        model.value_and_grad(x, dy, memory)

    return taped_pass


@pytest.mark.parametrize("scheme", ["pre", "residual", "dlcl"])
def test_a_taped_gradient_pass_leaves_no_reference_cycles(scheme):
    # The pass runs with the cyclic GC paused (autograd.tensor.cyclic_gc_paused): anything
    # left in a cycle would wait for a later collection and keep the pass's arrays alive.
    model = lnref.build(scheme, n_layers=3, cross_attention=scheme == "residual")
    assert _objects_left_in_cycles(_taped_passes(model)) == 0


@pytest.mark.parametrize("scheme", ["pre", "residual", "dlcl"])
def test_a_replayed_gradient_pass_leaves_no_reference_cycles(scheme):
    model = lnref.build(scheme, n_layers=3, cross_attention=scheme == "residual")
    x, dy, memory = model.sample_inputs()
    model.value_and_grad(x, dy, memory)  # traced: the passes below replay it
    assert _objects_left_in_cycles(lambda: model.value_and_grad(x, dy, memory)) == 0


def test_the_cycle_check_finds_a_layer_view_that_refers_to_itself(monkeypatch):
    # Negative control: a view keeping its branches as bound methods is a cycle per layer.
    from lnref.views import Layer

    def init_with_stored_branches(self, run, index):
        self.run, self.index, self.config, self.n_layers = run, index, run.config, run.config.n_layers
        self.prefix = f"layers.{index}."
        self.stored = [("attn", self.self_attention), ("ffn", self.ffn)]

    monkeypatch.setattr(Layer, "__init__", init_with_stored_branches)
    model = lnref.build("pre", n_layers=3)
    assert _objects_left_in_cycles(_taped_passes(model)) > 0


@pytest.mark.parametrize("enabled", [True, False])
def test_a_gradient_pass_leaves_the_garbage_collector_as_it_found_it(enabled):
    import gc

    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    was_enabled = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        model.value_and_grad(x, dy)
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was_enabled else gc.disable()


def test_gradients_for_params_in_another_order_are_the_same():
    # The leaves are made in one pass over the model's groups when the names come in the
    # model's order; any other order takes the general path, with the same gradients.
    model = lnref.build("sandwich", n_layers=2)
    x, dy, _ = model.sample_inputs()
    grads, loss, _ = model.gradients(x, dy)
    shuffled = dict(reversed(list(model.params.items())))
    grads_shuffled, loss_shuffled, _ = model.gradients(x, dy, params=shuffled)
    assert loss_shuffled == loss and list(grads_shuffled)[:-1] == list(shuffled)
    for name, grad in grads.items():
        np.testing.assert_array_equal(grads_shuffled[name], grad)


# ----- repeated passes (the parameter leaves of one pass are reused by the next) -----


def _fresh_gradients(model, x, dy):
    """The gradients of a new model of the same configuration holding ``model``'s parameters."""
    twin = Model(model.config)
    twin.load(model.params)
    return twin.value_and_grad(x, dy)[1]


def test_repeated_passes_give_the_same_gradients_not_accumulated_ones():
    model = lnref.build("pre", n_layers=2, d_model=8, n_heads=2, d_ff=16)
    x, dy, _ = model.sample_inputs(batch=2, seq=3)
    first, second = model.value_and_grad(x, dy)[1], model.value_and_grad(x, dy)[1]
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
        assert first[name] is not second[name]


def test_a_parameter_array_replaced_between_passes_is_the_one_differentiated():
    model = lnref.build("post", n_layers=2, d_model=8, n_heads=2, d_ff=16)
    x, dy, _ = model.sample_inputs(batch=2, seq=3)
    model.value_and_grad(x, dy)
    model.params["layers.0.ffn.w1"] = model.params["layers.0.ffn.w1"] * 1.5
    grads = model.value_and_grad(x, dy)[1]
    expected = _fresh_gradients(model, x, dy)
    for name in expected:
        np.testing.assert_array_equal(grads[name], expected[name])


def test_a_pass_that_fails_midway_leaves_no_partial_gradients_behind(monkeypatch):
    from lnref.autograd import PRIMITIVES

    model = lnref.build("pre", n_layers=2, d_model=8, n_heads=2, d_ff=16)
    x, dy, _ = model.sample_inputs(batch=2, seq=3)
    model.value_and_grad(x, dy)
    vjp, calls = PRIMITIVES["layer_norm"].vjp, []

    def fails_on_the_third_call(dout, residuals):  # after the last layers' gradients are in
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("backward interrupted")
        return vjp(dout, residuals)

    with monkeypatch.context() as patch:
        patch.setitem(PRIMITIVES, "layer_norm", PRIMITIVES["layer_norm"]._replace(vjp=fails_on_the_third_call))
        with pytest.raises(RuntimeError, match="interrupted"):
            model.value_and_grad(x, dy)
    grads = model.value_and_grad(x, dy)[1]
    expected = _fresh_gradients(model, x, dy)
    for name in expected:
        np.testing.assert_array_equal(grads[name], expected[name])
