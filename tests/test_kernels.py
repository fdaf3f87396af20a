"""Tests of the fused kernels in ``lnref.autograd.kernels``.

Each Numba loop kernel is checked against its NumPy twin, both are checked
against central finite differences of their own forward (with a deliberately
broken backward as a negative control), and the numerically hard inputs
(constant rows, 1e8 offsets, +-1e4 logits, causal masks) get their own tests.

Runs with and without the JIT (``NUMBA_DISABLE_JIT=1``): loop kernels are only
called on small shapes, so pure-Python execution stays fast.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnref.autograd import kernels as K

EPS = 1e-5
TWIN_RTOL = 1e-12


# ----- helpers ----------------------------------------------------------------------


def rng_for(*key):
    """A generator seeded from ``key`` (stable across processes, unlike ``hash``)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def assert_twins_agree(loop_out, ref_out, rtol=TWIN_RTOL):
    """Equal up to ``rtol`` relative to each output's largest magnitude."""
    if isinstance(ref_out, np.ndarray):
        loop_out, ref_out = (loop_out,), (ref_out,)
    assert len(loop_out) == len(ref_out)
    for a, b in zip(loop_out, ref_out):
        assert a.shape == b.shape and a.dtype == b.dtype
        scale = max(float(np.abs(b).max()), np.finfo(np.float64).tiny)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def ln_inputs(rng, n, d, dtype=np.float64):
    x = rng.standard_normal((n, d)).astype(dtype)
    gamma = (1.0 + 0.5 * rng.standard_normal(d)).astype(dtype)
    beta = rng.standard_normal(d).astype(dtype)
    dy = rng.standard_normal((n, d)).astype(dtype)
    return x, gamma, beta, dy


def attention_inputs(rng, shape_q, s_len, dtype=np.float64):
    b, h, t, dh = shape_q
    q = rng.standard_normal((b, h, t, dh)).astype(dtype)
    k = rng.standard_normal((b, h, s_len, dh)).astype(dtype)
    v = rng.standard_normal((b, h, s_len, dh)).astype(dtype)
    dout = rng.standard_normal((b, h, t, dh)).astype(dtype)
    return q, k, v, dout


def fd_check(loss, inputs, grads, rng, h=1e-6, rtol=1e-6):
    """Central finite differences of ``loss`` along a random direction, per input.

    Returns one bool per input: does ``<grad, u>`` match
    ``(loss(a + h u) - loss(a - h u)) / 2h`` for a random direction ``u``, up
    to ``rtol`` plus the rounding error of the difference quotient itself
    (about ``eps * |loss| / h``)?
    """
    roundoff = 64 * np.finfo(np.float64).eps * (abs(loss(*inputs)) + 1.0) / h
    matches = []
    for i, (a, grad) in enumerate(zip(inputs, grads)):
        u = rng.standard_normal(a.shape)
        plus = list(inputs)
        minus = list(inputs)
        plus[i] = a + h * u
        minus[i] = a - h * u
        numeric = (loss(*plus) - loss(*minus)) / (2 * h)
        analytic = float(np.sum(grad * u))
        matches.append(abs(numeric - analytic) <= rtol * max(abs(numeric), abs(analytic)) + roundoff)
    return matches


# The two twins of every kernel, for tests that must hold for both.
IMPLS = {
    "loop": {
        "ln_fwd": K._layer_norm_forward_loop,
        "ln_bwd": K._layer_norm_backward_loop,
        "rms_fwd": K._rms_norm_forward_loop,
        "rms_bwd": K._rms_norm_backward_loop,
        "sm_fwd": K._softmax_forward_loop,
        "sm_bwd": K._softmax_backward_loop,
        "att_fwd": K._attention_forward_loop,
        "att_bwd": K._attention_backward_loop,
        "gelu_fwd": K._gelu_forward_loop,
        "gelu_bwd": K._gelu_backward_loop,
    },
    "reference": {
        "ln_fwd": K.layer_norm_forward_reference,
        "ln_bwd": K.layer_norm_backward_reference,
        "rms_fwd": K.rms_norm_forward_reference,
        "rms_bwd": K.rms_norm_backward_reference,
        "sm_fwd": K.softmax_forward_reference,
        "sm_bwd": K.softmax_backward_reference,
        "att_fwd": K.attention_forward_reference,
        "att_bwd": K.attention_backward_reference,
        "gelu_fwd": K.gelu_forward_reference,
        "gelu_bwd": K.gelu_backward_reference,
    },
}
both_impls = pytest.mark.parametrize("impl", sorted(IMPLS))

