"""The weighted sum of streams, sum_k w_k x_k (``ops.weighted_sum``): its value against the
loop of products and sums it stands for, its VJP against finite differences, its loop twin
against its NumPy twin, the inputs it refuses, and a negative control."""

import numpy as np
import pytest
from tape_helpers import tape_gradients

from lnref.autograd import PRIMITIVES, ops
from lnref.autograd.kernels import seam
from lnref.autograd.kernels import weighted_sum as weighted_sum_kernels
from lnref.autograd.primitive import Primitive
from lnref.gradcheck import check_vjp

TWIN_RTOL = 1e-12


def terms(k, shape=(2, 3, 5), seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(k)]


def loop_of_products(weights, xs):
    """The composition the primitive stands for: w_0 x_0 + w_1 x_1 + ..., in that order."""
    total = xs[0] * weights[..., 0, None]
    for k in range(1, len(xs)):
        total = total + xs[k] * weights[..., k, None]
    return total


@pytest.mark.parametrize("k", [1, 2, 5, 49])
def test_one_weight_per_term_gives_the_bits_of_the_loop_of_products_and_sums(k):
    xs, weights = terms(k), np.random.default_rng(1).standard_normal(k)
    np.testing.assert_array_equal(ops.weighted_sum(weights, *xs).value, loop_of_products(weights, xs))


def test_many_large_terms_taken_a_group_at_a_time_give_the_bits_of_the_loop_of_products_and_sums():
    xs, weights = terms(19, shape=(4, 500)), np.random.default_rng(1).standard_normal(19)
    assert 19 * xs[0].size > weighted_sum_kernels.STACK_UP_TO and 19 > weighted_sum_kernels.TERMS_PER_CALL
    np.testing.assert_array_equal(ops.weighted_sum(weights, *xs).value, loop_of_products(weights, xs))


@pytest.mark.parametrize("k", [3, 12])
def test_terms_that_are_not_contiguous_give_the_bits_of_their_contiguous_copies(k):
    xs, weights = [x[:, ::2] for x in terms(k, shape=(2, 6, 5))], np.random.default_rng(1).standard_normal(k)
    assert not xs[0].flags.c_contiguous
    copies = [np.ascontiguousarray(x) for x in xs]
    np.testing.assert_array_equal(ops.weighted_sum(weights, *xs).value, ops.weighted_sum(weights, *copies).value)


def test_many_large_terms_vjp_against_finite_differences():
    xs, weights = terms(10, shape=(4, 500), seed=12), np.random.default_rng(13).standard_normal(10)
    checks = check_vjp(ops.weighted_sum, weights, *xs)
    assert len(checks) == 11 and all(c.status == "passed" for c in checks), checks


def test_one_mixture_per_row_gives_the_bits_of_the_loop_of_products_and_sums():
    xs, weights = terms(4), np.random.default_rng(2).standard_normal((2, 3, 4))
    np.testing.assert_array_equal(ops.weighted_sum(weights, *xs).value, loop_of_products(weights, xs))


@pytest.mark.parametrize("k", [3, 12])
def test_terms_given_stacked_give_the_bits_of_terms_given_separately(k):
    xs, weights = terms(k), np.random.default_rng(1).standard_normal(k)
    stacked = ops.weighted_sum(weights, np.stack(xs), stacked=True).value
    np.testing.assert_array_equal(stacked, ops.weighted_sum(weights, *xs).value)


def test_stacked_terms_vjp_against_finite_differences():
    stacked, weights = np.stack(terms(3, seed=10)), np.random.default_rng(11).standard_normal(3)
    checks = check_vjp(lambda w, x: ops.weighted_sum(w, x, stacked=True), weights, stacked)
    assert len(checks) == 2 and all(c.status == "passed" for c in checks), checks


