"""A few element-wise steps as one primitive: y = a - s sg(b), ``sub_scaled_stop_gradient``,
y = x sigmoid(g), ``mul_sigmoid``, and y = a u + b w, ``sum_of_products``; the replay's fusion
of sub(a, mul(s, stop_gradient(a))) into the first and of mul(x, sigmoid(g)) into the second
(GPAS's x - SiLU(a) sg(x)), and of add(mul(a, u), mul(b, w)) into the third (DeepScaleLM's
lambda x + beta S(N(x)))."""

import numpy as np
import pytest
from tape_helpers import fused_steps, tape_gradients, taped_and_replayed

import lnref
from lnref.autograd import fused_pointwise, ops
from lnref.autograd.primitive import PRIMITIVES
from lnref.autograd.replay import Replayer
from lnref.gradcheck import check_vjp

SMALL = dict(n_layers=3, d_model=16, n_heads=2, d_ff=64)
SHAPE = (2, 3, 8)


def _stream_and_scale(seed=0, scale_shape=()):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(SHAPE), np.asarray(rng.standard_normal(scale_shape))


def _cotangent(seed=5):
    return np.random.default_rng(seed).standard_normal(SHAPE)


def _scaled_down(a, s):
    return ops.sub(a, ops.mul(s, ops.stop_gradient(a)))


def _assert_same_bits(first, second):
    assert len(first) == len(second)
    for one, other in zip(first, second):
        np.testing.assert_array_equal(one, other)


# ----- sub_scaled_stop_gradient ---------------------------------------------------------


@pytest.mark.parametrize("scale_shape", [(), (8,), (2, 1, 1)], ids=["scalar", "per-feature", "per-row"])
def test_sub_scaled_stop_gradient_gives_the_bits_of_the_three_steps(scale_shape):
    a, s = _stream_and_scale(scale_shape=scale_shape)
    fused = fused_pointwise.sub_scaled_stop_gradient(a, s, a)
    np.testing.assert_array_equal(fused.value, _scaled_down(a, s).value)


@pytest.mark.parametrize("scale_shape", [(), (8,), (2, 1, 1)], ids=["scalar", "per-feature", "per-row"])
def test_sub_scaled_stop_gradient_vjp_gives_the_bits_of_the_three_vjps(scale_shape):
    a, s = _stream_and_scale(scale_shape=scale_shape)
    fused = tape_gradients(lambda a, s: fused_pointwise.sub_scaled_stop_gradient(a, s, a), [a, s], _cotangent())
    _assert_same_bits(fused, tape_gradients(_scaled_down, [a, s], _cotangent()))


def test_sub_scaled_stop_gradient_gives_a_number_scale_no_cotangent():
    a, _ = _stream_and_scale()
    (da,) = tape_gradients(lambda a: fused_pointwise.sub_scaled_stop_gradient(a, 0.5, a), [a], _cotangent())
    np.testing.assert_array_equal(da, _cotangent())


def _held_scaled_down(a, s):
    """a - s sg(a) with sg(a) held at the point's a: the function whose derivative the tape gives."""
    held = _stream_and_scale()[0]
    return fused_pointwise.sub_scaled_stop_gradient(a, s, held)


def test_sub_scaled_stop_gradient_vjp_matches_finite_differences_with_the_stopped_value_held():
    checks = check_vjp(_held_scaled_down, *_stream_and_scale())
    assert len(checks) == 2 and all(c.status == "passed" for c in checks), checks


def test_a_vjp_that_drops_the_scales_cotangent_fails_the_check(monkeypatch):
    """The negative control of the VJP check."""
    defined = PRIMITIVES["sub_scaled_stop_gradient"]

    def broken_vjp(dout, residuals):
        da, ds, db = defined.vjp(dout, residuals)
        return da, np.zeros_like(ds), db

    monkeypatch.setitem(PRIMITIVES, "sub_scaled_stop_gradient", defined._replace(vjp=broken_vjp))
    checks = check_vjp(_held_scaled_down, *_stream_and_scale())
    assert [c.status for c in checks] == ["passed", "failed"]


