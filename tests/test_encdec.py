"""The encoder-decoder model: its names and stages, what flows where, each scheme's constants
by the stack's role, and its one-line refusals."""

import math
import textwrap

import numpy as np
import pytest

import lnref
from lnref.encdec import EncoderDecoder
from lnref.model import ConfigError, Model
from lnref.schemes import deepnorm

SMALL = dict(d_model=8, n_heads=2, d_ff=16)


def build(scheme="pre", encoder_layers=2, decoder_layers=3, **options):
    return lnref.build(scheme, encoder_layers=encoder_layers, decoder_layers=decoder_layers, **{**SMALL, **options})


def inputs(model, seq=4, source_len=6):
    (source, target), dy, _ = model.sample_inputs(batch=2, seq=seq, memory_len=source_len)
    return source, target, dy


def test_build_with_both_depths_makes_an_encoder_decoder_model_of_the_scheme_s_stacks():
    model = build()
    assert isinstance(model, EncoderDecoder) and model.config.role == "encoder-decoder"
    assert (model.encoder.config.role, model.encoder.config.n_layers, model.encoder.config.cross_attention) == (
        "encoder",
        2,
        False,
    )
    assert (model.decoder.config.role, model.decoder.config.n_layers, model.decoder.config.causal) == (
        "decoder",
        3,
        True,
    )
    assert isinstance(lnref.build("pre", 2, **SMALL), Model)  # n_layers: one stack, as before


def test_parameter_names_carry_their_stack():
    names = set(build().params)
    assert {"encoder.layers.1.attn.wq", "encoder.final_ln.gamma", "decoder.layers.0.cross.wk"} <= names
    assert {"decoder.layers.2.ln_cross.beta", "decoder.final_ln.beta"} <= names
    assert not any(name.startswith("encoder.") and ".cross." in name for name in names)
    assert all(name.split(".")[0] in ("encoder", "decoder") for name in names)


def test_value_and_grad_returns_the_loss_and_every_gradient_of_both_stacks_and_both_inputs():
    model = build()
    source, target, dy = inputs(model)
    loss, grads = model.value_and_grad(source, target, dy)
    y = model(source, target)
    assert y.shape == target.shape and loss == pytest.approx(float(np.sum(y * dy)), rel=1e-12)
    assert set(grads) == set(model.params) | {"source", "target"}
    assert grads["source"].shape == source.shape and grads["target"].shape == target.shape
    assert all(grads[name].shape == value.shape for name, value in model.params.items())


def test_the_decoder_s_gradient_reaches_the_encoder_through_the_memory():
    model = build()
    _, grads = model.value_and_grad(*inputs(model))
    assert np.abs(grads["source"]).max() > 0 and np.abs(grads["encoder.layers.0.ffn.w1"]).max() > 0


def test_the_encoder_reads_all_of_the_source_and_the_decoder_no_later_target_token():
    model = build()
    source, target, _ = inputs(model)
    y = model(source, target)
    later_target, later_source = target.copy(), source.copy()
    later_target[:, -1, 0] += 1.0  # one feature: a norm is blind to a shift of every feature alike
    later_source[:, -1, 0] += 1.0
    assert np.array_equal(model(source, later_target)[:, :-1], y[:, :-1])
    assert not np.allclose(model(later_source, target)[:, 0], y[:, 0])


def test_the_memory_is_the_encoder_stack_s_output_and_y_the_decoder_stack_s():
    model = build("residual")
    source, target, _ = inputs(model)
    memory = model.memory(source, target)
    assert np.array_equal(memory, model.encoder(source))
    assert np.array_equal(model(source, target), model.decoder(target, memory))


def test_hidden_states_are_each_stack_s_own_with_its_own_length():
    model = build("residual")
    source, target, _ = inputs(model, seq=4, source_len=6)
    states = model.hidden_states(source, target)
    assert [len(states["encoder"]), len(states["decoder"])] == [3, 4]
    assert {s.shape for state in states["encoder"] for s in state} == {(2, 6, 8)}
    assert {s.shape for state in states["decoder"] for s in state} == {(2, 4, 8)}
    assert all(len(state) == 2 for stack in states.values() for state in stack)  # x_a, x_d


