"""The Sinkhorn primitive of mHC: the rounds exp, then row and column divisions, run in one
call, with the bits of the same rounds composed of ops on the tape and their gradient; the
loop twins against the NumPy twins; the sums after the last round; the refusals; and a broken
VJP caught by finite differences.

The twins are chosen through the seam (``seam.forced``), the primitive swapped in the registry.
"""

import numpy as np
import pytest

import lnref
from lnref.autograd import PRIMITIVES, Tape, Tensor, ops
from lnref.autograd.kernels import seam
from lnref.autograd.kernels import sinkhorn as sinkhorn_kernels
from lnref.gradcheck import check_vjp

SIZES = (2, 3, 4, 5)
ITERATIONS = (1, 3, 20)
PATHS = ("reference", "loop")
KERNELS = ("sinkhorn_forward", "sinkhorn_backward")


def composed(logits, iterations):
    """The rounds as mHC wrote them before the primitive: one op per exp, sum and division."""
    m = ops.exp(logits)
    for _ in range(iterations):
        m = m / ops.sum(m, axis=-1, keepdims=True)
        m = m / ops.sum(m, axis=-2, keepdims=True)
    return m


def fused(logits, iterations):
    return ops.sinkhorn(logits, iterations=iterations)


def logits_and_cotangent(n, shape=(2, 3), seed=0, dtype=np.float64):
    rng = np.random.default_rng([seed, n])
    logits = rng.standard_normal((*shape, n, n)).astype(dtype)
    return logits, rng.standard_normal(logits.shape).astype(dtype)


def value_and_gradient(fn, logits, dm, iterations):
    leaf = Tensor(logits, requires_grad=True)
    with Tape() as tape:
        out = fn(leaf, iterations)
    tape.backward(out, dm)
    return out.value, leaf.grad_or_zeros()


def assert_close_relative(actual, expected, rtol):
    """Equal up to ``rtol`` relative to the largest magnitude of ``expected``."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * float(np.abs(expected).max()))


def twin_pair(name):
    twin = seam.twin(name)
    return twin.loop, twin.reference


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("iterations", ITERATIONS)
@pytest.mark.parametrize("n", SIZES)
def test_the_forward_has_the_bits_of_the_rounds_composed_on_the_tape(n, iterations, path):
    logits, _ = logits_and_cotangent(n)
    with seam.forced(path, *KERNELS):
        np.testing.assert_array_equal(fused(logits, iterations).value, composed(logits, iterations).value)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(), (5,), (2, 3)], ids=["one matrix", "rows", "batch and seq"])
@pytest.mark.parametrize("iterations", ITERATIONS)
@pytest.mark.parametrize("n", SIZES)
def test_the_gradient_is_the_tapes_gradient_of_the_composed_rounds(n, iterations, shape, path):
    logits, dm = logits_and_cotangent(n, shape, seed=1)
    expected_value, expected_gradient = value_and_gradient(composed, logits, dm, iterations)
    with seam.forced(path, *KERNELS):
        value, gradient = value_and_gradient(fused, logits, dm, iterations)
    np.testing.assert_array_equal(value, expected_value)
    assert_close_relative(gradient, expected_gradient, rtol=1e-12)


@pytest.mark.parametrize("iterations", ITERATIONS)
@pytest.mark.parametrize("n", SIZES)
def test_the_loop_twins_agree_with_the_numpy_twins(n, iterations):
    logits, dm = (a.reshape(-1, n, n) for a in logits_and_cotangent(n, seed=2))
    (loop_forward, numpy_forward), (loop_backward, numpy_backward) = map(twin_pair, KERNELS)
    m, exp_logits = loop_forward(logits, iterations)
    expected_m, expected_exp_logits = numpy_forward(logits, iterations)
    np.testing.assert_array_equal(exp_logits, expected_exp_logits)
    assert_close_relative(m, expected_m, rtol=1e-12)
    assert_close_relative(loop_backward(dm, exp_logits, iterations), numpy_backward(dm, exp_logits, iterations), 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_loop_forward_gives_each_matrix_of_a_batch_the_bits_it_has_alone(dtype):
    """The loop takes the matrices a lane block at a time; more than two blocks, the last one
    partial, must leave no trace of their neighbours in any matrix's rounds."""
    count = 2 * sinkhorn_kernels.LANES + 3
    logits, _ = logits_and_cotangent(4, shape=(count,), seed=4, dtype=dtype)
    loop_forward, _ = twin_pair("sinkhorn_forward")
    batched, _ = loop_forward(logits, 20)
    alone = np.concatenate([loop_forward(logits[t : t + 1], 20)[0] for t in range(count)])
    np.testing.assert_array_equal(batched, alone)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_loop_backward_gives_each_matrix_of_a_batch_the_bits_it_has_alone(dtype):
    """As the forward: more than two blocks of lanes, the last one partial, and no trace of
    their neighbours in any matrix's gradient."""
    count = 2 * sinkhorn_kernels.LANES + 3
    logits, dm = logits_and_cotangent(4, shape=(count,), seed=4, dtype=dtype)
    (loop_forward, _), (loop_backward, _) = map(twin_pair, KERNELS)
    _, exp_logits = loop_forward(logits, 20)
    batched = loop_backward(dm, exp_logits, 20)
    alone = np.concatenate([loop_backward(dm[t : t + 1], exp_logits[t : t + 1], 20) for t in range(count)])
    np.testing.assert_array_equal(batched, alone)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", SIZES)