@pytest.mark.parametrize(
    "arguments",
    [
        lambda a, s: (a, np.ones(5), a),
        lambda a, s: (a[:, :2], s, a),
        lambda a, s: (a, s, a.astype(np.int64)),
        lambda a, s: (a, s.astype(np.float32), a),
    ],
    ids=["a scale that does not broadcast", "a stream that does not broadcast", "integers", "mixed dtypes"],
)
def test_sub_scaled_stop_gradient_refuses_inputs_that_do_not_fit_in_one_line_naming_the_op(arguments):
    with pytest.raises(ValueError, match=r"^sub_scaled_stop_gradient: [^\n]*$"):
        fused_pointwise.sub_scaled_stop_gradient(*arguments(*_stream_and_scale()))


# ----- mul_sigmoid ----------------------------------------------------------------------


def _value_and_gate(seed=1, gate_shape=SHAPE):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(SHAPE), 3 * rng.standard_normal(gate_shape)


@pytest.mark.parametrize("gate_shape", [SHAPE, (), (8,)], ids=["same shape", "scalar", "per-feature"])
def test_mul_sigmoid_gives_the_bits_of_the_sigmoid_and_the_mul(gate_shape):
    x, g = _value_and_gate(gate_shape=gate_shape)
    np.testing.assert_array_equal(fused_pointwise.mul_sigmoid(x, g).value, (x * ops.sigmoid(g)).value)


@pytest.mark.parametrize("gate_shape", [SHAPE, (), (8,)], ids=["same shape", "scalar", "per-feature"])
def test_mul_sigmoid_vjp_gives_the_bits_of_the_two_vjps(gate_shape):
    x, g = _value_and_gate(gate_shape=gate_shape)
    fused = tape_gradients(fused_pointwise.mul_sigmoid, [x, g], _cotangent())
    _assert_same_bits(fused, tape_gradients(lambda x, g: x * ops.sigmoid(g), [x, g], _cotangent()))


def test_silu_as_mul_sigmoid_of_one_value_gives_the_bits_of_the_two_steps():
    """x sigmoid(x): the two cotangents of x join in the order the tape adds them."""
    x, _ = _value_and_gate()
    fused = tape_gradients(lambda x: fused_pointwise.mul_sigmoid(x, x), [x], _cotangent())
    _assert_same_bits(fused, tape_gradients(lambda x: x * ops.sigmoid(x), [x], _cotangent()))


def test_mul_sigmoid_vjp_matches_finite_differences():
    checks = check_vjp(fused_pointwise.mul_sigmoid, *_value_and_gate())
    assert len(checks) == 2 and all(c.status == "passed" for c in checks), checks


def test_a_vjp_that_drops_the_gates_cotangent_fails_the_check(monkeypatch):
    """The negative control of the VJP check."""
    defined = PRIMITIVES["mul_sigmoid"]

    def broken_vjp(dout, residuals):
        dx, dg = defined.vjp(dout, residuals)
        return dx, np.zeros_like(dg)

    monkeypatch.setitem(PRIMITIVES, "mul_sigmoid", defined._replace(vjp=broken_vjp))
    checks = check_vjp(fused_pointwise.mul_sigmoid, *_value_and_gate())
    assert [c.status for c in checks] == ["passed", "failed"]


@pytest.mark.parametrize(
    "arguments",
    [
        lambda x, g: (x, g[:, :2]),
        lambda x, g: (x, g.astype(np.int64)),
        lambda x, g: (x.astype(np.float32), g),
    ],
    ids=["a gate that does not broadcast", "integers", "mixed dtypes"],
)
def test_mul_sigmoid_refuses_inputs_that_do_not_fit_in_one_line_naming_the_op(arguments):
    with pytest.raises(ValueError, match=r"^mul_sigmoid: [^\n]*$"):
        fused_pointwise.mul_sigmoid(*arguments(*_value_and_gate()))


# ----- sum_of_products ------------------------------------------------------------------


