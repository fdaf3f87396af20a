"""The step on the unit sphere, ||  ||a|| + |c t| (||b|| - ||a||)  || (``ops.normalized_lerp``):
its value against the composition of L2 normalizations it stands for, its VJP against finite
differences and against the tape's gradient of that composition, its loop twin against its
NumPy twin, the inputs it refuses, and a negative control."""

import numpy as np
import pytest
from tape_helpers import tape_gradients

from lnref.autograd import PRIMITIVES, ops
from lnref.autograd.kernels import seam
from lnref.autograd.primitive import Primitive
from lnref.gradcheck import check_vjp

TWIN_RTOL = 1e-12


def inputs(shape=(2, 3, 8), seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    return a, b, rng.standard_normal(shape[-1:]).astype(dtype)


def composition(a, b, t, c):
    """The primitives the step stands for, in the order nGPT's update writes them."""
    u = ops.l2_normalize(a)
    return ops.l2_normalize(u + ops.absolute(t * c) * (ops.l2_normalize(b) - u))


@pytest.mark.parametrize("c", [1.0, 0.2, -3.0])
def test_the_step_gives_the_bits_of_the_composition_of_l2_normalizations(c):
    a, b, t = inputs()
    np.testing.assert_array_equal(ops.normalized_lerp(a, b, t, rate_scale=c).value, composition(a, b, t, c).value)


def test_the_step_lands_on_the_unit_sphere_between_the_two_directions():
    a, b, _ = inputs(seed=1)
    for rate, expected in ((0.0, a), (1.0, b)):
        y = ops.normalized_lerp(a, b, np.full(a.shape[-1], rate)).value
        np.testing.assert_allclose(y, expected / np.linalg.norm(expected, axis=-1, keepdims=True), rtol=1e-14)


def test_normalized_lerp_vjp_against_finite_differences():
    checks = check_vjp(lambda a, b, t: ops.normalized_lerp(a, b, t, rate_scale=0.7), *inputs(seed=2))
    assert len(checks) == 3 and all(c.status == "passed" for c in checks), checks


def test_the_gradient_equals_the_tapes_gradient_of_the_composition():
    a, b, t = inputs(seed=3)
    dy = np.random.default_rng(4).standard_normal(a.shape)

    fused = tape_gradients(lambda a, b, t: ops.normalized_lerp(a, b, t, rate_scale=-0.4), (a, b, t), dy)
    composed = tape_gradients(lambda a, b, t: composition(a, b, t, -0.4), (a, b, t), dy)
    for x, y in zip(fused, composed):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, TWIN_RTOL), (np.float32, 1e-5)])
def test_the_loop_twins_match_the_numpy_twins(dtype, rtol):
    a, b, t = (v.reshape(-1, v.shape[-1]) if v.ndim > 1 else v for v in inputs(seed=5, dtype=dtype))
    tiny = float(np.finfo(dtype).tiny)
    forward, backward = seam.twin("normalized_lerp_forward"), seam.twin("normalized_lerp_backward")
    looped, referenced = forward.loop(a, b, t, 0.3, tiny), forward.reference(a, b, t, 0.3, tiny)
    for x, y in zip(looped, referenced):
        np.testing.assert_allclose(x, y, rtol=rtol)
    dy = np.random.default_rng(6).standard_normal(a.shape).astype(dtype)
    norms = referenced[1]
    for x, y in zip(backward.loop(dy, a, b, t, 0.3, norms), backward.reference(dy, a, b, t, 0.3, norms)):
        assert x.shape == y.shape and x.dtype == y.dtype == dtype
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.abs(y).max()))


def zero_row(which):
    a, b, t = inputs()
    if which == "landing":  # u and v opposite, half way: the step lands on 0
        b, t = -a, np.full(a.shape[-1], 0.5)
    else:
        (a if which == "a" else b)[0, 1] = 0.0
    return a, b, t


@pytest.mark.parametrize("which", ["a", "b", "landing"])
def test_a_row_of_norm_0_is_refused_in_one_line_on_every_path(which):
    for path in ("loop", "reference"):
        with seam.forced(path, "normalized_lerp_forward"):
            with pytest.raises(ValueError, match=r"^normalized_lerp: a vector of norm 0 has no direction[^\n]*$"):
                ops.normalized_lerp(*zero_row(which))


@pytest.mark.parametrize(
    "a,b,t",
    [
        (np.ones((2, 3)), np.ones((2, 4)), np.ones(3)),  # a and b of two shapes
        (np.ones((2, 3)), np.ones((1, 6)), np.ones(3)),  # ... of one size
        (np.ones((2, 3)), np.ones((2, 3)), np.ones(2)),  # a rate per feature of another width
        (np.ones((2, 3)), np.ones((2, 3), np.float32), np.ones(3)),  # two dtypes
        (np.array([[1.0, np.nan]]), np.ones((1, 2)), np.ones(2)),  # a NaN
    ],
    ids=["shapes", "sizes", "rate", "dtypes", "nan"],
)
def test_inputs_that_do_not_fit_are_refused_in_one_line_naming_the_op(a, b, t):
    with pytest.raises(ValueError, match=r"^normalized_lerp: [^\n]*$"):
        ops.normalized_lerp(a, b, t)


def test_a_vjp_that_drops_the_rates_sign_fails_the_check(monkeypatch):
    defined = PRIMITIVES["normalized_lerp"]

    def broken_vjp(dout, residuals):
        da, db, drate = defined.vjp(dout, residuals)
        return da, db, np.abs(drate)

    monkeypatch.setitem(PRIMITIVES, "normalized_lerp", Primitive("normalized_lerp", defined.forward, broken_vjp))
    a, b, _ = inputs(seed=7)
    t = np.linspace(-1.0, 1.0, a.shape[-1]) + 0.05  # rates of both signs
    checks = check_vjp(lambda a, b, t: ops.normalized_lerp(a, b, t), a, b, t)
    assert [c.status for c in checks] == ["passed", "passed", "failed"]


def test_a_broken_backward_kernel_fails_the_check():
    defined = seam.twin("normalized_lerp_backward").reference

    def broken(*args):
        da, db, dt = defined(*args)
        return da, db * 1.001, dt

    with seam.replaced("normalized_lerp_backward", broken):
        checks = check_vjp(lambda a, b, t: ops.normalized_lerp(a, b, t), *inputs(seed=8))
    assert [c.status for c in checks] == ["passed", "failed", "passed"]
