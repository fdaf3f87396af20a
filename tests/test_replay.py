"""A replayed pass (autograd.replay) is a taped pass without the Python of the layers."""

import numpy as np
import pytest

import lnref
from lnref.autograd import Tape, Tensor, ops
from lnref.autograd.replay import Program, Recording
from lnref.model import Model
from lnref.schemes import SCHEMES

CONFIGS = {
    "layernorm-relu": {},
    "rmsnorm-gelu": {"norm": "rmsnorm", "activation": "gelu"},
    "cross-causal": {"cross_attention": True, "causal": True},
    "float32": {"dtype": "float32"},
}


def _moved_params(model, seed):
    rng = np.random.default_rng(seed)
    return {name: (value + 0.1 * rng.standard_normal(value.shape)).astype(value.dtype)
            for name, value in model.params.items()}


def _assert_same_bits(first, second):
    (loss_a, grads_a), (loss_b, grads_b) = first, second
    assert loss_a == loss_b
    assert list(grads_a) == list(grads_b)
    for name in grads_a:
        assert grads_a[name].dtype == grads_b[name].dtype, name
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_replayed_pass_gives_the_bits_of_a_taped_pass_on_new_values(scheme, config):
    # The replay must read the new parameters and inputs, not those of the traced pass.
    options = dict(n_layers=3, **CONFIGS[config])
    replaying = lnref.build(scheme, **options)
    replaying.value_and_grad(*replaying.sample_inputs(seed=1))  # traced
    assert None not in replaying._programs.values()
    params = _moved_params(replaying, seed=2)
    x, dy, memory = replaying.sample_inputs(seed=3)
    replaying.load(params)
    replayed = replaying.value_and_grad(x, dy, memory)
    taping = lnref.build(scheme, **options)
    taping.load(params)
    _assert_same_bits(replayed, taping.value_and_grad(x, dy, memory))  # its first pass: taped


def test_a_repeated_pass_does_not_run_the_layers(monkeypatch):
    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    expected = model.value_and_grad(x, dy)

    def no_forward(*args, **kwargs):
        raise AssertionError("the layers ran")

    monkeypatch.setattr(Model, "forward", no_forward)
    _assert_same_bits(model.value_and_grad(x, dy), expected)


def test_inputs_of_new_shapes_are_traced_again():
    model = lnref.build("residual", n_layers=2)
    model.value_and_grad(*model.sample_inputs(batch=2, seq=8)[:2])
    x, dy, _ = model.sample_inputs(batch=3, seq=5)
    longer = model.value_and_grad(x, dy)
    taping = lnref.build("residual", n_layers=2)
    _assert_same_bits(longer, taping.value_and_grad(x, dy))
    assert len(model._programs) == 2


@pytest.mark.parametrize("options", [{"relu_masks": {}}, {"keep_states": True}])
def test_a_pass_that_records_relu_patterns_or_keeps_states_runs_the_layers(options, monkeypatch):
    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    model.value_and_grad(x, dy)
    ran = []
    forward = Model.forward
    monkeypatch.setattr(Model, "forward", lambda *args, **kwargs: ran.append(1) or forward(*args, **kwargs))
    model.gradients(x, dy, **options)
    assert ran


def test_a_replayed_pass_raises_the_error_of_a_taped_pass():
    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    model.value_and_grad(x, dy)
    params = dict(model.params, **{"layers.0.attn.wq": np.full((16, 16), np.inf)})
    with pytest.raises(ValueError) as replayed:
        model.gradients(x, dy, params=params)
    with pytest.raises(ValueError) as taped:
        lnref.build("pre", n_layers=2).gradients(x, dy, params=params)
    assert str(replayed.value) == str(taped.value)
    assert "NaN or inf" in str(replayed.value)


def _traced(fn, *arrays):
    """(program of fn over Tensors of ``arrays`` or None, the taped output and gradients)."""
    leaves = [Tensor(a, requires_grad=True) for a in arrays]
    with Tape() as tape, Recording() as recording:
        out = fn(*leaves)
    program = Program.from_recording(recording, leaves, [True] * len(leaves), out)
    tape.backward(out)
    return program, out.value, [leaf.grad for leaf in leaves]


def test_a_program_accumulates_a_tensor_used_twice_as_the_tape_does():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(5), rng.standard_normal(5)
    program, out, grads = _traced(lambda x, y: ops.sum(x * x + x * y), a, b)
    replayed_out, replayed_grads = program.run([a, b])
    assert replayed_out == out
    for replayed, taped in zip(replayed_grads, grads):
        np.testing.assert_array_equal(replayed, taped)