ROW_SHAPES = [(64, 16), (7, 3), (5, 33), (1, 2), (3, 8)]
ATTENTION_CASES = [  # (B, H, T, Dh), S, causal
    ((2, 2, 8, 8), 8, False),
    ((2, 2, 8, 8), 8, True),
    ((1, 3, 5, 4), 7, False),
    ((2, 1, 6, 3), 6, True),
    ((1, 1, 1, 5), 1, True),
]


# ----- loop kernel == NumPy twin (float64) --------------------------------------------


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_layer_norm_forward_loop_matches_numpy_twin(shape):
    x, gamma, beta, _ = ln_inputs(rng_for("ln_fwd", shape), *shape)
    assert_twins_agree(
        K._layer_norm_forward_loop(x, gamma, beta, EPS),
        K.layer_norm_forward_reference(x, gamma, beta, EPS),
    )


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_layer_norm_backward_loop_matches_numpy_twin(shape):
    x, gamma, beta, dy = ln_inputs(rng_for("ln_bwd", shape), *shape)
    _, mean, rstd = K.layer_norm_forward_reference(x, gamma, beta, EPS)
    assert_twins_agree(
        K._layer_norm_backward_loop(dy, x, gamma, mean, rstd),
        K.layer_norm_backward_reference(dy, x, gamma, mean, rstd),
    )


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 6),
    d=st.integers(2, 19),
    seed=st.integers(0, 2**32 - 1),
    offset=st.sampled_from([0.0, 3.0, -1e3]),
    scale=st.sampled_from([1.0, 1e-3, 1e3]),
)
def test_layer_norm_loop_matches_numpy_twin_on_random_shapes_and_scales(n, d, seed, offset, scale):
    rng = np.random.default_rng(seed)
    x, gamma, beta, dy = ln_inputs(rng, n, d)
    x = offset + scale * x
    fwd_loop = K._layer_norm_forward_loop(x, gamma, beta, EPS)
    assert_twins_agree(fwd_loop, K.layer_norm_forward_reference(x, gamma, beta, EPS), rtol=1e-11)
    _, mean, rstd = fwd_loop
    assert_twins_agree(
        K._layer_norm_backward_loop(dy, x, gamma, mean, rstd),
        K.layer_norm_backward_reference(dy, x, gamma, mean, rstd),
        rtol=1e-11,
    )


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_rms_norm_forward_loop_matches_numpy_twin(shape):
    x, gamma, _, _ = ln_inputs(rng_for("rms_fwd", shape), *shape)
    assert_twins_agree(K._rms_norm_forward_loop(x, gamma, EPS), K.rms_norm_forward_reference(x, gamma, EPS))


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_rms_norm_backward_loop_matches_numpy_twin(shape):
    x, gamma, _, dy = ln_inputs(rng_for("rms_bwd", shape), *shape)
    _, rrms = K.rms_norm_forward_reference(x, gamma, EPS)
    assert_twins_agree(
        K._rms_norm_backward_loop(dy, x, gamma, rrms),
        K.rms_norm_backward_reference(dy, x, gamma, rrms),
    )


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_softmax_forward_loop_matches_numpy_twin(shape):
    x = 3.0 * rng_for("sm_fwd", shape).standard_normal(shape)
    assert_twins_agree(K._softmax_forward_loop(x), K.softmax_forward_reference(x))


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_softmax_backward_loop_matches_numpy_twin(shape):
    rng = rng_for("sm_bwd", shape)
    p = K.softmax_forward_reference(rng.standard_normal(shape))
    dp = rng.standard_normal(shape)
    assert_twins_agree(K._softmax_backward_loop(dp, p), K.softmax_backward_reference(dp, p))


@pytest.mark.parametrize("shape_q, s_len, causal", ATTENTION_CASES)
def test_attention_forward_loop_matches_numpy_twin(shape_q, s_len, causal):
    q, k, v, _ = attention_inputs(rng_for("att_fwd", shape_q, s_len), shape_q, s_len)
    assert_twins_agree(
        K._attention_forward_loop(q, k, v, causal),
        K.attention_forward_reference(q, k, v, causal),
    )


@pytest.mark.parametrize("shape_q, s_len, causal", ATTENTION_CASES)
def test_attention_backward_loop_matches_numpy_twin(shape_q, s_len, causal):
    q, k, v, dout = attention_inputs(rng_for("att_bwd", shape_q, s_len), shape_q, s_len)
    _, probs = K.attention_forward_reference(q, k, v, causal)
    assert_twins_agree(
        K._attention_backward_loop(dout, q, k, v, probs),
        K.attention_backward_reference(dout, q, k, v, probs),
    )


