"""The gated linear map alpha (x w) + b (``ops.scaled_linear``), what gives mHC's mixing
weights from its streams: its value against the product, scaling and sum it stands for, its
VJP against finite differences and the tape's gradient of that composition, the inputs it
refuses, and a negative control. The bits are the NumPy twin's; the loop twin, which gives its
own, is held to them in ``test_scaled_linear_kernels.py``."""

import numpy as np
import pytest
from tape_helpers import tape_gradients

from lnref.autograd import PRIMITIVES, ops
from lnref.autograd.kernels import seam
from lnref.autograd.primitive import Primitive
from lnref.gradcheck import check_vjp

KERNELS = ("scaled_linear_forward", "scaled_linear_backward")
PATHS = pytest.mark.parametrize("path", ["reference", "loop"])


def inputs(q=4, b_shape=None, seed=0):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((2, 3, 5)), rng.standard_normal((5, q))
    return x, w, np.asarray(rng.standard_normal()), rng.standard_normal(b_shape or (q,))


def composed(x, w, alpha, b):
    return alpha * ops.matmul(x, w) + ops.reshape(b, shape=(w.shape[-1],))


@pytest.mark.parametrize("b_shape", [(4,), (2, 2)], ids=["vector", "matrix"])
def test_the_value_has_the_bits_of_the_product_scaling_and_sum(b_shape):
    args = inputs(b_shape=b_shape)
    with seam.forced("reference", *KERNELS):
        np.testing.assert_array_equal(ops.scaled_linear(*args).value, composed(*args).value)


@PATHS
@pytest.mark.parametrize("b_shape", [(4,), (2, 2)], ids=["vector", "matrix"])
def test_scaled_linear_vjp_against_finite_differences(b_shape, path):
    with seam.forced(path, *KERNELS):
        checks = check_vjp(ops.scaled_linear, *inputs(b_shape=b_shape, seed=1))
    assert len(checks) == 4 and all(c.status == "passed" for c in checks), checks


@PATHS
def test_the_gradient_equals_the_tapes_gradient_of_the_composition(path):
    args = inputs(seed=2)
    dy = np.random.default_rng(3).standard_normal((2, 3, 4))
    with seam.forced(path, *KERNELS):
        gradients = tape_gradients(ops.scaled_linear, args, dy)

    for got, want in zip(gradients, tape_gradients(composed, args, dy)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "args",
    [
        (np.ones((2, 5)), np.ones((4, 3)), np.asarray(1.0), np.ones(3)),  # x and w do not multiply
        (np.ones((2, 5)), np.ones((5, 3)), np.ones(2), np.ones(3)),  # alpha not a scalar
        (np.ones((2, 5)), np.ones((5, 3)), np.asarray(1.0), np.ones(4)),  # b of another size
        (np.ones((2, 5)), np.ones((5, 3), np.float32), np.asarray(1.0), np.ones(3)),  # two dtypes
    ],
    ids=["product", "alpha", "b", "dtypes"],
)
def test_inputs_that_do_not_fit_are_refused_in_one_line_naming_the_op(args):
    with pytest.raises(ValueError, match=r"^scaled_linear: [^\n]*$"):
        ops.scaled_linear(*args)


def test_a_vjp_that_drops_the_gain_s_gradient_fails_the_check(monkeypatch):
    defined = PRIMITIVES["scaled_linear"]

    def broken_vjp(dout, residuals):
        dx, dw, dalpha, db = defined.vjp(dout, residuals)
        return dx, dw, np.zeros_like(dalpha), db

    monkeypatch.setitem(PRIMITIVES, "scaled_linear", Primitive("scaled_linear", defined.forward, broken_vjp))
    checks = check_vjp(ops.scaled_linear, *inputs(seed=4))
    assert [c.status for c in checks] == ["passed", "passed", "failed", "passed"]


@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_with_a_sigmoid_the_value_has_the_bits_of_the_gain_times_the_sigmoid(gain):
    args = inputs(seed=5)
    composed_gate = ops.sigmoid(composed(*args))
    expected = composed_gate if gain == 1.0 else gain * composed_gate
    with seam.forced("reference", *KERNELS):
        value = ops.scaled_linear(*args, activation="sigmoid", gain=gain).value
    np.testing.assert_array_equal(value, expected.value)


@PATHS
def test_with_a_sigmoid_and_a_gain_the_vjp_passes_finite_differences(path):
    with seam.forced(path, *KERNELS):
        checks = check_vjp(lambda *a: ops.scaled_linear(*a, activation="sigmoid", gain=2.0), *inputs(seed=6))
    assert len(checks) == 4 and all(c.status == "passed" for c in checks), checks


@pytest.mark.parametrize("params", [{"activation": "tanh"}, {"gain": 2.0}], ids=["activation", "gain alone"])
def test_an_unknown_activation_or_a_gain_without_one_is_refused(params):
    with pytest.raises(ValueError, match=r"^scaled_linear: [^\n]*$"):
        ops.scaled_linear(*inputs(), **params)
