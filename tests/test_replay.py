"""A replayed pass (autograd.replay) is a taped pass without the Python of the layers."""

import numpy as np
import pytest

import lnref
from lnref.autograd import Tensor, ops, value_and_grad
from lnref.autograd.replay import Replayer
from lnref.model import Model, refusal
from lnref.schemes import SCHEMES, get_scheme, options_of

CONFIGS = {
    "layernorm-relu": {},
    "rmsnorm-gelu": {"norm": "rmsnorm", "activation": "gelu"},
    "cross-causal": {"cross_attention": True, "causal": True},
    "float32": {"dtype": "float32"},
}


def _moved_params(model, seed):
    rng = np.random.default_rng(seed)
    return {
        name: (value + 0.1 * rng.standard_normal(value.shape)).astype(value.dtype)
        for name, value in model.params.items()
    }


def _assert_same_bits(first, second):
    (loss_a, grads_a), (loss_b, grads_b) = first, second
    assert loss_a == loss_b
    assert list(grads_a) == list(grads_b)
    for name in grads_a:
        assert grads_a[name].dtype == grads_b[name].dtype, name
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


OPTION_CHOICES = [
    (scheme, name, choice)
    for scheme in SCHEMES
    for name, option in options_of(get_scheme(scheme)).items()
    for choice in option.choices or ()
    if choice != option.default
]


@pytest.mark.parametrize("scheme, name, choice", OPTION_CHOICES)
def test_every_choice_of_a_schemes_options_replays(scheme, name, choice):
    """A scheme computes only through primitives, whatever its options: its pass is a program."""
    model = lnref.build(scheme, n_layers=2, options={name: choice})
    model.value_and_grad(*model.sample_inputs(seed=1)[:2])
    assert None not in model.replayer.programs.values()


@pytest.mark.parametrize(
    "scheme, config", [(s, c) for s in SCHEMES for c in CONFIGS if refusal(s, **CONFIGS[c]) is None]
)
def test_a_replayed_pass_gives_the_bits_of_a_taped_pass_on_new_values(scheme, config):
    # The replay must read the new parameters and inputs, not those of the traced pass.
    options = dict(n_layers=3, **CONFIGS[config])
    replaying = lnref.build(scheme, **options)
    replaying.value_and_grad(*replaying.sample_inputs(seed=1))  # traced
    assert None not in replaying.replayer.programs.values()
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
    assert len(model.replayer.programs) == 2


def test_the_reference_path_runs_the_layers_on_every_pass(monkeypatch):
    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    model.value_and_grad(x, dy)
    ran = []
    forward = Model.forward
    monkeypatch.setattr(Model, "forward", lambda *args, **kwargs: ran.append(1) or forward(*args, **kwargs))
    model.gradients(x, dy)
    model.gradients(x, dy, keep_states=True)
    assert len(ran) == 2


def test_a_model_with_its_fast_paths_off_runs_the_layers_on_every_pass(monkeypatch):
    model = lnref.build("pre", n_layers=2)
    model.fast = False
    x, dy, _ = model.sample_inputs()
    expected = model.value_and_grad(x, dy)
    ran = []
    forward = Model.forward
    monkeypatch.setattr(Model, "forward", lambda *args, **kwargs: ran.append(1) or forward(*args, **kwargs))
    assert model.value_and_grad(x, dy)[0] == expected[0]
    assert ran and not model.replayer.programs


def test_a_replayed_pass_raises_the_error_of_a_taped_pass():
    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    model.value_and_grad(x, dy)
    model.params["layers.0.attn.wq"] = np.full((16, 16), np.inf)
    with pytest.raises(ValueError) as replayed:
        model.value_and_grad(x, dy)
    with pytest.raises(ValueError) as taped:
        lnref.build("pre", n_layers=2).gradients(x, dy, params=model.params)
    assert str(replayed.value) == str(taped.value)
    assert "NaN or inf" in str(replayed.value)


def _first_and_replayed(fn, arrays, differentiate=None):
    """(the first pass, traced, and a second one, replayed) of a Replayer over ``fn``."""
    replayer = Replayer()
    differentiate = [True] * len(arrays) if differentiate is None else differentiate
    first = replayer.value_and_grad("key", fn, arrays, differentiate)
    return replayer, first, replayer.value_and_grad("key", fn, arrays, differentiate)


def test_a_replay_accumulates_a_tensor_used_twice_as_the_tape_does():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(5), rng.standard_normal(5)
    fn = lambda x, y: ops.sum(x * x + x * y)  # noqa: E731
    replayer, _, (out, grads) = _first_and_replayed(fn, [a, b])
    assert replayer.programs["key"] is not None
    taped_out, taped_grads = value_and_grad(fn)(a, b)
    assert out.value == taped_out
    for replayed, taped in zip(grads, taped_grads):
        np.testing.assert_array_equal(replayed, taped)