def test_in_float32_a_twin_agrees_with_float64_to_float32_precision(n, path):
    logits, dm = (a.reshape(-1, n, n) for a in logits_and_cotangent(n, seed=3))
    exact_forward, exact_backward = (seam.twin(name).reference for name in KERNELS)
    exact_m, exact_exp_logits = exact_forward(logits, 20)
    forward, backward = (seam.twin(name).paths[path] for name in KERNELS)
    m, exp_logits = forward(logits.astype(np.float32), 20)
    gradient = backward(dm.astype(np.float32), exp_logits, 20)
    assert m.dtype == gradient.dtype == np.float32
    rtol = 16 * float(np.finfo(np.float32).eps)
    assert_close_relative(m.astype(np.float64), exact_m, rtol)
    assert_close_relative(gradient.astype(np.float64), exact_backward(dm, exact_exp_logits, 20), rtol)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("iterations", ITERATIONS)
@pytest.mark.parametrize("n", SIZES)
def test_after_the_last_round_the_columns_sum_to_one_to_rounding(n, iterations, path):
    logits, _ = logits_and_cotangent(n, seed=4)
    with seam.forced(path, *KERNELS):
        m = fused(logits, iterations).value
    np.testing.assert_allclose(m.sum(axis=-2), 1.0, rtol=0, atol=n * np.finfo(np.float64).eps)


@pytest.mark.parametrize("n", SIZES)
def test_the_rows_approach_unit_sums_round_after_round(n):
    logits, _ = logits_and_cotangent(n, seed=5)
    errors = [np.abs(fused(logits, iterations).value.sum(axis=-1) - 1).max() for iterations in ITERATIONS]
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", SIZES)
def test_at_mhcs_gated_logits_twenty_rounds_bring_the_rows_to_unit_sums(n, path):
    logits, _ = logits_and_cotangent(n, seed=6)
    with seam.forced(path, *KERNELS):
        m = fused(0.1 * logits, 20).value
    np.testing.assert_allclose(m.sum(axis=-1), 1.0, rtol=0, atol=1e-12)


# ----- refusals ---------------------------------------------------------------------------