@pytest.mark.parametrize("weights_shape", [(3,), (2, 4, 3)], ids=["per term", "per row"])
def test_weighted_sum_vjp_against_finite_differences(weights_shape):
    xs = terms(3, shape=(2, 4, 5), seed=3)
    weights = np.random.default_rng(4).standard_normal(weights_shape)
    checks = check_vjp(ops.weighted_sum, weights, *xs)
    assert len(checks) == 4 and all(c.status == "passed" for c in checks), checks


def test_the_gradient_equals_the_tapes_gradient_of_the_loop_of_products():
    xs, weights = terms(5, seed=5), np.random.default_rng(6).standard_normal(5)
    dy = np.random.default_rng(7).standard_normal(xs[0].shape)

    fused = tape_gradients(ops.weighted_sum, (weights, *xs), dy)
    composed = tape_gradients(lambda w, *x: loop_of_products(w, x), (weights, *xs), dy)
    for a, b in zip(fused, composed):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, TWIN_RTOL), (np.float32, 1e-5)])
@pytest.mark.parametrize("rows_of_weights", [1, 6])
@pytest.mark.parametrize("as_tuple,count", [(False, 4), (True, 4), (True, 19)], ids=["stacked", "tuple", "groups"])
def test_the_loop_twins_match_the_numpy_twins(dtype, rtol, rows_of_weights, as_tuple, count):
    rng = np.random.default_rng(8)
    xs = rng.standard_normal((count, 6, 7)).astype(dtype)
    xs = tuple(xs) if as_tuple else xs
    w = rng.standard_normal((rows_of_weights, count)).astype(dtype)
    dy = rng.standard_normal((6, 7)).astype(dtype)
    forward, backward = seam.twin("weighted_sum_forward"), seam.twin("weighted_sum_backward")
    np.testing.assert_allclose(forward.loop(w, xs), forward.reference(w, xs), rtol=rtol, atol=rtol)
    for a, b in zip(backward.loop(dy, w, xs), backward.reference(dy, w, xs)):
        assert a.shape == b.shape and a.dtype == b.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max()))


@pytest.mark.parametrize(
    "weights,xs",
    [
        (np.ones(3), terms(2)),  # three weights, two terms
        (np.ones((2, 2)), terms(2)),  # per-row weights of the wrong leading shape
        (np.ones(2), [np.ones((2, 3)), np.ones((2, 4))]),  # terms of two shapes
        (np.ones(2), terms(2, dtype=np.float32)),  # weights and terms of two dtypes
        (np.ones(0), []),  # no term
        (np.ones(12), terms(12)[:-1] + [np.ones((2, 3))]),  # more terms than a kernel takes at once, one misfit
    ],
    ids=["count", "rows", "shapes", "dtypes", "empty", "many shapes"],
)
def test_weights_and_terms_that_do_not_fit_are_refused_in_one_line_naming_the_op(weights, xs):
    with pytest.raises(ValueError, match=r"^weighted_sum: [^\n]*$"):
        ops.weighted_sum(weights, *xs)


@pytest.mark.parametrize("stack", [np.ones((3, 2, 5)), np.ones(3)], ids=["two arrays", "one axis"])
def test_stacked_terms_that_do_not_fit_are_refused_in_one_line_naming_the_op(stack):
    args = (stack, stack) if stack.ndim == 3 else (stack,)
    with pytest.raises(ValueError, match=r"^weighted_sum: [^\n]*$"):
        ops.weighted_sum(np.ones(3), *args, stacked=True)


def test_a_vjp_that_drops_the_last_term_fails_the_check(monkeypatch):
    defined = PRIMITIVES["weighted_sum"]

    def broken_vjp(dout, residuals):
        dweights, *dxs = defined.vjp(dout, residuals)
        return (dweights, *dxs[:-1], np.zeros_like(dxs[-1]))

    monkeypatch.setitem(PRIMITIVES, "weighted_sum", Primitive("weighted_sum", defined.forward, broken_vjp))
    checks = check_vjp(ops.weighted_sum, np.ones(3), *terms(3, seed=9))
    assert [c.status for c in checks] == ["passed", "passed", "passed", "failed"]