def _two_products(seed=3, scale_shape=()):
    """a, u, b, w: two streams and two scales of ``scale_shape``."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE), rng.standard_normal(scale_shape)] * 2


def _products_as_three_steps(a, u, b, w):
    return ops.add(ops.mul(a, u), ops.mul(b, w))


@pytest.mark.parametrize("scale_shape", [(), (8,), SHAPE], ids=["scalar", "per-feature", "same shape"])
def test_sum_of_products_gives_the_bits_of_the_two_muls_and_the_add(scale_shape):
    arrays = _two_products(scale_shape=scale_shape)
    np.testing.assert_array_equal(
        fused_pointwise.sum_of_products(*arrays).value, _products_as_three_steps(*arrays).value
    )


@pytest.mark.parametrize("scale_shape", [(), (8,), SHAPE], ids=["scalar", "per-feature", "same shape"])
def test_sum_of_products_vjp_gives_the_bits_of_the_three_vjps(scale_shape):
    arrays = _two_products(scale_shape=scale_shape)
    fused = tape_gradients(fused_pointwise.sum_of_products, arrays, _cotangent())
    _assert_same_bits(fused, tape_gradients(_products_as_three_steps, arrays, _cotangent()))


def test_sum_of_products_gives_number_scales_no_cotangent():
    a, _, b, _ = _two_products()
    da, db = tape_gradients(lambda a, b: fused_pointwise.sum_of_products(a, 0.6, b, 0.8), [a, b], _cotangent())
    np.testing.assert_array_equal(da, _cotangent() * 0.6)
    np.testing.assert_array_equal(db, _cotangent() * 0.8)


def test_sum_of_products_vjp_matches_finite_differences():
    checks = check_vjp(fused_pointwise.sum_of_products, *_two_products(scale_shape=(8,)))
    assert len(checks) == 4 and all(c.status == "passed" for c in checks), checks


def test_a_vjp_that_drops_the_second_scales_cotangent_fails_the_check(monkeypatch):
    """The negative control of the VJP check."""
    defined = PRIMITIVES["sum_of_products"]

    def broken_vjp(dout, residuals):
        da, du, db, dw = defined.vjp(dout, residuals)
        return da, du, db, np.zeros_like(dw)

    monkeypatch.setitem(PRIMITIVES, "sum_of_products", defined._replace(vjp=broken_vjp))
    checks = check_vjp(fused_pointwise.sum_of_products, *_two_products(scale_shape=(8,)))
    assert [c.status for c in checks] == ["passed", "passed", "passed", "failed"]


@pytest.mark.parametrize(
    "arguments",
    [
        lambda a, u, b, w: (a, np.ones(5), b, w),
        lambda a, u, b, w: (a, u, b[:, :2], np.ones((2, 3, 1))),
        lambda a, u, b, w: (a, u, b[:, :2], w),
        lambda a, u, b, w: (a.astype(np.int64), u, b, w),
        lambda a, u, b, w: (a, u, b.astype(np.float32), w),
    ],
    ids=["a scale that does not broadcast", "products that do not broadcast", "streams that do not broadcast",
         "integers", "mixed dtypes"],
)  # fmt: skip
def test_sum_of_products_refuses_inputs_that_do_not_fit_in_one_line_naming_the_op(arguments):
    with pytest.raises(ValueError, match=r"^sum_of_products: [^\n]*$"):
        fused_pointwise.sum_of_products(*arguments(*_two_products(scale_shape=(8,))))


# ----- the replay's fusion --------------------------------------------------------------


def _replayed_program(fn, arrays):
    """The program of ``fn``, its taped (value, gradients) and its replayed ones."""
    replayer = Replayer()
    taped = replayer.value_and_grad("key", fn, arrays, [True] * len(arrays))
    replayed = replayer.value_and_grad("key", fn, arrays, [True] * len(arrays))
    return replayer.programs["key"], taped, replayed


def _assert_same_pass(taped, replayed):
    (loss_a, grads_a), (loss_b, grads_b) = taped, replayed
    assert loss_a.value == loss_b.value
    _assert_same_bits(grads_a, grads_b)


def _scaled_down_program(between):
    """The program of sum((a - s sg(a)) * q), with ``between`` a step between the mul and the
    sub that reads s (or not)."""

    def fn(a, s, c):
        scaled = s * ops.stop_gradient(a)
        q = s * c if between else c * c
        return ops.sum((a - scaled) * q)

    return _replayed_program(fn, [*_stream_and_scale(), _cotangent()])


def test_a_stream_scaled_down_by_a_stopped_copy_is_fused_when_no_step_between_reads_the_scale():
    program, taped, replayed = _scaled_down_program(between=False)
    assert [step[0] for step in program.fused_steps] == ["mul", "sub_scaled_stop_gradient", "mul", "sum"]
    _assert_same_pass(taped, replayed)


def test_a_stream_scaled_down_is_not_fused_when_a_step_between_reads_the_scale():
    """s's cotangent from the mul would join its other terms at the sub's place, after the term
    of the step between: another order of the sum than the tape's."""
    program, taped, replayed = _scaled_down_program(between=True)
    assert program.fused_steps == program.steps
    _assert_same_pass(taped, replayed)


