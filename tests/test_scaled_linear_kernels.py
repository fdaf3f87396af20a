"""The kernels of the gated linear map alpha (x w) + b, optionally gain sigmoid(.)
(``kernels.scaled_linear_*``): the loop twin against the NumPy twin over shapes, flags and
dtypes, with negative controls; the rule that picks between them; the sigmoid at large
logits; the inputs the public kernels refuse. The primitive above them is tested, on both
paths, in ``test_scaled_linear.py``.

Runs with and without the JIT (``NUMBA_DISABLE_JIT=1``): the shapes are small.
"""

import numpy as np
import pytest

from lnref.autograd import kernels as K
from lnref.autograd.kernels import seam
from lnref.autograd.kernels.scaled_linear import LOOP_PAYS_UP_TO

FORWARD, BACKWARD = "scaled_linear_forward", "scaled_linear_backward"
# Relative to each output's largest magnitude: float64 differs in the order of additions only;
# float32's NumPy twin rounds every step to float32, the loop accumulates in float64.
RTOL = {np.float64: 1e-12, np.float32: 1e-5}

SHAPES = {
    "mhc H_pre": ((2, 8, 64), 4),
    "mhc H_res": ((2, 8, 64), 16),
    "one row": ((64,), 4),
    "one row 2-D": ((1, 7), 3),
    "q = 1": ((3, 5, 6), 1),
}
GATES = {"no sigmoid": (False, 1.0), "sigmoid": (True, 1.0), "sigmoid, gain 2": (True, 2.0)}


def arguments(x_shape, q, dtype=np.float64, seed=0):
    """``(x, w, alpha, b, dy)`` of ``dtype``, the logits alpha (x w) + b of order 1."""
    rng = np.random.default_rng(seed)
    p = x_shape[-1]
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((p, q)) / np.sqrt(p)
    alpha, b = np.asarray(0.7), rng.standard_normal(q)
    dy = rng.standard_normal((*x_shape[:-1], q))
    return tuple(np.asarray(a, dtype) for a in (x, w, alpha, b, dy))


def assert_agree(loop_out, reference_out, rtol):
    """Each output of one shape and dtype and equal up to ``rtol`` of its largest magnitude."""
    assert len(loop_out) == len(reference_out)
    for got, want in zip(loop_out, reference_out):
        if want is None:
            assert got is None
            continue
        assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
        scale = max(float(np.abs(want).max(initial=0.0)), np.finfo(np.float64).tiny)
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