def test_a_program_gives_no_gradient_to_an_input_the_output_does_not_reach():
    rng = np.random.default_rng(0)
    program, _, grads = _traced(lambda x, y: ops.sum(x * 2.0), rng.standard_normal(3), rng.standard_normal(3))
    assert grads[1] is None
    assert program.run([np.ones(3), np.ones(3)])[1][1] is None


def test_an_array_computed_beside_the_primitives_makes_a_recording_unreplayable():
    # The side value would be frozen at the traced pass's: the tape must be kept.
    program, _, _ = _traced(lambda x: ops.sum(x * np.exp(x.value)), np.ones(3))
    assert program is None


def test_a_model_whose_recording_is_unreplayable_keeps_the_tape(monkeypatch):
    import lnref.schemes.pre as pre

    pre_layer = pre.layer

    def layer_with_a_side_value(x, sub):
        return pre_layer(x, sub) * Tensor(np.tanh(x.value))  # a value the primitives do not see

    model = lnref.build("pre", n_layers=2)
    monkeypatch.setattr(pre, "layer", layer_with_a_side_value)
    x, dy, _ = model.sample_inputs(seed=1)
    model.value_and_grad(x, dy)
    assert list(model._programs.values()) == [None]
    x2, dy2, _ = model.sample_inputs(seed=2)
    twin = lnref.build("pre", n_layers=2)
    _assert_same_bits(model.value_and_grad(x2, dy2), twin.value_and_grad(x2, dy2))


def test_a_program_gives_no_gradient_to_an_input_flagged_constant():
    rng = np.random.default_rng(0)
    x, dy = Tensor(rng.standard_normal(4), requires_grad=True), rng.standard_normal(4)
    with Recording() as recording:
        out = ops.sum(ops.mul(x, dy))
    program = Program.from_recording(recording, [x, dy], [True, False], out)
    _, (dx, ddy) = program.run([x.value, dy])
    np.testing.assert_array_equal(dx, dy)
    assert ddy is None


def test_a_replayed_pass_gives_zeros_to_a_parameter_the_loss_does_not_reach(monkeypatch):
    import lnref.schemes.pre as pre

    def attention_only(x, sub):
        return x + sub.self_attention(sub.norm("ln_attn", x))

    monkeypatch.setattr(pre, "layer", attention_only)
    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    taped = model.value_and_grad(x, dy)
    replayed = model.value_and_grad(x, dy)
    assert None not in model._programs.values()
    _assert_same_bits(replayed, taped)
    assert not replayed[1]["layers.1.ffn.w1"].any()


def test_a_model_keeps_the_programs_of_its_last_eight_input_shapes():
    model = lnref.build("pre", n_layers=1)
    for batch in range(1, 10):
        model.value_and_grad(*model.sample_inputs(batch=batch)[:2])
    assert [key[0][0] for key in model._programs] == list(range(2, 10))


def test_parameters_named_in_another_order_run_on_the_tape(monkeypatch):
    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    model.value_and_grad(x, dy)
    reordered = dict(reversed(list(model.params.items())))
    ran = []
    forward = Model.forward
    monkeypatch.setattr(Model, "forward", lambda *args, **kwargs: ran.append(1) or forward(*args, **kwargs))
    grads, loss, _ = model.gradients(x, dy, params=reordered)
    assert ran
    expected_loss, expected = model.value_and_grad(x, dy)
    assert loss == expected_loss
    for name in expected:
        np.testing.assert_array_equal(grads[name], expected[name])


def test_a_replayed_pass_converts_a_parameter_given_as_a_list_as_the_tape_does():
    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    model.value_and_grad(x, dy)
    params = dict(model.params, **{"layers.1.ffn.b2": model.params["layers.1.ffn.b2"].tolist()})
    replayed, replayed_loss, _ = model.gradients(x, dy, params=params)
    taped, taped_loss, _ = lnref.build("pre", n_layers=2).gradients(x, dy, params=params)
    _assert_same_bits((replayed_loss, replayed), (taped_loss, taped))


def test_a_replayed_pass_refuses_a_float16_parameter_as_the_tape_does():
    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    model.value_and_grad(x, dy)
    params = dict(model.params, **{"layers.0.ln_attn.gamma": np.ones(16, np.float16)})
    with pytest.raises(ValueError) as replayed:
        model.gradients(x, dy, params=params)
    with pytest.raises(ValueError) as taped:
        lnref.build("pre", n_layers=2).gradients(x, dy, params=params)
    assert str(replayed.value) == str(taped.value)