# The public GELU hands the loop kernel a flat array (one compilation per dtype).
GELU_SIZES = [1024, 21, 1]


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("size", GELU_SIZES)
def test_gelu_forward_loop_matches_numpy_twin(approximate, size):
    x = 3.0 * rng_for("gelu_fwd", size).standard_normal(size)
    assert_twins_agree(K._gelu_forward_loop(x, approximate), K.gelu_forward_reference(x, approximate))


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("size", GELU_SIZES)
def test_gelu_backward_loop_matches_numpy_twin(approximate, size):
    rng = rng_for("gelu_bwd", size)
    x = 3.0 * rng.standard_normal(size)
    dy = rng.standard_normal(size)
    assert_twins_agree(
        K._gelu_backward_loop(dy, x, approximate),
        K.gelu_backward_reference(dy, x, approximate),
    )


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("shape", [(7, 3), (2, 3, 5), ()])
def test_gelu_keeps_any_input_shape(approximate, shape):
    rng = rng_for("gelu_shape", shape)
    x = np.asarray(rng.standard_normal(shape))
    dy = np.asarray(rng.standard_normal(shape))
    y = K.gelu_forward(x, approximate)
    dx = K.gelu_backward(dy, x, approximate)
    assert y.shape == shape and dx.shape == shape
    assert_twins_agree(y, K.gelu_forward_reference(x, approximate))
    assert_twins_agree(dx, K.gelu_backward_reference(dy, x, approximate))


# ----- dtypes -------------------------------------------------------------------------


def _all_kernel_calls(dtype):
    """(name, thunk) for every public kernel on small inputs of ``dtype``."""
    rng = np.random.default_rng(7)
    x, gamma, beta, dy = ln_inputs(rng, 5, 6, dtype)
    y, mean, rstd = K.layer_norm_forward(x, gamma, beta, EPS)
    _, rrms = K.rms_norm_forward(x, gamma, EPS)
    p = K.softmax_forward(x)
    q, k, v, dout = attention_inputs(rng, (1, 2, 4, 3), 4, dtype)
    _, probs = K.attention_forward(q, k, v, True)
    return [
        ("layer_norm_forward", lambda: K.layer_norm_forward(x, gamma, beta, EPS)),
        ("layer_norm_backward", lambda: K.layer_norm_backward(dy, x, gamma, mean, rstd)),
        ("rms_norm_forward", lambda: K.rms_norm_forward(x, gamma, EPS)),
        ("rms_norm_backward", lambda: K.rms_norm_backward(dy, x, gamma, rrms)),
        ("softmax_forward", lambda: K.softmax_forward(x)),
        ("softmax_backward", lambda: K.softmax_backward(dy, p)),
        ("attention_forward", lambda: K.attention_forward(q, k, v, True)),
        ("attention_backward", lambda: K.attention_backward(dout, q, k, v, probs)),
        ("gelu_forward_tanh", lambda: K.gelu_forward(x, "tanh")),
        ("gelu_forward_none", lambda: K.gelu_forward(x, "none")),
        ("gelu_backward_tanh", lambda: K.gelu_backward(dy, x, "tanh")),
        ("gelu_backward_none", lambda: K.gelu_backward(dy, x, "none")),
    ]


KERNEL_NAMES = [
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
    "softmax_forward",
    "softmax_backward",
    "attention_forward",
    "attention_backward",
    "gelu_forward_tanh",
    "gelu_forward_none",
    "gelu_backward_tanh",
    "gelu_backward_none",
]


def test_kernel_name_list_matches_the_calls():
    assert [name for name, _ in _all_kernel_calls(np.float64)] == KERNEL_NAMES


@pytest.mark.parametrize("index", range(len(KERNEL_NAMES)), ids=KERNEL_NAMES)
def test_float32_inputs_give_float32_outputs(index):
    _, call = _all_kernel_calls(np.float32)[index]
    outputs = call()
    for out in outputs if isinstance(outputs, tuple) else (outputs,):
        assert out.dtype == np.float32


@pytest.mark.parametrize("index", range(len(KERNEL_NAMES)), ids=KERNEL_NAMES)
def test_float32_results_match_float64_to_single_precision(index):
    out32 = _all_kernel_calls(np.float32)[index][1]()
    out64 = _all_kernel_calls(np.float64)[index][1]()
    if not isinstance(out32, tuple):
        out32, out64 = (out32,), (out64,)
    for a, b in zip(out32, out64):
        scale = float(np.abs(b).max())
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)