def test_the_staged_model_runs_encoder_layers_a_bridge_and_decoder_layers():
    model = build("residual", 2, 3)
    assert model.n_blocks == 6
    labels = [model.block_label(i)[1] for i in range(6)]
    assert labels == [
        "encoder layer 0",
        "encoder layer 1",
        "bridge",
        "decoder layer 0",
        "decoder layer 1",
        "decoder layer 2",
    ]
    assert model.stream_names(0) == ("x_a", "x_d", "target") and model.stream_names(3) == ("x_a", "x_d", "memory")
    assert model.stream_names(6) == ("x_a", "x_d")
    assert (model.layer_of("encoder.layers.1.attn.wq"), model.layer_of("decoder.layers.0.cross.wq")) == (1, 3)
    assert model.layer_of("encoder.final_ln.gamma") is None


def test_same_seed_same_bits_and_the_two_stacks_draw_independent_weights():
    a, b = build(seed=3), build(seed=3)
    assert all(a.params[n].tobytes() == b.params[n].tobytes() for n in a.params)
    assert not np.array_equal(a.params["encoder.layers.0.attn.wq"], a.params["decoder.layers.0.attn.wq"])


def test_the_fast_paths_and_the_composition_agree_and_a_replayed_pass_repeats_the_bits():
    model = build("b2t")
    batch = inputs(model)
    loss, grads = model.value_and_grad(*batch)
    again, replayed = model.value_and_grad(*batch)
    assert again == loss and all(np.array_equal(grads[n], replayed[n]) for n in grads)
    model.fast = False
    slow_loss, slow = model.value_and_grad(*batch)
    assert slow_loss == pytest.approx(loss, rel=1e-13)
    scales = {}  # round-off is relative to the largest gradient of a tensor's group (encoder.layers.1.attn.*)
    for name, grad in grads.items():
        scales[name.rpartition(".")[0]] = max(scales.get(name.rpartition(".")[0], 0.0), float(np.abs(grad).max()))
    assert all(np.abs(slow[n] - grads[n]).max() <= 1e-12 * scales[n.rpartition(".")[0]] for n in grads)


def test_load_replaces_both_stacks_parameters_and_checks_them():
    model, other = build(seed=0), build(seed=1)
    model.load(other.params)
    source, target, _ = inputs(model)
    assert np.array_equal(model(source, target), other(source, target))
    assert np.array_equal(model.encoder(source), other.encoder(source))
    with pytest.raises(ConfigError, match="missing encoder.layers.0.attn.wq"):
        model.load({n: v for n, v in other.params.items() if n != "encoder.layers.0.attn.wq"})


@pytest.mark.parametrize("scheme", lnref.SCHEMES)
def test_every_scheme_runs_as_an_encoder_decoder_model(scheme):
    model = build(scheme, 1, 1)
    loss, grads = model.value_and_grad(*inputs(model))
    assert math.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())


# ----- each scheme's constants by the stack's role -----


def test_deepnorm_takes_the_encoder_decoder_constants_of_the_paper():
    model = build("deepnorm", 6, 4)
    n, m = 6, 4
    assert deepnorm.constants(model.encoder.config) == pytest.approx(
        (0.81 * (n**4 * m) ** (1 / 16), 0.87 * (n**4 * m) ** (-1 / 16))
    )
    assert deepnorm.constants(model.decoder.config) == pytest.approx(((3 * m) ** 0.25, (12 * m) ** -0.25))
    assert deepnorm.constants(lnref.build("deepnorm", 6, **SMALL).config) == pytest.approx(
        ((2 * n) ** 0.25, (8 * n) ** -0.25)
    )


