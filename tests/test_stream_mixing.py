"""m mixtures of n streams and one more term at once, y_c = sum_i a[i, c] x_i + b[c] s
(``ops.mix_streams``): its value against the weighted sums it stands for, its VJP against
finite differences, its loop twin against its NumPy twin, the inputs it refuses, and a
negative control."""

import numpy as np
import pytest
from tape_helpers import tape_gradients

from lnref.autograd import PRIMITIVES, ops
from lnref.autograd.kernels import seam
from lnref.autograd.primitive import Primitive
from lnref.gradcheck import check_vjp

TWIN_RTOL = 1e-12


def streams(n, shape=(2, 3, 5), seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n)]


def mixing(n, m, rows=(), seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((*rows, n, m)), rng.standard_normal((*rows, m))


def weighted_sums(a, b, s, xs):
    """The composition the primitive stands for: one weighted sum per column, b's term last."""
    return [
        ops.weighted_sum(np.concatenate([a[..., c], b[..., c, None]], axis=-1), *xs, s).value
        for c in range(a.shape[-1])
    ]


@pytest.mark.parametrize("rows", [(), (2, 3)], ids=["shared", "per row"])
def test_all_columns_stacked_give_the_bits_of_one_weighted_sum_per_column(rows):
    xs, s = streams(4), streams(1, seed=2)[0]
    a, b = mixing(4, 3, rows)
    np.testing.assert_array_equal(ops.mix_streams(a, b, s, *xs).value, np.stack(weighted_sums(a, b, s, xs)))


def test_streams_given_stacked_give_the_bits_of_streams_given_separately():
    xs, s = streams(3), streams(1, seed=2)[0]
    a, b = mixing(3, 3)
    separate = ops.mix_streams(a, b, s, *xs).value
    np.testing.assert_array_equal(ops.mix_streams(a, b, s, np.stack(xs), stacked=True).value, separate)


@pytest.mark.parametrize("rows", [(), (2, 4)], ids=["shared", "per row"])
def test_mix_streams_vjp_against_finite_differences(rows):
    xs, s = streams(3, shape=(2, 4, 5), seed=3), streams(1, shape=(2, 4, 5), seed=4)[0]
    a, b = mixing(3, 3, rows, seed=5)
    checks = check_vjp(ops.mix_streams, a, b, s, *xs)
    assert len(checks) == 6 and all(c.status == "passed" for c in checks), checks


def test_stacked_streams_vjp_against_finite_differences():
    stacked, s = np.stack(streams(3, seed=6)), streams(1, seed=7)[0]
    a, b = mixing(3, 2, seed=8)
    checks = check_vjp(lambda *args: ops.mix_streams(*args, stacked=True), a, b, s, stacked)
    assert len(checks) == 4 and all(c.status == "passed" for c in checks), checks


def test_the_gradient_equals_the_tapes_gradient_of_the_weighted_sums():
    xs, s = streams(4, seed=9), streams(1, seed=10)[0]
    a, b = mixing(4, 4, seed=11)
    dy = np.random.default_rng(12).standard_normal((4, *s.shape))
    arrays = (a, b, s, *xs)

    def composed(a, b, s, *xs):
        columns = [
            ops.weighted_sum(ops.concatenate(a[:, c], ops.reshape(b[c], shape=(1,)), axis=0), *xs, s) for c in range(4)
        ]
        return ops.concatenate(*(ops.reshape(y, shape=(1, *s.shape)) for y in columns), axis=0)

    for got, want in zip(tape_gradients(ops.mix_streams, arrays, dy), tape_gradients(composed, arrays, dy)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, TWIN_RTOL), (np.float32, 1e-5)])