@both_impls
def test_float32_twins_keep_float32_outputs(impl):
    f = IMPLS[impl]
    x, gamma, beta, dy = ln_inputs(np.random.default_rng(3), 4, 5, np.float32)
    y, mean, rstd = f["ln_fwd"](x, gamma, beta, EPS)
    assert {a.dtype for a in (y, mean, rstd, *f["ln_bwd"](dy, x, gamma, mean, rstd))} == {np.dtype(np.float32)}
    assert f["sm_fwd"](x).dtype == np.float32
    assert f["gelu_fwd"](x.ravel(), "none").dtype == np.float32
    assert f["gelu_bwd"](dy.ravel(), x.ravel(), "none").dtype == np.float32


def test_mixed_dtypes_are_rejected_instead_of_cast():
    x, gamma, beta, _ = ln_inputs(np.random.default_rng(0), 3, 4, np.float32)
    with pytest.raises(TypeError):
        K.layer_norm_forward(x, gamma.astype(np.float64), beta, EPS)
    with pytest.raises(TypeError):
        K.softmax_forward(x.astype(np.int64))


# ----- numerically hard inputs --------------------------------------------------------


@both_impls
def test_layer_norm_constant_rows_give_beta_exactly_and_finite_dx(impl):
    f = IMPLS[impl]
    rng = np.random.default_rng(11)
    d = 16
    values = np.array([0.1, 1.0 / 3.0, -7.3, 1e8 + 0.1, 0.0])
    x = np.repeat(values[:, None], d, axis=1)
    gamma = rng.standard_normal(d)
    beta = rng.standard_normal(d)
    y, mean, rstd = f["ln_fwd"](x, gamma, beta, EPS)
    np.testing.assert_array_equal(mean, values)
    np.testing.assert_array_equal(y, np.broadcast_to(beta, x.shape))
    dx, dgamma, dbeta = f["ln_bwd"](rng.standard_normal(x.shape), x, gamma, mean, rstd)
    assert np.isfinite(dx).all() and np.isfinite(dgamma).all() and np.isfinite(dbeta).all()


@both_impls
def test_layer_norm_with_1e8_offset_stays_finite_and_matches_offset_free_result(impl):
    f = IMPLS[impl]
    x, gamma, beta, dy = ln_inputs(np.random.default_rng(12), 6, 16)
    y0, _, rstd0 = f["ln_fwd"](x, gamma, beta, EPS)
    dx0, _, _ = f["ln_bwd"](dy, x, gamma, *f["ln_fwd"](x, gamma, beta, EPS)[1:])
    shifted = x + 1e8
    y, mean, rstd = f["ln_fwd"](shifted, gamma, beta, EPS)
    dx, _, _ = f["ln_bwd"](dy, shifted, gamma, mean, rstd)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    # x + 1e8 rounds x to ~1.5e-8, so agreement is limited to ~1e-7.
    np.testing.assert_allclose(y, y0, atol=1e-6)
    np.testing.assert_allclose(rstd, rstd0, rtol=1e-6)
    np.testing.assert_allclose(dx, dx0, atol=1e-5)


@both_impls
def test_softmax_of_plus_minus_1e4_logits_is_finite_and_sums_to_one(impl):
    f = IMPLS[impl]
    x = np.array([[1e4, -1e4, 0.0, 1e4], [-1e4, -1e4, -1e4, -1e4], [1e4, 1e4 - 1.0, -1e4, 3.0]])
    p = f["sm_fwd"](x)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-15)
    np.testing.assert_array_equal(p[0], [0.5, 0.0, 0.0, 0.5])
    np.testing.assert_array_equal(p[1], [0.25, 0.25, 0.25, 0.25])
    np.testing.assert_allclose(p[2, :2], [1.0 / (1.0 + math.exp(-1.0)), 1.0 / (1.0 + math.exp(1.0))], rtol=1e-15)


def naive_attention(q, k, v, causal):
    """Per (b, h, t) Python loops, written independently of the kernels."""
    b_len, h_len, t_len, dh = q.shape
    s_len = k.shape[2]
    probs = np.zeros((b_len, h_len, t_len, s_len))
    out = np.zeros_like(q)
    for b in range(b_len):
        for h in range(h_len):
            for t in range(t_len):
                allowed = [s for s in range(s_len) if not (causal and s > t)]
                logits = np.array([q[b, h, t] @ k[b, h, s] / math.sqrt(dh) for s in allowed])
                w = np.exp(logits - logits.max())
                probs[b, h, t, allowed] = w / w.sum()
                out[b, h, t] = probs[b, h, t] @ v[b, h]
    return out, probs