def test_a_value_less_a_scaled_stopped_other_value_is_fused():
    def fn(a, s, b):
        return ops.sum((a - ops.stop_gradient(b) * s) * b)

    program, taped, replayed = _replayed_program(fn, [*_stream_and_scale(), _cotangent()])
    assert [step[0] for step in program.fused_steps] == ["sub_scaled_stop_gradient", "mul", "sum"]
    _assert_same_pass(taped, replayed)


def test_a_stream_scaled_down_is_not_fused_when_the_stopped_copy_has_another_reader():
    def fn(a, s):
        stopped = ops.stop_gradient(a)
        return ops.sum((a - s * stopped) * stopped)

    program, taped, replayed = _replayed_program(fn, list(_stream_and_scale()))
    assert program.fused_steps == program.steps
    _assert_same_pass(taped, replayed)


def _gated_program(between):
    """The program of sum(x sigmoid(g) * q), with ``between`` a step between the sigmoid and the
    mul that reads g (or not)."""

    def fn(x, g, c):
        gate = ops.sigmoid(g)
        q = g * c if between else c * c
        return ops.sum(x * gate * q)

    return _replayed_program(fn, [*_value_and_gate(), _cotangent()])


def test_a_gated_value_is_fused_when_no_step_between_reads_the_gate():
    program, taped, replayed = _gated_program(between=False)
    assert [step[0] for step in program.fused_steps] == ["mul", "mul_sigmoid", "mul", "sum"]
    _assert_same_pass(taped, replayed)


def test_a_gated_value_is_not_fused_when_a_step_between_reads_the_gate():
    program, taped, replayed = _gated_program(between=True)
    assert program.fused_steps == program.steps
    _assert_same_pass(taped, replayed)


def _sum_of_products_program(third_reader):
    """The program of sum((u a + w tanh(a)) * c), a read between its mul and the add (by the
    tanh); with ``third_reader``, a also read once more, after the add."""

    def fn(a, u, b, w):
        total = ops.add(ops.mul(u, a), ops.mul(ops.tanh(a), w))
        return ops.sum(total * (a if third_reader else b))

    return _replayed_program(fn, _two_products(scale_shape=(8,)))


def test_a_sum_of_products_is_fused_when_the_operand_read_between_has_no_third_reader():
    program, taped, replayed = _sum_of_products_program(third_reader=False)
    assert [step[0] for step in program.fused_steps] == ["tanh", "sum_of_products", "mul", "sum"]
    _assert_same_pass(taped, replayed)


def test_a_sum_of_products_is_not_fused_when_the_operand_read_between_has_a_third_reader():
    """a's cotangent would be three terms, the mul's joining at the add's place, after the term
    of the step between: another order of the sum than the tape's."""
    program, taped, replayed = _sum_of_products_program(third_reader=True)
    assert "sum_of_products" not in [step[0] for step in program.fused_steps]
    _assert_same_pass(taped, replayed)


def test_a_sum_of_products_of_one_slot_twice_is_not_fused():
    def fn(a, u):
        return ops.sum(ops.add(ops.mul(a, u), ops.mul(a, u)))

    program, taped, replayed = _replayed_program(fn, _two_products()[:2])
    assert program.fused_steps == program.steps
    _assert_same_pass(taped, replayed)


# ----- DeepScaleLM ----------------------------------------------------------------------


def test_a_pre_dslm_layer_replays_as_four_steps():
    """Each sublayer its fused normed branch and one sum_of_products, except the last, whose
    sum the readout's norm takes (``layer_norm_of_sum``)."""
    model = lnref.build("dslm", **SMALL)
    taped_and_replayed(model)
    names = [step[0] for step in fused_steps(model)]
    assert names[-6:] == ["mul", "residual_normed_feed_forward", "mul", "layer_norm_of_sum", "mul", "sum"]
    attention, feed_forward = ["residual_normed_attention", "sum_of_products"], ["residual_normed_feed_forward"]
    assert names[:-6] == (attention + feed_forward + ["sum_of_products"]) * (SMALL["n_layers"] - 1) + attention


@pytest.mark.parametrize("config", [{}, {"dtype": "float32"}], ids=["float64", "float32"])
def test_a_fused_dslm_pass_gives_the_bits_of_the_taped_pass(config):
    taped, replayed = taped_and_replayed(lnref.build("dslm", **SMALL, **config))
    (loss_a, grads_a), (loss_b, grads_b) = taped, replayed
    assert loss_a == loss_b
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


