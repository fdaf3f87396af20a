"""The gated tanh scale tanh(x) + shift (``ops.scaled_tanh``), the form of hyper-connections'
dynamic connections: its value against the tanh, product and sum it stands for, its VJP
against finite differences and the tape's gradient of that composition, the inputs it
refuses, and a negative control."""

import numpy as np
import pytest
from tape_helpers import tape_gradients

from lnref.autograd import PRIMITIVES, ops
from lnref.autograd.primitive import Primitive
from lnref.gradcheck import check_vjp


def inputs(shift_shape=(4,), seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 3, 4)), np.asarray(rng.standard_normal()), rng.standard_normal(shift_shape)


def composed(x, scale, shift):
    return scale * ops.tanh(x) + shift


@pytest.mark.parametrize("shift_shape", [(4,), (3, 4), (2, 3, 4)], ids=["vector", "matrix", "full"])
def test_the_value_has_the_bits_of_the_tanh_product_and_sum(shift_shape):
    args = inputs(shift_shape)
    np.testing.assert_array_equal(ops.scaled_tanh(*args).value, composed(*args).value)


@pytest.mark.parametrize("shift_shape", [(4,), (3, 4)], ids=["vector", "matrix"])
def test_scaled_tanh_vjp_against_finite_differences(shift_shape):
    checks = check_vjp(ops.scaled_tanh, *inputs(shift_shape, seed=1))
    assert len(checks) == 3 and all(c.status == "passed" for c in checks), checks


def test_the_gradient_equals_the_tapes_gradient_of_the_composition():
    args = inputs(seed=2)
    dy = np.random.default_rng(3).standard_normal((2, 3, 4))

    for got, want in zip(tape_gradients(ops.scaled_tanh, args, dy), tape_gradients(composed, args, dy)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "args",
    [
        (np.ones((2, 4)), np.asarray(1.0), np.ones(3)),  # a shift that does not broadcast
        (np.ones((2, 4)), np.asarray(1.0), np.ones((3, 2, 4))),  # a shift that widens x
        (np.ones((2, 4)), np.asarray(1.0, np.float32), np.ones(4)),  # two dtypes
    ],
    ids=["broadcast", "widens", "dtypes"],
)
def test_inputs_that_do_not_fit_are_refused_in_one_line_naming_the_op(args):
    with pytest.raises(ValueError, match=r"^scaled_tanh: [^\n]*$"):
        ops.scaled_tanh(*args)


def test_a_vjp_that_drops_the_scale_s_gradient_fails_the_check(monkeypatch):
    defined = PRIMITIVES["scaled_tanh"]

    def broken_vjp(dout, residuals):
        dx, dscale, dshift = defined.vjp(dout, residuals)
        return dx, np.zeros_like(dscale), dshift

    monkeypatch.setitem(PRIMITIVES, "scaled_tanh", Primitive("scaled_tanh", defined.forward, broken_vjp))
    checks = check_vjp(ops.scaled_tanh, *inputs(seed=4))
    assert [c.status for c in checks] == ["passed", "failed", "passed"]