@both_impls
def test_causal_attention_probs_are_exactly_zero_above_the_diagonal(impl):
    q, k, v, _ = attention_inputs(np.random.default_rng(13), (2, 2, 6, 4), 6)
    _, probs = IMPLS[impl]["att_fwd"](q, k, v, True)
    above = np.triu(np.ones((6, 6), dtype=bool), k=1)
    assert (probs[..., above] == 0.0).all()
    assert (probs[..., ~above] > 0.0).all()
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-14)


@both_impls
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_naive_numpy_computation(impl, causal):
    q, k, v, _ = attention_inputs(np.random.default_rng(14), (2, 3, 5, 4), 5)
    out, probs = IMPLS[impl]["att_fwd"](q, k, v, causal)
    out_naive, probs_naive = naive_attention(q, k, v, causal)
    np.testing.assert_allclose(probs, probs_naive, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out, out_naive, rtol=1e-12, atol=1e-14)


# ----- backward == finite differences of the forward ----------------------------------


@both_impls
@pytest.mark.parametrize("shape", [(4, 7), (3, 2)])
def test_layer_norm_backward_matches_finite_differences(impl, shape):
    f = IMPLS[impl]
    rng = np.random.default_rng(21)
    x, gamma, beta, dy = ln_inputs(rng, *shape)
    _, mean, rstd = f["ln_fwd"](x, gamma, beta, EPS)
    grads = f["ln_bwd"](dy, x, gamma, mean, rstd)

    def loss(x_, gamma_, beta_):
        return float(np.sum(dy * f["ln_fwd"](x_, gamma_, beta_, EPS)[0]))

    assert fd_check(loss, [x, gamma, beta], grads, rng) == [True, True, True]


@both_impls
def test_rms_norm_backward_matches_finite_differences(impl):
    f = IMPLS[impl]
    rng = np.random.default_rng(22)
    x, gamma, _, dy = ln_inputs(rng, 4, 7)
    _, rrms = f["rms_fwd"](x, gamma, EPS)
    grads = f["rms_bwd"](dy, x, gamma, rrms)

    def loss(x_, gamma_):
        return float(np.sum(dy * f["rms_fwd"](x_, gamma_, EPS)[0]))

    assert fd_check(loss, [x, gamma], grads, rng) == [True, True]


@both_impls
def test_softmax_backward_matches_finite_differences(impl):
    f = IMPLS[impl]
    rng = np.random.default_rng(23)
    x = rng.standard_normal((4, 6))
    dp = rng.standard_normal((4, 6))
    grads = [f["sm_bwd"](dp, f["sm_fwd"](x))]

    def loss(x_):
        return float(np.sum(dp * f["sm_fwd"](x_)))

    assert fd_check(loss, [x], grads, rng) == [True]


@both_impls
@pytest.mark.parametrize("shape_q, s_len, causal", [((1, 2, 4, 3), 5, False), ((2, 1, 4, 3), 4, True)])
def test_attention_backward_matches_finite_differences(impl, shape_q, s_len, causal):
    f = IMPLS[impl]
    rng = np.random.default_rng(24)
    q, k, v, dout = attention_inputs(rng, shape_q, s_len)
    _, probs = f["att_fwd"](q, k, v, causal)
    grads = f["att_bwd"](dout, q, k, v, probs)

    def loss(q_, k_, v_):
        return float(np.sum(dout * f["att_fwd"](q_, k_, v_, causal)[0]))

    assert fd_check(loss, [q, k, v], grads, rng) == [True, True, True]


@both_impls
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_backward_matches_finite_differences(impl, approximate):
    f = IMPLS[impl]
    rng = np.random.default_rng(25)
    x = 2.0 * rng.standard_normal(15)
    dy = rng.standard_normal(15)
    grads = [f["gelu_bwd"](dy, x, approximate)]

    def loss(x_):
        return float(np.sum(dy * f["gelu_fwd"](x_, approximate)))

    assert fd_check(loss, [x], grads, rng) == [True]


# ----- negative controls: the finite-difference check catches a broken backward -------