def test_a_broken_sum_of_products_backward_changes_the_replayed_gradient(monkeypatch):
    """The negative control of the bit test above: the streams' cotangents (the scales are
    numbers, and take none) off by a part in a billion reach the first layer's weights."""
    model = lnref.build("dslm", **SMALL)
    taped, _ = taped_and_replayed(model)
    defined = PRIMITIVES["sum_of_products"]

    def off_by_a_little(dout, residuals):
        return tuple(None if term is None else term * (1 + 1e-9) for term in defined.vjp(dout, residuals))

    monkeypatch.setitem(PRIMITIVES, "sum_of_products", defined._replace(vjp=off_by_a_little))
    x, dy, memory = model.sample_inputs(seed=1)
    broken = model.value_and_grad(x, dy, memory)
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.attn.wq"], broken[1]["layers.0.attn.wq"])


# ----- GPAS -----------------------------------------------------------------------------


def _moved_gpas(seed=2, **config):
    """A GPAS model with every parameter moved off its init: the gates away from 0."""
    model = lnref.build("gpas", **SMALL, **config)
    rng = np.random.default_rng(seed)
    model.load({name: (v + 0.3 * rng.standard_normal(v.shape)).astype(v.dtype) for name, v in model.params.items()})
    return model


def test_a_gpas_layer_replays_as_five_steps():
    """Its two fused branches, a sub_scaled_stop_gradient after each, SiLU of its gate once."""
    model = _moved_gpas()
    taped_and_replayed(model)
    names = [step[0] for step in fused_steps(model)]
    assert names[-3:] == ["layer_norm", "mul", "sum"]  # the readout and the loss
    assert len(names[:-3]) == 5 * SMALL["n_layers"]
    assert names.count("sub_scaled_stop_gradient") == 2 * SMALL["n_layers"]
    assert names.count("mul_sigmoid") == SMALL["n_layers"]


@pytest.mark.parametrize("config", [{}, {"dtype": "float32"}], ids=["float64", "float32"])
def test_a_fused_gpas_pass_gives_the_bits_of_the_taped_pass(config):
    taped, replayed = taped_and_replayed(_moved_gpas(**config))
    (loss_a, grads_a), (loss_b, grads_b) = taped, replayed
    assert loss_a == loss_b
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


@pytest.mark.parametrize("primitive", ["sub_scaled_stop_gradient", "mul_sigmoid"])
def test_a_broken_fused_pointwise_backward_changes_the_replayed_gradient(monkeypatch, primitive):
    """The negative control of the bit test above: it catches a fused VJP off by a part in a
    billion in the gate's cotangent."""
    model = _moved_gpas()
    taped, _ = taped_and_replayed(model)
    defined = PRIMITIVES[primitive]

    def off_by_a_little(dout, residuals):
        first, gate_term, *rest = defined.vjp(dout, residuals)  # the scale's, or the gate's
        return (first, gate_term * (1 + 1e-9), *rest)

    monkeypatch.setitem(PRIMITIVES, primitive, defined._replace(vjp=off_by_a_little))
    x, dy, memory = model.sample_inputs(seed=1)
    broken = model.value_and_grad(x, dy, memory)
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.gate"], broken[1]["layers.0.gate"])


def test_a_replay_runs_a_swapped_stop_gradient_unfused(monkeypatch):
    """A stop_gradient that lets the gradient through is the one a replay calls: its fused
    step stands for the one lnref defines."""
    model = _moved_gpas()
    taped_as_defined, _ = taped_and_replayed(model)
    defined = PRIMITIVES["stop_gradient"]
    monkeypatch.setitem(PRIMITIVES, "stop_gradient", defined._replace(vjp=lambda dout, _: (dout,)))
    x, dy, memory = model.sample_inputs(seed=1)
    replayed = model.value_and_grad(x, dy, memory)
    taping = _moved_gpas()
    taped = taping.value_and_grad(x, dy, memory)  # its first pass, with the swapped one: taped
    for name in taped[1]:
        np.testing.assert_array_equal(taped[1][name], replayed[1][name], err_msg=name)
    assert not np.array_equal(taped_as_defined[1]["layers.0.attn.wq"], replayed[1]["layers.0.attn.wq"])