def refusal(logits, iterations=20):
    """The message of the one-line ValueError that the primitive raises on ``logits``."""
    with pytest.raises(ValueError) as raised:
        fused(logits, iterations)
    message = str(raised.value)
    assert message.startswith("sinkhorn: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_logits_holding_nan_or_inf_are_refused(bad, path):
    logits, _ = logits_and_cotangent(4)
    logits[1, 2, 0, 3] = bad
    with seam.forced(path, *KERNELS):
        assert "logits hold NaN or inf" in refusal(logits)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "where,value", [((..., 0, 1), 800.0), ((..., 2), -800.0)], ids=["an exp overflows", "a column's exps all underflow"]
)
def test_a_row_or_column_whose_sum_overflows_or_underflows_is_refused(where, value, path):
    logits, _ = logits_and_cotangent(4)
    logits[where] = value
    with seam.forced(path, *KERNELS):
        assert "sum is 0 or not finite" in refusal(logits)


@pytest.mark.parametrize("path", PATHS)
def test_a_matrix_whose_column_underflows_past_the_first_block_of_lanes_is_refused(path):
    logits, _ = logits_and_cotangent(4, shape=(sinkhorn_kernels.LANES + 3,))
    logits[sinkhorn_kernels.LANES + 1, :, 2] = -800.0
    with seam.forced(path, *KERNELS):
        assert "sum is 0 or not finite" in refusal(logits)


@pytest.mark.parametrize("path", PATHS)
def test_a_nonfinite_logit_is_named_though_an_earlier_matrix_overflows(path):
    """Every logit is checked before the first round, by both twins."""
    logits, _ = logits_and_cotangent(4, shape=(sinkhorn_kernels.LANES + 3,))
    logits[0, 0, 1] = 800.0
    logits[sinkhorn_kernels.LANES + 1, 2, 3] = np.nan
    with seam.forced(path, *KERNELS):
        assert "logits hold NaN or inf" in refusal(logits)


@pytest.mark.parametrize("iterations", [0, -1, 2.5, True])
def test_fewer_than_one_round_or_a_count_that_is_not_an_integer_is_refused(iterations):
    logits, _ = logits_and_cotangent(3)
    assert "iterations must be an integer >= 1" in refusal(logits, iterations)


@pytest.mark.parametrize("shape", [(2, 3, 4), (4, 5), (4,)])
def test_logits_whose_last_two_axes_are_not_a_square_are_refused(shape):
    assert "square" in refusal(np.zeros(shape))


# ----- the VJP against finite differences -----------------------------------------------------


def twenty_rounds(logits):
    return ops.sinkhorn(logits, iterations=20)


def test_the_vjp_passes_the_finite_difference_check():
    logits, _ = logits_and_cotangent(4, seed=7)
    assert [c.status for c in check_vjp(twenty_rounds, logits, seed=8)] == ["passed"]


def test_a_vjp_off_by_one_part_in_a_million_fails_the_finite_difference_check(monkeypatch):
    vjp = PRIMITIVES["sinkhorn"].vjp

    def scaled(dout, residuals):
        return tuple(g * (1 + 1e-6) for g in vjp(dout, residuals))

    monkeypatch.setitem(PRIMITIVES, "sinkhorn", PRIMITIVES["sinkhorn"]._replace(vjp=scaled))
    logits, _ = logits_and_cotangent(4, seed=7)
    # Ten times the checker's float64 rtol (1e-7), far above the noise of smooth rounds.
    assert [c.status for c in check_vjp(twenty_rounds, logits, seed=8)] == ["failed"]


# ----- in mHC ---------------------------------------------------------------------------------


def test_mhc_mixes_its_copies_with_one_sinkhorn_call_per_sublayer(monkeypatch):
    calls = []
    original = PRIMITIVES["sinkhorn"]

    def counted(*args, **params):
        calls.append(params["iterations"])
        return original.forward(*args, **params)

    monkeypatch.setitem(PRIMITIVES, "sinkhorn", original._replace(forward=counted))
    model = lnref.build("mhc", 3, d_model=8, n_heads=2, d_ff=16)
    model(model.sample_inputs()[0])
    assert calls == [20] * 6  # attention and FFN in each of 3 layers