def test_a_replay_calls_the_vjp_registered_when_it_runs(monkeypatch):
    """The negative control of the replay's backward: a VJP broken after tracing is the one a
    replay calls, and its gradient is wrong."""
    from lnref.autograd.primitive import PRIMITIVES, Primitive

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(5), rng.standard_normal(5)
    fn = lambda x, y: ops.sum(x * y)  # noqa: E731
    replayer, (_, good), _ = _first_and_replayed(fn, [a, b])
    mul = PRIMITIVES["mul"]
    monkeypatch.setitem(PRIMITIVES, "mul", Primitive("mul", mul.forward, lambda dout, res: (dout, dout)))
    _, broken = replayer.value_and_grad("key", fn, [a, b], [True, True])
    assert not np.allclose(broken[0], good[0])


def test_a_replay_refuses_an_output_that_is_not_a_scalar_as_the_tape_does():
    from lnref.autograd.replay import Program
    from lnref.autograd.tape import Tape

    x = Tensor(np.ones(3), requires_grad=True)
    with Tape() as tape:
        output = x * 2.0
    program = Program.from_records(tape.records, [x], output)
    assert program is not None
    with pytest.raises(ValueError, match="needs a cotangent"):
        tape.backward(output)
    with pytest.raises(ValueError, match="needs a cotangent"):
        program.value_and_grad([np.ones(3)], [True])


def test_a_replay_gives_zeros_to_an_input_the_output_does_not_reach():
    rng = np.random.default_rng(0)
    _, _, (_, grads) = _first_and_replayed(lambda x, y: ops.sum(x * 2.0), [rng.standard_normal(3), np.ones(3)])
    np.testing.assert_array_equal(grads[1], np.zeros(3))


def test_a_replay_gives_no_gradient_to_an_input_it_is_told_not_to_differentiate():
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal(4), rng.standard_normal(4)
    _, _, (_, (dx, ddy)) = _first_and_replayed(lambda x, dy: ops.sum(ops.mul(x, dy)), [x, dy], [True, False])
    np.testing.assert_array_equal(dx, dy)
    assert ddy is None


def test_an_array_computed_beside_the_primitives_makes_a_pass_unreplayable():
    # The side value would be frozen at the traced pass's: the Python must run every time.
    replayer, _, _ = _first_and_replayed(lambda x: ops.sum(x * np.exp(x.value)), [np.ones(3)])
    assert replayer.programs["key"] is None


def test_a_model_whose_pass_is_unreplayable_keeps_running_its_layers(monkeypatch):
    import lnref.schemes.pre as pre

    pre_layer = pre.layer

    def layer_with_a_side_value(x, layer):
        return pre_layer(x, layer) * Tensor(np.tanh(x.value))  # a value the primitives do not see

    model = lnref.build("pre", n_layers=2)
    monkeypatch.setattr(pre, "layer", layer_with_a_side_value)
    x, dy, _ = model.sample_inputs(seed=1)
    model.value_and_grad(x, dy)
    assert list(model.replayer.programs.values()) == [None]
    x2, dy2, _ = model.sample_inputs(seed=2)
    twin = lnref.build("pre", n_layers=2)
    _assert_same_bits(model.value_and_grad(x2, dy2), twin.value_and_grad(x2, dy2))


def test_a_replayed_pass_gives_zeros_to_a_parameter_the_loss_does_not_reach(monkeypatch):
    import lnref.schemes.pre as pre

    def attention_only(x, layer):
        return x + layer.self_attention(layer.norm("ln_attn", x))

    monkeypatch.setattr(pre, "layer", attention_only)
    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    taped = model.value_and_grad(x, dy)
    replayed = model.value_and_grad(x, dy)
    assert None not in model.replayer.programs.values()
    _assert_same_bits(replayed, taped)
    assert not replayed[1]["layers.1.ffn.w1"].any()


def test_a_model_keeps_the_programs_of_its_last_eight_input_shapes():
    model = lnref.build("pre", n_layers=1)
    for batch in range(1, 10):
        model.value_and_grad(*model.sample_inputs(batch=batch)[:2])
    assert [key[0][0] for key in model.replayer.programs] == list(range(2, 10))


def test_a_replayed_pass_converts_a_parameter_given_as_a_list_as_the_tape_does():
    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    model.value_and_grad(x, dy)
    model.params["layers.1.ffn.b2"] = model.params["layers.1.ffn.b2"].tolist()
    replayed_loss, replayed = model.value_and_grad(x, dy)
    taped, taped_loss, _ = lnref.build("pre", n_layers=2).gradients(x, dy, params=model.params)
    _assert_same_bits((replayed_loss, replayed), (taped_loss, taped))


def test_a_replayed_pass_refuses_a_float16_parameter_as_the_tape_does():
    model = lnref.build("pre", n_layers=2)
    x, dy, _ = model.sample_inputs()
    model.value_and_grad(x, dy)
    model.params["layers.0.ln_attn.gamma"] = np.ones(16, np.float16)
    with pytest.raises(ValueError) as replayed:
        model.value_and_grad(x, dy)
    with pytest.raises(ValueError) as taped:
        lnref.build("pre", n_layers=2).gradients(x, dy, params=model.params)
    assert str(replayed.value) == str(taped.value)