@pytest.mark.parametrize("rows", [(), (6,)], ids=["shared", "per row"])
def test_the_loop_twins_match_the_numpy_twins(dtype, rtol, rows):
    rng = np.random.default_rng(13)
    xs = tuple(rng.standard_normal((6, 7)).astype(dtype) for _ in range(4))
    s = rng.standard_normal((6, 7)).astype(dtype)
    a, b = (v.astype(dtype) for v in mixing(4, 3, rows, seed=14))
    dy = rng.standard_normal((3, 6, 7)).astype(dtype)
    forward, backward = seam.twin("mix_streams_forward"), seam.twin("mix_streams_backward")
    np.testing.assert_allclose(forward.loop(a, b, s, xs), forward.reference(a, b, s, xs), rtol=rtol)
    for got, want in zip(backward.loop(dy, a, b, s, xs), backward.reference(dy, a, b, s, xs)):
        assert got.shape == want.shape and got.dtype == want.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))


@pytest.mark.parametrize(
    "args,params",
    [
        ((*mixing(3, 2), np.ones((2, 3, 5)), *streams(2)), {}),  # three rows of a, two streams
        ((*mixing(2, 2, (4,)), np.ones((2, 3, 5)), *streams(2)), {}),  # per-row mixing of the wrong rows
        ((*mixing(2, 2), np.ones((2, 3, 4)), *streams(2)), {}),  # s of another shape
        ((*mixing(2, 2), np.ones((2, 3, 5), np.float32), *streams(2)), {}),  # two dtypes
        ((*mixing(2, 2), np.ones((2, 3, 5))), {}),  # no stream
        ((*mixing(2, 2), np.ones((2, 3, 5)), *streams(2)), {"stacked": True}),  # two arrays given as one stack
    ],
    ids=["count", "rows", "shapes", "dtypes", "empty", "stacked"],
)
def test_inputs_that_do_not_fit_are_refused_in_one_line_naming_the_op(args, params):
    with pytest.raises(ValueError, match=r"^mix_streams: [^\n]*$"):
        ops.mix_streams(*args, **params)


def test_a_vjp_that_drops_the_last_streams_gradient_fails_the_check(monkeypatch):
    defined = PRIMITIVES["mix_streams"]

    def broken_vjp(dout, residuals):
        *grads, last = defined.vjp(dout, residuals)
        return (*grads, np.zeros_like(last))

    monkeypatch.setitem(PRIMITIVES, "mix_streams", Primitive("mix_streams", defined.forward, broken_vjp))
    checks = check_vjp(ops.mix_streams, *mixing(2, 2, seed=15), streams(1, seed=16)[0], *streams(2, seed=17))
    assert [c.status for c in checks] == ["passed"] * 4 + ["failed"]


def test_a_broken_backward_kernel_fails_the_check():
    def broken(dy, a, b, s, xs):
        da, db, ds, dxs = seam.twin("mix_streams_backward").reference(dy, a, b, s, xs)
        return da, db * 2, ds, dxs

    with seam.replaced("mix_streams_backward", broken):
        checks = check_vjp(ops.mix_streams, *mixing(2, 2, seed=18), streams(1, seed=19)[0], *streams(2, seed=20))
    assert [c.status for c in checks] == ["passed", "failed", "passed", "passed", "passed"]


def test_transposed_weights_give_the_bits_of_the_weights_transposed_first():
    xs, s = streams(3), streams(1, seed=21)[0]
    a, b = mixing(3, 3, (2, 3), seed=22)
    transposed = ops.mix_streams(np.swapaxes(a, -1, -2).copy(), b, s, *xs, transpose=True).value
    np.testing.assert_array_equal(transposed, ops.mix_streams(a, b, s, *xs).value)


def test_transposed_weights_vjp_against_finite_differences():
    xs, s = streams(3, seed=23), streams(1, seed=24)[0]
    a, b = mixing(3, 3, (2, 3), seed=25)
    checks = check_vjp(lambda *args: ops.mix_streams(*args, transpose=True), a, b, s, *xs)
    assert len(checks) == 6 and all(c.status == "passed" for c in checks), checks