def assert_loop_agrees_with_reference(x, w, alpha, b, dy, sigmoid, gain):
    """The loop twins (as the seam holds them) against the NumPy twins, forward and backward;
    each backward at its own forward's ``z`` and gate."""
    forward, backward = seam.twin(FORWARD), seam.twin(BACKWARD)
    rtol = RTOL[x.dtype.type]
    expected = forward.reference(x, w, alpha, b, sigmoid, gain)
    got = forward.loop(x, w, alpha, b, sigmoid, gain)
    assert_agree(got, expected, rtol)
    _, z, gate = expected
    assert_agree(
        backward.loop(dy, x, w, alpha, z, gate, gain), backward.reference(dy, x, w, alpha, z, gate, gain), rtol
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("gates", GATES.values(), ids=GATES.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_the_loop_twins_agree_with_the_numpy_twins(shape, gates, dtype):
    x, w, alpha, b, dy = arguments(*shape, dtype=dtype)
    assert_loop_agrees_with_reference(x, w, alpha, b, dy, *gates)


def _with_columns_swapped(loop):
    def broken(x, w, *rest):
        return loop(x, np.ascontiguousarray(w[:, ::-1]), *rest)

    return broken


def _with_rows_swapped(loop):
    def broken(dy, *rest):
        return loop(np.ascontiguousarray(dy[::-1]), *rest)

    return broken


@pytest.mark.parametrize(
    "name, breaking", [(FORWARD, _with_columns_swapped), (BACKWARD, _with_rows_swapped)], ids=["forward", "backward"]
)
def test_the_agreement_check_catches_a_loop_twin_reading_a_swapped_index(monkeypatch, name, breaking):
    twin = seam.twin(name)
    monkeypatch.setattr(twin, "loop", breaking(twin.loop))
    with pytest.raises(AssertionError):
        assert_loop_agrees_with_reference(*arguments((2, 3, 8), 4), True, 2.0)


def test_the_loop_twins_give_each_row_the_bits_it_has_alone():
    x, w, alpha, b, dy = arguments((5, 12), 4, seed=1)
    forward, backward = seam.twin(FORWARD).loop, seam.twin(BACKWARD).loop
    y, z, gate = forward(x, w, alpha, b, True, 1.0)
    dx = backward(dy, x, w, alpha, z, gate, 1.0)[0]
    for r in range(len(x)):
        y_r, z_r, gate_r = forward(x[r : r + 1], w, alpha, b, True, 1.0)
        np.testing.assert_array_equal(y_r, y[r : r + 1])
        np.testing.assert_array_equal(
            backward(dy[r : r + 1], x[r : r + 1], w, alpha, z_r, gate_r, 1.0)[0], dx[r : r + 1]
        )


@pytest.mark.parametrize("path", ["reference", "loop"])
def test_the_sigmoid_of_logits_far_from_zero_is_0_or_1_without_overflow(path):
    x, w = np.ones((2, 3)), np.ones((3, 2))
    b = np.array([1e4, -1e4])  # alpha (x w) = 3, far below either logit
    forward = seam.twin(FORWARD).paths[path]
    with np.errstate(over="raise", invalid="raise"):  # e^-|a| may underflow to 0, as meant
        y, _, gate = forward(x, w, np.asarray(1.0), b, True, 2.0)
    np.testing.assert_array_equal(gate, [[1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(y, 2.0 * gate)


def _implementations_run(x_shape, q):
    """The implementation each kernel ran for one forward and backward at these sizes."""
    ran = {}

    def record(twin, implementation):
        def run(*args):
            ran[twin.name] = implementation
            return implementation(*args)

        return run

    x, w, alpha, b, dy = arguments(x_shape, q)
    with seam.wrapped(record):
        y, kept = K.scaled_linear_forward(x, w, alpha, b, True)
        K.scaled_linear_backward(dy, kept)
    return ran


@pytest.mark.skipif(not K.USE_NUMBA, reason="the rule picks the loops only with Numba")
def test_the_rule_runs_the_loops_up_to_the_limit_and_numpy_past_it():
    forward, backward = seam.twin(FORWARD), seam.twin(BACKWARD)
    assert LOOP_PAYS_UP_TO == 16 * 64 * 16  # the small model's map into mHC's n^2 weights
    at_limit = _implementations_run((2, 8, 64), 16)
    assert at_limit == {FORWARD: forward.loop, BACKWARD: backward.loop}
    past = _implementations_run((2, 8, 65), 16)
    assert past == {FORWARD: forward.reference, BACKWARD: backward.reference}


@pytest.mark.skipif(K.USE_NUMBA, reason="without Numba every size runs the NumPy twins")
def test_without_numba_the_rule_runs_the_numpy_twins_at_every_size():
    forward, backward = seam.twin(FORWARD), seam.twin(BACKWARD)
    assert _implementations_run((2, 8, 64), 4) == {FORWARD: forward.reference, BACKWARD: backward.reference}


@pytest.mark.parametrize("path", ["reference", "loop"])
def test_a_matrix_of_biases_gives_the_bits_of_its_entries_in_row_order(path):
    x, w, alpha, b, dy = arguments((2, 3, 5), 4)
    with seam.forced(path, FORWARD, BACKWARD):
        y, kept = K.scaled_linear_forward(x, w, alpha, b)
        y_matrix, kept_matrix = K.scaled_linear_forward(x, w, alpha, b.reshape(2, 2))
        grads, grads_matrix = K.scaled_linear_backward(dy, kept), K.scaled_linear_backward(dy, kept_matrix)
    np.testing.assert_array_equal(y_matrix, y)
    for got, want in zip(grads_matrix[:3], grads[:3]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(grads_matrix[3], grads[3].reshape(2, 2))


BAD_SHAPES = {
    "x and w do not multiply": (np.ones((2, 5)), np.ones((4, 3)), np.asarray(1.0), np.ones(3)),
    "w not a matrix": (np.ones((2, 5)), np.ones(5), np.asarray(1.0), np.ones(1)),
    "alpha not a scalar": (np.ones((2, 5)), np.ones((5, 3)), np.ones(1), np.ones(3)),
    "b of another size": (np.ones((2, 5)), np.ones((5, 3)), np.asarray(1.0), np.ones(4)),
}


@pytest.mark.parametrize("args", BAD_SHAPES.values(), ids=BAD_SHAPES.keys())
def test_shapes_that_do_not_fit_are_refused_naming_every_shape(args):
    with pytest.raises(ValueError, match=r"^shapes do not fit: x \S.*, w .*, alpha .*, b .*$"):
        K.scaled_linear_forward(*args)


@pytest.mark.parametrize(
    "args",
    [
        (np.ones((2, 5)), np.ones((5, 3), np.float32), np.asarray(1.0), np.ones(3)),
        (np.ones((2, 5), int), np.ones((5, 3), int), np.asarray(1), np.ones(3, int)),
    ],
    ids=["two dtypes", "integers"],
)
def test_mixed_or_integer_dtypes_are_refused(args):
    with pytest.raises(TypeError, match="float"):
        K.scaled_linear_forward(*args)


def test_a_cotangent_of_another_shape_is_refused():
    x, w, alpha, b, dy = arguments((2, 3, 5), 4)
    _, kept = K.scaled_linear_forward(x, w, alpha, b)
    with pytest.raises(ValueError, match="cotangent of shape"):
        K.scaled_linear_backward(dy[:, :2], kept)