@pytest.mark.parametrize(
    "scheme, unscaled, factors",
    [
        ("deepnorm", "post", lambda n, m: (0.87 * (n**4 * m) ** (-1 / 16), (12 * m) ** -0.25)),
        ("subln", "pre", lambda n, m: (math.sqrt(math.log(3 * m) * math.log(2 * n) / 3), math.sqrt(math.log(3 * m)))),
        ("tfixup", "post", lambda n, m: (0.67 * n**-0.25, (9 * m) ** -0.25)),
    ],
)
def test_the_scaled_weights_of_each_stack_take_its_role_s_factor(scheme, unscaled, factors):
    n, m = 3, 5
    scaled, plain = build(scheme, n, m), build(unscaled, n, m)
    encoder, decoder = factors(n, m)
    for name, factor in (("encoder.layers.1.attn.wv", encoder), ("decoder.layers.2.ffn.w2", decoder)):
        assert np.allclose(scaled.params[name], factor * plain.params[name], rtol=1e-14, atol=0)
    assert np.array_equal(scaled.params["encoder.layers.1.attn.wq"], plain.params["encoder.layers.1.attn.wq"])


def test_subln_leaves_the_decoder_s_cross_attention_unscaled_and_tfixup_scales_it():
    for scheme, unscaled, scales in (("subln", "pre", False), ("tfixup", "post", True)):
        name = "decoder.layers.0.cross.wv"
        equal = np.array_equal(build(scheme).params[name], build(unscaled).params[name])
        assert equal is not scales


def test_admin_profiles_each_stack_from_a_skip_scale_of_one():
    model = build("admin", 2, 2)
    omegas = {name: float(value[0]) for name, value in model.params.items() if ".omega_" in name}
    assert omegas["encoder.layers.0.omega_attn"] == 1.0 and omegas["decoder.layers.0.omega_attn"] == 1.0
    assert all(value > 1.0 for name, value in omegas.items() if not name.endswith("layers.0.omega_attn"))
    assert all(np.all(v == v[0]) for n, v in model.params.items() if ".omega_" in n)


def test_admin_profiles_the_decoder_against_the_encoder_s_output():
    model = build("admin", 2, 2)
    other_encoder = build("admin", 2, 2, seed=1).encoder
    memory_of = model.decoder.encoder
    assert memory_of is model.encoder and memory_of is not other_encoder


# ----- refusals: one line each -----


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(encoder_layers=2), "encoder_layers and decoder_layers >= 1"),
        (dict(encoder_layers=2, decoder_layers=2, n_layers=3), "not both"),
        (dict(encoder_layers=2, decoder_layers=2, causal=True), "takes no causal option"),
        (dict(encoder_layers=2, decoder_layers=2, cross_attention=True), "takes no cross_attention option"),
        (dict(encoder_layers=0, decoder_layers=2), "encoder_layers and decoder_layers >= 1"),
        (dict(encoder_layers=2, decoder_layers=2, role="decoder"), "n_layers of the decoder is 2"),
        (dict(), "give n_layers"),
    ],
)
def test_a_configuration_that_cannot_describe_an_encoder_decoder_model_is_one_line(options, words):
    with pytest.raises(ConfigError, match=words):
        lnref.build("pre", **SMALL, **options)


def test_inputs_of_the_wrong_shape_are_one_line():
    model = build()
    source, target, dy = inputs(model)
    with pytest.raises(ConfigError, match="one batch size"):
        model(source[:1], target)
    with pytest.raises(ConfigError, match="source must have shape"):
        model(source[..., :4], target)
    with pytest.raises(ConfigError, match="computes its memory"):
        model.run(memory=source)


def test_a_scheme_with_no_encoder_decoder_form_refuses_it_in_one_line(tmp_path):
    path = tmp_path / "lone_stack.py"
    path.write_text(
        textwrap.dedent(
            """
            SUMMARY = "x <- x + S(x)"
            PAPER = "none"
            REFUSES = {"encoder_layers": "its paper has no encoder-decoder form"}

            def layer(x, layer):
                for _, branch in layer.branches:
                    x = x + branch(x)
                return x
            """
        )
    )
    with pytest.raises(ConfigError, match="takes no encoder_layers option: its paper has no encoder-decoder form"):
        lnref.build(str(path), encoder_layers=1, decoder_layers=1, **SMALL)
    assert lnref.build(str(path), 1, **SMALL).config.role == "stack"
