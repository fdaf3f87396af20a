"""A scheme written in one file of its own gets the model, the fast paths and the checker."""

import numpy as np
import pytest

import lnref
from lnref import gradcheck as checker
from lnref.schemes import register_scheme
from tests.schemes import qk_norm

SMALL = dict(d_model=8, n_heads=2, d_ff=16)


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_scheme("test_qk_norm", qk_norm)


def test_a_norm_per_head_has_the_width_of_a_head():
    model = lnref.build("test_qk_norm", n_layers=2, **SMALL)
    assert model.params["layers.1.q_norm.gamma"].shape == (4,)
    assert model.params["layers.1.heads_norm.gamma"].shape == (8,)


@pytest.mark.parametrize("mode", ["directional", "blockwise", "full"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_per_head_qk_norms_and_a_heads_norm_pass_the_gradient_check(mode, norm):
    model = lnref.build("test_qk_norm", n_layers=2 if mode == "full" else 4, norm=norm, **SMALL)
    report = checker.gradcheck(model, mode=mode, batch=2, seq=4, workers=1)
    assert report.ok, report.to_text()
    status = {r.tensor: r.status for r in report.results}
    for name in ("q_norm.gamma", "k_norm.gamma", "heads_norm.gamma", "attn.wq", "attn.wk"):
        assert status[f"layers.1.{name}"] == "passed", report.to_text()


def test_the_qk_norm_makes_attention_invariant_to_the_scale_of_wq_and_wk():
    model = lnref.build("test_qk_norm", n_layers=2, eps=1e-12, **SMALL)
    x, _, _ = model.sample_inputs()
    y = model(x)
    for name in ("layers.0.attn.wq", "layers.0.attn.bq", "layers.1.attn.wk", "layers.1.attn.bk"):
        model.params[name] *= 3.0
    np.testing.assert_allclose(model(x), y, rtol=1e-9, atol=1e-9)  # exact as eps -> 0


def test_a_broken_per_head_norm_backward_is_caught(monkeypatch):
    # The per-head norms run through the layer_norm primitive on (B, T, H, Dh): drop its
    # gamma from the backward and the q and k norms' gains fail.
    from lnref.autograd import PRIMITIVES

    vjp = PRIMITIVES["layer_norm"].vjp

    def without_gamma(dout, residuals):
        rows, gamma, mu, rstd = residuals
        return vjp(dout, (rows, np.ones_like(gamma), mu, rstd))

    monkeypatch.setitem(PRIMITIVES, "layer_norm", PRIMITIVES["layer_norm"]._replace(vjp=without_gamma))
    model = lnref.build("test_qk_norm", n_layers=2, **SMALL)
    failed = {
        r.tensor for r in checker.gradcheck(model, mode="blockwise", batch=2, seq=4).results if r.status == "failed"
    }
    assert "layers.0.q_norm.gamma" in failed or "layers.0.input" in failed


# ----- a scheme's own options, and the model options it refuses -----


@pytest.fixture(scope="module")
def gated():
    from tests.schemes import gated

    register_scheme("test_gated", gated)


@pytest.mark.usefixtures("gated")
def test_a_scheme_option_changes_the_model_and_is_kept_in_its_config():
    x, _, _ = lnref.build("test_gated", n_layers=2, **SMALL).sample_inputs()
    plain = lnref.build("test_gated", n_layers=2, **SMALL)
    doubled = lnref.build("test_gated", n_layers=2, options={"gate": 2.0}, **SMALL)
    assert doubled.config.option("gate") == 2.0 and plain.config.option("gate") == 1.0
    assert doubled.config.to_dict()["options"] == {"gate": 2.0}
    assert not np.allclose(plain(x), doubled(x))


@pytest.mark.usefixtures("gated")
def test_an_option_given_as_text_takes_the_type_of_its_default():
    model = lnref.build("test_gated", n_layers=1, options={"gate": "0.5", "final": "true"}, **SMALL)
    assert model.config.option("gate") == 0.5 and model.config.option("final") is True


@pytest.mark.usefixtures("gated")
@pytest.mark.parametrize(
    "options,words",
    [
        ({"gait": 1.0}, ["no option 'gait'", "gate, final"]),
        ({"gate": "wide"}, ["gate", "float"]),
        ({"gate": "nan"}, ["gate", "finite"]),
        ({"final": "maybe"}, ["final"]),
    ],
)
def test_a_bad_option_is_one_config_error_naming_it(options, words):
    with pytest.raises(lnref.ConfigError) as err:
        lnref.build("test_gated", n_layers=1, options=options)
    assert all(word in str(err.value) for word in words), err.value


@pytest.mark.usefixtures("gated")
def test_a_model_option_the_scheme_refuses_is_a_config_error_with_its_reason():
    with pytest.raises(lnref.ConfigError, match="takes no qk_norm option: this test scheme has no room"):
        lnref.build("test_gated", n_layers=1, qk_norm="head")


@pytest.mark.parametrize("variant", ["head", "full"])
def test_the_qk_norm_switch_adds_norms_to_every_attention_and_passes_the_check(variant):
    model = lnref.build("post", n_layers=2, qk_norm=variant, cross_attention=True, **SMALL)
    width = 4 if variant == "head" else 8
    assert model.params["layers.1.attn.q_norm.gamma"].shape == (width,)
    assert model.params["layers.1.cross.k_norm.beta"].shape == (width,)
    report = checker.gradcheck(model, mode="blockwise", batch=2, seq=4)
    assert report.ok and {r.tensor: r.status for r in report.results}["layers.1.attn.q_norm.gamma"] == "passed"


def test_per_head_qk_norm_makes_attention_invariant_to_the_scale_of_wq():
    model = lnref.build("pre", n_layers=2, qk_norm="head", eps=1e-12, **SMALL)
    x, dy, _ = model.sample_inputs()
    y = model(x)
    _, grads = model.value_and_grad(x, dy)
    assert abs(np.sum(grads["layers.0.attn.wq"] * model.params["layers.0.attn.wq"])) < 1e-9  # <dL/dW_q, W_q> = 0
    model.params["layers.0.attn.wq"] *= 3.0
    model.params["layers.0.attn.bq"] *= 3.0
    np.testing.assert_allclose(model(x), y, rtol=1e-9, atol=1e-9)


def test_a_norm_after_the_ffn_activation_has_the_width_of_the_hidden_layer_and_passes_the_check():
    import types

    scheme = types.ModuleType("test_hidden_norm")
    exec(
        "NORMS = ('ln_{}',)\nFFN_NORMS = ('ln_hidden',)\nSUMMARY = PAPER = ''\n"
        "def layer(x, layer):\n"
        "    x = x + layer.self_attention(layer.norm('ln_attn', x))\n"
        "    return x + layer.ffn(layer.norm('ln_ffn', x), hidden_norm='ln_hidden')\n",
        scheme.__dict__,
    )
    register_scheme("test_hidden_norm", scheme)
    model = lnref.build("test_hidden_norm", n_layers=2, **SMALL)
    assert model.params["layers.0.ln_hidden.gamma"].shape == (16,)
    report = checker.gradcheck(model, mode="blockwise", batch=2, seq=4)
    assert report.ok and {r.tensor: r.status for r in report.results}["layers.1.ln_hidden.gamma"] == "passed"


# ----- stop-gradients: the checker checks what the tape promises, and says so -----


@pytest.fixture(scope="module")
def stop_gradient_scheme():
    from tests.schemes import stop_gradient

    register_scheme("test_stop_gradient", stop_gradient)


@pytest.mark.usefixtures("stop_gradient_scheme")
@pytest.mark.parametrize("mode", ["directional", "blockwise"])
def test_a_stop_gradient_is_held_at_the_point_and_the_surrogate_passes(mode):
    model = lnref.build("test_stop_gradient", n_layers=3, **SMALL)
    report = checker.gradcheck(model, mode=mode, batch=2, seq=4)
    assert report.ok, report.to_text()
    assert "stop_gradient" in report.held and "surrogate" in report.to_text()


@pytest.mark.usefixtures("stop_gradient_scheme")
def test_checking_the_plain_function_reports_the_tapes_disagreement_by_design():
    model = lnref.build("test_stop_gradient", n_layers=3, **SMALL)
    report = checker.gradcheck(model, batch=2, seq=4, hold_stop_gradients=False)
    assert not report.ok
    assert "layers.0.gain" in {r.tensor for r in report.results if r.status == "failed"}


def test_a_stop_gradient_passes_its_value_forward_and_no_gradient_back():
    from lnref.autograd import ops, value_and_grad

    x = np.array([1.5, -2.0, 0.5])
    value, (dx,) = value_and_grad(lambda t: ops.sum(ops.stop_gradient(t) * t))(x)
    assert value == float(np.sum(x * x))
    np.testing.assert_array_equal(dx, x)  # d/dx of sg(x) x is x, not 2x