def broken_layer_norm_backward(dy, x, gamma, mean, rstd):
    """LayerNorm backward missing the ``x_hat * mean(g * x_hat)`` term."""
    g = dy * gamma
    return rstd[:, None] * (g - g.mean(axis=-1, keepdims=True))


def broken_softmax_backward(dp, p):
    """Softmax backward missing the row-sum term: ``diag(p)`` instead of ``diag(p) - p p^T``."""
    return p * dp


def broken_attention_backward_dq(dout, q, k, v, probs):
    """Attention ``dq`` whose softmax backward lacks the row-sum term."""
    dprobs = np.matmul(dout, np.swapaxes(v, -1, -2))
    return np.matmul(probs * dprobs, k) / math.sqrt(q.shape[-1])


def test_finite_difference_check_detects_layer_norm_backward_without_x_hat_term():
    rng = np.random.default_rng(31)
    x, gamma, beta, dy = ln_inputs(rng, 4, 7)
    _, mean, rstd = K.layer_norm_forward(x, gamma, beta, EPS)

    def loss(x_):
        return float(np.sum(dy * K.layer_norm_forward(x_, gamma, beta, EPS)[0]))

    broken = broken_layer_norm_backward(dy, x, gamma, mean, rstd)
    correct = K.layer_norm_backward(dy, x, gamma, mean, rstd)[0]
    assert fd_check(loss, [x], [correct], np.random.default_rng(1)) == [True]
    assert fd_check(loss, [x], [broken], np.random.default_rng(1)) == [False]


def test_finite_difference_check_detects_softmax_backward_without_row_sum_term():
    rng = np.random.default_rng(32)
    x = rng.standard_normal((4, 6))
    dp = rng.standard_normal((4, 6))
    p = K.softmax_forward(x)

    def loss(x_):
        return float(np.sum(dp * K.softmax_forward(x_)))

    assert fd_check(loss, [x], [K.softmax_backward(dp, p)], np.random.default_rng(2)) == [True]
    assert fd_check(loss, [x], [broken_softmax_backward(dp, p)], np.random.default_rng(2)) == [False]


@pytest.mark.parametrize("causal", [False, True])
def test_finite_difference_check_detects_attention_backward_without_row_sum_term(causal):
    rng = np.random.default_rng(33)
    q, k, v, dout = attention_inputs(rng, (1, 2, 4, 3), 4)
    _, probs = K.attention_forward(q, k, v, causal)

    def loss(q_):
        return float(np.sum(dout * K.attention_forward(q_, k, v, causal)[0]))

    correct = K.attention_backward(dout, q, k, v, probs)[0]
    broken = broken_attention_backward_dq(dout, q, k, v, probs)
    assert fd_check(loss, [q], [correct], np.random.default_rng(3)) == [True]
    assert fd_check(loss, [q], [broken], np.random.default_rng(3)) == [False]


# ----- determinism and dispatch -------------------------------------------------------


@pytest.mark.parametrize("index", range(len(KERNEL_NAMES)), ids=KERNEL_NAMES)
def test_same_inputs_give_same_bits_on_two_calls(index):
    _, call = _all_kernel_calls(np.float64)[index]
    first, second = call(), call()
    if not isinstance(first, tuple):
        first, second = (first,), (second,)
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()


def test_public_kernels_call_the_twin_chosen_by_use_numba():
    x, gamma, beta, _ = ln_inputs(np.random.default_rng(41), 5, 9)
    chosen = K._layer_norm_forward_loop if K.USE_NUMBA else K.layer_norm_forward_reference
    for got, want in zip(K.layer_norm_forward(x, gamma, beta, EPS), chosen(x, gamma, beta, EPS)):
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize(
    "env_value, jit_disabled, expected",
    [
        (None, False, True),
        ("numba", False, True),
        ("", False, True),
        ("numpy", False, False),
        ("NumPy", False, False),
        (None, True, False),
        ("numba", True, False),
    ],
)
def test_numba_requested_follows_env_and_jit_switch(env_value, jit_disabled, expected):
    assert K.numba_requested(env_value, jit_disabled) is expected


def test_numba_requested_rejects_unknown_kernel_choice():
    with pytest.raises(ValueError):
        K.numba_requested("cuda", False)


def test_causal_attention_requires_equal_query_and_key_lengths():
    q, k, v, _ = attention_inputs(np.random.default_rng(0), (1, 1, 3, 2), 4)
    with pytest.raises(ValueError):
        K.attention_forward(q, k, v, True)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError):
        K.gelu_forward(np.zeros(3), "sigmoid")
