"""Tests of the fused kernels in ``lnref.autograd.kernels``.

Each Numba loop twin is checked against its NumPy twin, both are checked
against central finite differences of their own forward (with a deliberately
broken backward as a negative control), and the numerically hard inputs
(constant rows, 1e8 offsets, +-1e4 logits, causal masks) get their own tests.
The twins are reached through the seam (``seam.twin(name).loop``), as every
override of a kernel is (``seam.forced``, ``seam.replaced``).

Runs with and without the JIT (``NUMBA_DISABLE_JIT=1``): loop twins are only
called on small shapes, so pure-Python execution stays fast.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnref.autograd import kernels as K
from lnref.autograd.kernels import attention_blocked, seam, warmup
from lnref.autograd.kernels.attention import attention_work
from lnref.autograd.kernels.attention_sublayer import attention_sublayer_work
from lnref.autograd.kernels.linear import matmul_kernel, weight_gradient
from lnref.process import blas

EPS = 1e-5
TWIN_RTOL = 1e-12
ROOT = Path(__file__).resolve().parents[1]


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


def loop(name):
    """The loop twin of the kernel ``name``."""
    return seam.twin(name).loop


def token_major(a):
    """(B, H, T, Dh) <-> (B, T, H, Dh), contiguous (swapping axes 1 and 2 converts both ways)."""
    return np.ascontiguousarray(a.transpose(0, 2, 1, 3))


def on_head_major(forward, backward):
    """A token-major (B, T, H, Dh) attention forward/backward pair, called on head-major
    (B, H, T, Dh) arrays like the NumPy twins."""

    def fwd(q, k, v, causal):
        out, probs = forward(*(token_major(a) for a in (q, k, v)), causal)
        return token_major(out), probs

    def bwd(dout, q, k, v, probs):
        grads = backward(*(token_major(a) for a in (dout, q, k, v)), probs)
        return tuple(token_major(g) for g in grads)

    return fwd, bwd


LOOP_ATTENTION = on_head_major(loop("attention_forward"), loop("attention_backward"))
BLOCKED_ATTENTION = on_head_major(seam.twin("attention_forward").blocked, seam.twin("attention_backward").blocked)

# The two twins of every kernel, for tests that must hold for both.
IMPLS = {
    "loop": {
        "ln_fwd": loop("layer_norm_forward"),
        "ln_bwd": loop("layer_norm_backward"),
        "rms_fwd": loop("rms_norm_forward"),
        "rms_bwd": loop("rms_norm_backward"),
        "sm_fwd": loop("softmax_forward"),
        "sm_bwd": loop("softmax_backward"),
        "att_fwd": LOOP_ATTENTION[0],
        "att_bwd": LOOP_ATTENTION[1],
        "gelu_fwd": loop("gelu_forward"),
        "gelu_bwd": loop("gelu_backward"),
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
# Attention has a third implementation: BLAS products and in-place softmax kernels, for big heads.
ATTENTION_IMPLS = {
    "loop": LOOP_ATTENTION,
    "blocked": BLOCKED_ATTENTION,
    "reference": (K.attention_forward_reference, K.attention_backward_reference),
}
attention_impls = pytest.mark.parametrize("impl", sorted(ATTENTION_IMPLS))
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
        loop("layer_norm_forward")(x, gamma, beta, EPS),
        K.layer_norm_forward_reference(x, gamma, beta, EPS),
    )


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_layer_norm_backward_loop_matches_numpy_twin(shape):
    x, gamma, beta, dy = ln_inputs(rng_for("ln_bwd", shape), *shape)
    _, mean, rstd = K.layer_norm_forward_reference(x, gamma, beta, EPS)
    assert_twins_agree(
        loop("layer_norm_backward")(dy, x, gamma, mean, rstd),
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
    fwd_loop = loop("layer_norm_forward")(x, gamma, beta, EPS)
    assert_twins_agree(fwd_loop, K.layer_norm_forward_reference(x, gamma, beta, EPS), rtol=1e-11)
    _, mean, rstd = fwd_loop
    assert_twins_agree(
        loop("layer_norm_backward")(dy, x, gamma, mean, rstd),
        K.layer_norm_backward_reference(dy, x, gamma, mean, rstd),
        rtol=1e-11,
    )


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_rms_norm_forward_loop_matches_numpy_twin(shape):
    x, gamma, _, _ = ln_inputs(rng_for("rms_fwd", shape), *shape)
    assert_twins_agree(loop("rms_norm_forward")(x, gamma, EPS), K.rms_norm_forward_reference(x, gamma, EPS))


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_rms_norm_backward_loop_matches_numpy_twin(shape):
    x, gamma, _, dy = ln_inputs(rng_for("rms_bwd", shape), *shape)
    _, rrms = K.rms_norm_forward_reference(x, gamma, EPS)
    assert_twins_agree(
        loop("rms_norm_backward")(dy, x, gamma, rrms),
        K.rms_norm_backward_reference(dy, x, gamma, rrms),
    )


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_softmax_forward_loop_matches_numpy_twin(shape):
    x = 3.0 * rng_for("sm_fwd", shape).standard_normal(shape)
    assert_twins_agree(loop("softmax_forward")(x), K.softmax_forward_reference(x))


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_softmax_backward_loop_matches_numpy_twin(shape):
    rng = rng_for("sm_bwd", shape)
    p = K.softmax_forward_reference(rng.standard_normal(shape))
    dp = rng.standard_normal(shape)
    assert_twins_agree(loop("softmax_backward")(dp, p), K.softmax_backward_reference(dp, p))


@pytest.mark.parametrize("path", ["loop", "blocked"])
@pytest.mark.parametrize("shape_q, s_len, causal", ATTENTION_CASES)
def test_attention_forward_matches_numpy_twin(path, shape_q, s_len, causal):
    q, k, v, _ = attention_inputs(rng_for("att_fwd", shape_q, s_len), shape_q, s_len)
    assert_twins_agree(
        ATTENTION_IMPLS[path][0](q, k, v, causal),
        K.attention_forward_reference(q, k, v, causal),
    )


@pytest.mark.parametrize("path", ["loop", "blocked"])
@pytest.mark.parametrize("shape_q, s_len, causal", ATTENTION_CASES)
def test_attention_backward_matches_numpy_twin(path, shape_q, s_len, causal):
    q, k, v, dout = attention_inputs(rng_for("att_bwd", shape_q, s_len), shape_q, s_len)
    _, probs = K.attention_forward_reference(q, k, v, causal)
    assert_twins_agree(
        ATTENTION_IMPLS[path][1](dout, q, k, v, probs),
        K.attention_backward_reference(dout, q, k, v, probs),
    )


def split_heads(a, n_heads):
    """(B, T, d) -> (B, H, T, d/H), head h owning features [h d/H, (h+1) d/H)."""
    batch, seq, d = a.shape
    return a.reshape(batch, seq, n_heads, d // n_heads).transpose(0, 2, 1, 3)


def merge_heads(a):
    batch, heads, seq, head_dim = a.shape
    return a.transpose(0, 2, 1, 3).reshape(batch, seq, heads * head_dim)


@pytest.mark.parametrize("path", ["loop", "blocked"])
@pytest.mark.parametrize("t_len, s_len, causal", [(5, 5, True), (4, 7, False)])
def test_multi_head_attention_is_attention_over_split_heads(path, t_len, s_len, causal):
    with seam.forced(path, "attention_forward", "attention_backward"):
        check_multi_head_attention_against_the_numpy_twin(t_len, s_len, causal)


def check_multi_head_attention_against_the_numpy_twin(t_len, s_len, causal):
    rng = rng_for("mha", t_len, s_len, causal)
    q = rng.standard_normal((2, t_len, 6))
    k, v = rng.standard_normal((2, 2, s_len, 6))
    dout = rng.standard_normal((2, t_len, 6))
    out, probs = K.multi_head_attention_forward(q, k, v, 3, causal)
    ref_out, ref_probs = K.attention_forward_reference(split_heads(q, 3), split_heads(k, 3), split_heads(v, 3), causal)
    assert_twins_agree((out, probs), (merge_heads(ref_out), ref_probs))
    grads = K.multi_head_attention_backward(dout, q, k, v, probs)
    ref_grads = K.attention_backward_reference(
        split_heads(dout, 3), split_heads(q, 3), split_heads(k, 3), split_heads(v, 3), ref_probs
    )
    assert_twins_agree(grads, tuple(merge_heads(g) for g in ref_grads))


def sublayer_inputs(rng, batch, t_len, s_len, d, cross, dtype=np.float64):
    """x, memory (None for self-attention), [wq, bq, wk, bk, wv, bv, wo, bo], dout."""
    x = rng.standard_normal((batch, t_len, d)).astype(dtype)
    memory = rng.standard_normal((batch, s_len, d)).astype(dtype) if cross else None
    weights = [
        (rng.standard_normal((d, d)) / math.sqrt(d) if i % 2 == 0 else rng.standard_normal(d)).astype(dtype)
        for i in range(8)
    ]
    return x, memory, weights, rng.standard_normal((batch, t_len, d)).astype(dtype)


def sublayer_twins(x, memory, weights, dout, n_heads, causal):
    """(forward, backward) outputs of the loop twin and of the NumPy/BLAS reference."""
    results = []
    for forward, backward in (
        (loop("attention_sublayer_forward"), loop("attention_sublayer_backward")),
        (K.attention_sublayer_forward_reference, K.attention_sublayer_backward_reference),
    ):
        outputs = forward(x, memory, *weights, n_heads, causal)
        results.append((outputs, backward(dout, x, memory, *weights[::2], *outputs[1:])))
    return results


def assert_gradients_agree(loop_grads, ref_grads, rtol):
    """Like assert_twins_agree, relative to the largest entry of any gradient: the key
    bias's gradient is zero up to rounding (softmax ignores a shift of a query's scores)."""
    scale = max(float(np.abs(g).max()) for g in ref_grads if g is not None)
    for a, b in zip(loop_grads, ref_grads):
        assert (a is None) == (b is None)
        if b is not None:
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


# (B, T, S, d, heads, cross, causal): the small model's sublayer, its gradient checker's
# batches, cross-attention to a longer and a shorter memory, odd sizes, one token, and a
# size past the loop rule (which the twins must still agree on).
SUBLAYER_CASES = [
    (2, 8, 8, 16, 2, False, False),
    (2, 8, 8, 16, 2, False, True),
    (20, 8, 8, 16, 2, False, True),
    (2, 5, 7, 6, 3, True, False),
    (3, 6, 2, 4, 1, True, False),
    (1, 7, 7, 10, 5, False, True),
    (1, 1, 1, 4, 2, False, True),
    (2, 32, 32, 64, 4, False, False),
]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, TWIN_RTOL), (np.float32, 1e-4)], ids=["float64", "float32"])
@pytest.mark.parametrize("batch, t_len, s_len, d, n_heads, cross, causal", SUBLAYER_CASES)
def test_attention_sublayer_loop_matches_numpy_twin(batch, t_len, s_len, d, n_heads, cross, causal, dtype, rtol):
    x, memory, weights, dout = sublayer_inputs(
        rng_for("sublayer", batch, t_len, s_len, d, cross), batch, t_len, s_len, d, cross, dtype
    )
    (loop_out, loop_grads), (ref_out, ref_grads) = sublayer_twins(x, memory, weights, dout, n_heads, causal)
    assert_twins_agree(loop_out, ref_out, rtol)
    assert_gradients_agree(loop_grads, ref_grads, rtol)
    assert {a.dtype for a in (*loop_out, *loop_grads) if a is not None} == {np.dtype(dtype)}


def test_attention_sublayer_loop_twin_check_detects_a_backward_without_the_key_and_value_paths():
    # Negative control of the twin comparison: the compiled backward run as if the keys and
    # values read another input (x passed as its own memory) leaves them out of dx.
    x, _, weights, dout = sublayer_inputs(rng_for("sublayer-broken"), 2, 4, 4, 6, cross=False)
    (loop_out, loop_grads), (_, ref_grads) = sublayer_twins(x, None, weights, dout, 2, False)
    assert_gradients_agree(loop_grads, ref_grads, TWIN_RTOL)
    dx, _, *weight_grads = loop("attention_sublayer_backward")(dout, x, x, *weights[::2], *loop_out[1:])
    with pytest.raises(AssertionError):
        assert_gradients_agree([dx, None, *weight_grads], ref_grads, TWIN_RTOL)


@pytest.mark.parametrize("cross", [False, True])
def test_attention_sublayer_loop_backward_matches_finite_differences(cross):
    rng = np.random.default_rng(57)
    x, memory, weights, dout = sublayer_inputs(rng, 2, 3, 5, 4, cross)
    causal = not cross  # (a causal mask needs T == S)

    def loss(x_, wq, *memory_):
        out = loop("attention_sublayer_forward")(x_, memory_[0] if cross else None, wq, *weights[1:], 2, causal)[0]
        return float(np.sum(dout * out))

    outputs = loop("attention_sublayer_forward")(x, memory, *weights, 2, causal)
    grads = loop("attention_sublayer_backward")(dout, x, memory, *weights[::2], *outputs[1:])
    inputs, analytic = [x, weights[0]], [grads[0], grads[2]]
    if cross:
        inputs.append(memory)
        analytic.append(grads[1])
    assert fd_check(loss, inputs, analytic, np.random.default_rng(4)) == [True] * len(inputs)


@pytest.mark.skipif(not K.USE_NUMBA, reason="the size rule chooses between compiled paths only")
@pytest.mark.parametrize("name", ["attention_sublayer_forward", "attention_sublayer_backward"])
def test_small_attention_sublayers_take_the_loop_kernels_and_bigger_ones_the_numpy_composition(name):
    twin = seam.twin(name)
    assert twin.pick(*attention_sublayer_work(2, 8, 8, 16)) is twin.loop  # the small model
    assert twin.pick(*attention_sublayer_work(20, 8, 8, 16)) is twin.loop  # its gradient checker's batches
    assert twin.pick(*attention_sublayer_work(4, 32, 32, 64)) is twin.reference  # the medium model
    assert twin.pick(*attention_sublayer_work(8, 64, 64, 256)) is twin.reference  # the large model


def test_attention_sublayer_rejects_heads_that_do_not_split_d_model():
    x, _, weights, _ = sublayer_inputs(rng_for("sublayer-heads"), 1, 3, 3, 6, cross=False)
    with pytest.raises(ValueError, match="heads"):
        K.attention_sublayer_forward(x, None, *weights, 4, False)


def test_attention_sublayer_backward_rejects_residuals_of_another_shape():
    x, _, weights, dout = sublayer_inputs(rng_for("sublayer-shapes"), 1, 3, 3, 4, cross=False)
    outputs = K.attention_sublayer_forward(x, None, *weights, 2, False)
    with pytest.raises(ValueError, match="do not fit"):
        K.attention_sublayer_backward(dout, x, None, *weights[::2], *outputs[1:4], outputs[4][:, :, :2], outputs[5])


LINEAR_SHAPES = [(16, 16, 64), (16, 64, 16), (7, 5, 3), (1, 1, 1), (13, 6, 9), (48, 32, 64)]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, TWIN_RTOL), (np.float32, 1e-4)], ids=["float64", "float32"])
@pytest.mark.parametrize("n, d_in, d_out", LINEAR_SHAPES)
def test_linear_loop_matches_numpy_twin(n, d_in, d_out, dtype, rtol):
    rng = rng_for("linear", n, d_in, d_out)
    x, w, b = (rng.standard_normal(shape).astype(dtype) for shape in ((n, d_in), (d_in, d_out), (d_out,)))
    dy = rng.standard_normal((n, d_out)).astype(dtype)
    assert_twins_agree(loop("linear_forward")(x, w, b), K.linear_forward_reference(x, w, b), rtol)
    assert_twins_agree(loop("linear_backward")(dy, x, w), K.linear_backward_reference(dy, x, w), rtol)


@pytest.mark.parametrize("d_in, d_out", [(16, 64), (64, 16), (8, 8)], ids=["widening", "narrowing", "square"])
def test_the_weight_gradient_is_x_transposed_times_dy_in_either_orientation(d_in, d_out):
    rng = rng_for("weight-gradient", d_in, d_out)
    x, dy = rng.standard_normal((32, d_in)), rng.standard_normal((32, d_out))
    np.testing.assert_allclose(weight_gradient(x, dy), np.einsum("ni,nj->ij", x, dy), rtol=1e-12, atol=1e-12)


def sum_in_order(a, b, bias):
    """a @ b + bias with each element summed from its bias, one product at a time in order."""
    out = np.empty((a.shape[0], b.shape[1]))
    for i, j in np.ndindex(*out.shape):
        total = float(bias[j])
        for p in range(a.shape[1]):
            total += float(a[i, p] * b[p, j])
        out[i, j] = total
    return out


@pytest.mark.parametrize("m, k, n", [(16, 16, 16), (16, 64, 16), (13, 7, 9), (5, 3, 2), (4, 1, 3), (6, 0, 2)])
def test_the_compiled_product_sums_each_element_in_order_from_its_bias(m, k, n):
    # Its loop adds several products per pass; the bits must be those of one at a time, the
    # order the fused branches' bit-equality with their compositions rests on.
    rng = rng_for("matmul-order", m, k, n)
    a, b, bias = rng.standard_normal((m, k)), rng.standard_normal((k, n)), rng.standard_normal(n)
    out = np.empty((m, n))
    matmul_kernel(a, b, bias, out)
    assert np.array_equal(out, sum_in_order(a, b, bias))


def test_the_in_order_sum_tells_other_orders_apart():
    # Negative control for the test above: BLAS's order, and the products summed two at a time
    # apart from the bias, give other bits at the FFN's second map's shape.
    rng = rng_for("matmul-order-control")
    a, b, bias = rng.standard_normal((16, 64)), rng.standard_normal((64, 16)), rng.standard_normal(16)
    pairs_first = bias + sum(np.outer(a[:, p], b[p]) + np.outer(a[:, p + 1], b[p + 1]) for p in range(0, 64, 2))
    assert not np.array_equal(a @ b + bias, sum_in_order(a, b, bias))
    assert not np.array_equal(pairs_first, sum_in_order(a, b, bias))


def test_linear_twin_check_detects_a_backward_that_drops_the_weight_gradient_of_one_row():
    # Negative control: dW summed over all rows but the last differs from the twin's.
    rng = rng_for("linear-broken")
    x, w, dy = rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    dx, dw, db = loop("linear_backward")(dy[:-1], x[:-1], w)
    with pytest.raises(AssertionError):
        assert_twins_agree((dw, db), K.linear_backward_reference(dy, x, w)[1:])


def ffn_inputs(rng, n, d, d_ff, dtype=np.float64):
    """(x, (w1, b1, w2, b2), dout)."""
    shapes = ((n, d), (d, d_ff), (d_ff,), (d_ff, d), (d,), (n, d))
    x, w1, b1, w2, b2, dout = (rng.standard_normal(shape).astype(dtype) for shape in shapes)
    return x, (w1, b1, w2, b2), dout


def assert_same_bits(loop_out, ref_out, rtol=None):
    """Equal to the bit (``rtol`` unused: the signature of :func:`assert_twins_agree`)."""
    for a, b in zip(loop_out, ref_out):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, TWIN_RTOL), (np.float32, 1e-4)], ids=["float64", "float32"])
@pytest.mark.parametrize("activation", K.FFN_ACTIVATIONS)
@pytest.mark.parametrize("n, d, d_ff", [(16, 16, 64), (7, 5, 3), (1, 1, 1)])
def test_feed_forward_loops_match_the_composition(n, d, d_ff, activation, dtype, rtol):
    # Compiled, the composition runs the loops' own linear kernels: the same bits. Without
    # Numba it takes NumPy's products, which round differently.
    def compare(loop_out, ref_out):
        (assert_same_bits if K.USE_NUMBA else assert_twins_agree)(loop_out, ref_out, rtol)

    x, weights, dout = ffn_inputs(rng_for("ffn", n, d, d_ff, activation), n, d, d_ff, dtype)
    out, hidden, acted = loop("feed_forward_forward")(x, *weights, activation)
    ref_out, ref_hidden, ref_acted = K.feed_forward_forward_reference(x, *weights, activation)
    compare((out, acted), (ref_out, ref_acted))  # hidden: kept for GELU only (see kernels)
    grads = loop("feed_forward_backward")(dout, x, weights[0], weights[2], hidden, acted, activation)
    compare(
        grads,
        K.feed_forward_backward_reference(dout, x, weights[0], weights[2], ref_hidden, ref_acted, activation),
    )


@pytest.mark.parametrize("path", ["loop", "reference"])
def test_feed_forward_keeps_a_nan_for_the_next_norm_to_reject(path):
    forward = seam.twin("feed_forward_forward").paths[path]
    x, weights, _ = ffn_inputs(rng_for("ffn-nan"), 4, 3, 5)
    x[1, 2] = np.nan
    out = forward(x, *weights, "relu")[0]
    assert np.isnan(out[1]).all() and np.isfinite(np.delete(out, 1, axis=0)).all()


@pytest.mark.parametrize("activation", ["mask", "gelu_erf", "tanh"])
def test_feed_forward_rejects_an_activation_it_does_not_compute(activation):
    x, weights, _ = ffn_inputs(rng_for("ffn-activation"), 4, 3, 5)
    with pytest.raises(ValueError, match="activation must be one of relu, gelu, gelu_tanh"):
        K.feed_forward_forward(x, *weights, activation)


# A hidden layer of 2-D rows spread over the GELUs' curved range, each flavour's own formula
# written out here, apart from the kernels (math.erf and math.tanh per element).
def _gelu_by_formula(h, activation):
    def one(v):
        if activation == "gelu":
            return v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))
        return 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))

    return np.vectorize(one, otypes=[np.float64])(h)


@pytest.mark.parametrize("path", ["loop", "reference"])
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_feed_forward_gelu_is_its_flavours_formula(path, activation):
    forward = seam.twin("feed_forward_forward").paths[path]
    x, (w1, b1, w2, b2), _ = ffn_inputs(rng_for("ffn-flavour", activation), 6, 4, 5)
    out, hidden, acted = forward(x, w1, b1, w2, b2, activation)
    np.testing.assert_allclose(acted, _gelu_by_formula(hidden, activation), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("path", ["loop", "reference"])
def test_the_two_gelu_flavours_of_the_feed_forward_differ(path):
    # What tells a port's GELU from lnref's: about 1e-4 of the activation's scale apart.
    forward = seam.twin("feed_forward_forward").paths[path]
    x, weights, _ = ffn_inputs(rng_for("ffn-flavours"), 6, 4, 5)
    exact, tanh = forward(x, *weights, "gelu")[2], forward(x, *weights, "gelu_tanh")[2]
    assert 1e-5 < np.abs(exact - tanh).max() / np.abs(exact).max() < 1e-3


@pytest.mark.skipif(not K.USE_NUMBA, reason="the size rule chooses between compiled paths only")
@pytest.mark.parametrize("name", ["attention_forward", "attention_backward"])
def test_small_attention_takes_the_loop_kernels_and_bigger_attention_the_blocked_path(name):
    twin = seam.twin(name)
    assert twin.pick(attention_work(2, 2, 8, 8, 8)) is twin.loop
    assert twin.pick(attention_work(20, 2, 8, 8, 8)) is twin.blocked
    assert twin.pick(attention_work(8, 8, 64, 64, 32)) is twin.blocked


# The public GELU hands the loop kernel a flat array (one compilation per dtype).
GELU_SIZES = [1024, 21, 1]


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("size", GELU_SIZES)
def test_gelu_forward_loop_matches_numpy_twin(approximate, size):
    x = 3.0 * rng_for("gelu_fwd", size).standard_normal(size)
    assert_twins_agree(loop("gelu_forward")(x, approximate), K.gelu_forward_reference(x, approximate))


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("size", GELU_SIZES)
def test_gelu_backward_loop_matches_numpy_twin(approximate, size):
    rng = rng_for("gelu_bwd", size)
    x = 3.0 * rng.standard_normal(size)
    dy = rng.standard_normal(size)
    assert_twins_agree(
        loop("gelu_backward")(dy, x, approximate),
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
    mq, mk, mv, mdout = (a.transpose(0, 2, 1, 3).reshape(1, 4, 6) for a in (q, k, v, dout))
    _, mprobs = K.multi_head_attention_forward(mq, mk, mv, 2, True)
    sx, memory, weights, sdout = sublayer_inputs(rng, 1, 4, 3, 6, cross=True, dtype=dtype)
    sublayer = K.attention_sublayer_forward(sx, memory, *weights, 2, False)
    fx, ffn_weights, fdout = ffn_inputs(rng, 5, 6, 8, dtype)
    ffn = K.feed_forward_forward(fx, *ffn_weights, "gelu")
    return [
        ("layer_norm_forward", lambda: K.layer_norm_forward(x, gamma, beta, EPS)),
        ("layer_norm_backward", lambda: K.layer_norm_backward(dy, x, gamma, mean, rstd)),
        ("rms_norm_forward", lambda: K.rms_norm_forward(x, gamma, EPS)),
        ("rms_norm_backward", lambda: K.rms_norm_backward(dy, x, gamma, rrms)),
        ("softmax_forward", lambda: K.softmax_forward(x)),
        ("softmax_backward", lambda: K.softmax_backward(dy, p)),
        ("attention_forward", lambda: K.attention_forward(q, k, v, True)),
        ("attention_backward", lambda: K.attention_backward(dout, q, k, v, probs)),
        ("multi_head_attention_forward", lambda: K.multi_head_attention_forward(mq, mk, mv, 2, True)),
        ("multi_head_attention_backward", lambda: K.multi_head_attention_backward(mdout, mq, mk, mv, mprobs)),
        ("gelu_forward_tanh", lambda: K.gelu_forward(x, "tanh")),
        ("gelu_forward_none", lambda: K.gelu_forward(x, "none")),
        ("gelu_backward_tanh", lambda: K.gelu_backward(dy, x, "tanh")),
        ("gelu_backward_none", lambda: K.gelu_backward(dy, x, "none")),
        ("attention_sublayer_forward", lambda: K.attention_sublayer_forward(sx, memory, *weights, 2, False)),
        # All gradients but the key bias's (index 5), which is zero up to rounding.
        (
            "attention_sublayer_backward",
            lambda: tuple(
                g
                for i, g in enumerate(K.attention_sublayer_backward(sdout, sx, memory, *weights[::2], *sublayer[1:]))
                if i != 5
            ),
        ),
        ("linear_forward", lambda: K.linear_forward(x, gamma[:, None] * beta, beta)),
        ("linear_backward", lambda: K.linear_backward(dy, x, gamma[:, None] * beta)),
        ("feed_forward_forward", lambda: K.feed_forward_forward(fx, *ffn_weights, "gelu")),
        (
            "feed_forward_backward",
            lambda: K.feed_forward_backward(fdout, fx, ffn_weights[0], ffn_weights[2], *ffn[1:], "gelu"),
        ),
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
    "multi_head_attention_forward",
    "multi_head_attention_backward",
    "gelu_forward_tanh",
    "gelu_forward_none",
    "gelu_backward_tanh",
    "gelu_backward_none",
    "attention_sublayer_forward",
    "attention_sublayer_backward",
    "linear_forward",
    "linear_backward",
    "feed_forward_forward",
    "feed_forward_backward",
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


@attention_impls
def test_causal_attention_probs_are_exactly_zero_above_the_diagonal(impl):
    q, k, v, _ = attention_inputs(np.random.default_rng(13), (2, 2, 6, 4), 6)
    _, probs = ATTENTION_IMPLS[impl][0](q, k, v, True)
    above = np.triu(np.ones((6, 6), dtype=bool), k=1)
    assert (probs[..., above] == 0.0).all()
    assert (probs[..., ~above] > 0.0).all()
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-14)


@attention_impls
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_naive_numpy_computation(impl, causal):
    q, k, v, _ = attention_inputs(np.random.default_rng(14), (2, 3, 5, 4), 5)
    out, probs = ATTENTION_IMPLS[impl][0](q, k, v, causal)
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


@attention_impls
@pytest.mark.parametrize("shape_q, s_len, causal", [((1, 2, 4, 3), 5, False), ((2, 1, 4, 3), 4, True)])
def test_attention_backward_matches_finite_differences(impl, shape_q, s_len, causal):
    forward, backward = ATTENTION_IMPLS[impl]
    rng = np.random.default_rng(24)
    q, k, v, dout = attention_inputs(rng, shape_q, s_len)
    _, probs = forward(q, k, v, causal)
    grads = backward(dout, q, k, v, probs)

    def loss(q_, k_, v_):
        return float(np.sum(dout * forward(q_, k_, v_, causal)[0]))

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
    twin = seam.twin("layer_norm_forward")
    chosen = twin.loop if K.USE_NUMBA else twin.reference
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


# ----- ReLU ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 3), (2, 3, 5), (1,)])
def test_relu_forward_loop_matches_numpy_twin_to_the_bit(shape):
    x = rng_for("relu_fwd", shape).standard_normal(shape)
    x.flat[0] = -0.0
    looped, reference = loop("relu_forward")(x), K.relu_forward_reference(x)
    assert looped.shape == reference.shape == shape
    assert np.array_equal(looped.view(np.int64), reference.view(np.int64))  # -0.0 included


@pytest.mark.parametrize("impl", ["loop", "reference"])
def test_relu_forward_keeps_nan_and_float32(impl):
    f = seam.twin("relu_forward").paths[impl]
    y = f(np.array([np.nan, -1.0, 2.0], np.float32))
    assert y.dtype == np.float32 and np.isnan(y[0]) and y[1] == 0.0 and y[2] == 2.0


@pytest.mark.parametrize("shape", [(7, 3), (2, 3, 5), (1,)])
def test_relu_backward_loop_matches_numpy_twin_exactly(shape):
    rng = rng_for("relu_bwd", shape)
    y = np.maximum(rng.standard_normal(shape), 0)
    dy = rng.standard_normal(shape)
    looped, reference = loop("relu_backward")(dy, y), K.relu_backward_reference(dy, y)
    assert looped.shape == reference.shape == shape
    np.testing.assert_array_equal(looped, reference)
    np.testing.assert_array_equal(reference, np.where(y > 0, dy, 0.0))


@pytest.mark.parametrize("impl", ["loop", "reference"])
def test_relu_backward_keeps_float32(impl):
    f = seam.twin("relu_backward").paths[impl]
    y = np.array([0.0, 2.0, 0.5], np.float32)
    assert f(np.ones(3, np.float32), y).dtype == np.float32


def test_relu_backward_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        K.relu_backward(np.ones(3), np.ones(4))


# ----- shapes that do not fit, and the backwards' checked residuals ---------------------


def _r(*shape):
    return rng_for("shapes").standard_normal(shape)


# One public kernel call per case, each with one array of the wrong size: the loops index
# by the other arrays' sizes, so without the check they would read past its end.
MISFITTING_CALLS = {
    "layer_norm_backward dy": lambda: K.layer_norm_backward(_r(2, 8), _r(4, 8), _r(8), _r(4), _r(4)),
    "layer_norm_backward mean": lambda: K.layer_norm_backward(_r(4, 8), _r(4, 8), _r(8), _r(2), _r(4)),
    "rms_norm_backward dy": lambda: K.rms_norm_backward(_r(2, 8), _r(4, 8), _r(8), _r(4)),
    "softmax_backward dp": lambda: K.softmax_backward(_r(2, 5), _r(4, 5)),
    "linear_forward w": lambda: K.linear_forward(_r(4, 8), _r(6, 3), _r(3)),
    "linear_forward b": lambda: K.linear_forward(_r(4, 8), _r(8, 3), _r(5)),
    "linear_backward dy": lambda: K.linear_backward(_r(2, 3), _r(4, 8), _r(8, 3)),
    "feed_forward_forward w1": lambda: K.feed_forward_forward(_r(4, 8), _r(6, 16), _r(16), _r(16, 8), _r(8), "relu"),
    "feed_forward_backward dout": lambda: K.feed_forward_backward(
        _r(2, 8), _r(4, 8), _r(8, 16), _r(16, 8), _r(4, 16), _r(4, 16), "relu"
    ),
}


@pytest.mark.parametrize("case", MISFITTING_CALLS)
def test_public_kernels_reject_an_array_that_does_not_fit_the_others(case):
    with pytest.raises(ValueError, match="do not fit"):
        MISFITTING_CALLS[case]()


CHECKED_RESIDUAL_BACKWARDS = ["layer_norm", "rms_norm", "feed_forward", "attention_sublayer"]


def _backward_case(name):
    """(backward, dout, residuals) of one of the backwards the ops' VJPs call with
    ``residuals_checked``, the residuals made by its forward."""
    rng = rng_for("residuals-checked")
    x, gamma, beta = rng.standard_normal((6, 8)), rng.standard_normal(8), rng.standard_normal(8)
    _, mean, rstd = K.layer_norm_forward(x, gamma, beta, EPS)
    _, rrms = K.rms_norm_forward(x, gamma, EPS)
    w1, b1, w2, b2 = (
        rng.standard_normal((8, 16)),
        rng.standard_normal(16),
        rng.standard_normal((16, 8)),
        rng.standard_normal(8),
    )
    _, hidden, acted = K.feed_forward_forward(x, w1, b1, w2, b2, "relu")
    tokens, _, weights, dout = sublayer_inputs(rng, 2, 3, 3, 8, cross=False)
    _, q, k, v, probs, heads = K.attention_sublayer_forward(tokens, None, *weights, 2, False)
    return {
        "layer_norm": (K.layer_norm_backward, rng.standard_normal((6, 8)), (x, gamma, mean, rstd)),
        "rms_norm": (K.rms_norm_backward, rng.standard_normal((6, 8)), (x, gamma, rrms)),
        "feed_forward": (
            K.feed_forward_backward,
            rng.standard_normal((6, 8)),
            (x, w1, w2, hidden, acted, "relu"),
        ),
        "attention_sublayer": (
            K.attention_sublayer_backward,
            dout,
            (tokens, None, *weights[::2], q, k, v, probs, heads),
        ),
    }[name]


@pytest.mark.parametrize("name", CHECKED_RESIDUAL_BACKWARDS)
def test_a_backward_with_checked_residuals_gives_the_bits_of_the_fully_checked_one(name):
    backward, dout, residuals = _backward_case(name)
    for ours, theirs in zip(backward(dout, *residuals, residuals_checked=True), backward(dout, *residuals)):
        assert (ours is None and theirs is None) or np.array_equal(ours, theirs)


@pytest.mark.parametrize("name", CHECKED_RESIDUAL_BACKWARDS)
def test_a_backward_with_checked_residuals_still_checks_the_cotangent(name):
    backward, dout, residuals = _backward_case(name)
    with pytest.raises(ValueError, match="cotangent of shape"):
        backward(dout[:-1], *residuals, residuals_checked=True)
    with pytest.raises(TypeError, match="share one dtype"):
        backward(dout.astype(np.float32), *residuals, residuals_checked=True)
    strided = np.asfortranarray(dout)  # same values, not C-contiguous: copied, not refused
    for ours, theirs in zip(backward(strided, *residuals, residuals_checked=True), backward(dout, *residuals)):
        assert (ours is None and theirs is None) or np.array_equal(ours, theirs)


@pytest.mark.parametrize("kind", ["Fortran-ordered array", "nested list"])
@pytest.mark.parametrize("name", CHECKED_RESIDUAL_BACKWARDS)
def test_a_backward_with_checked_residuals_takes_an_input_it_did_not_get_as_is_through_the_full_checks(name, kind):
    # The forward took a C-contiguous copy of such an input; the residuals hold the input itself.
    backward, dout, residuals = _backward_case(name)
    x = np.asfortranarray(residuals[0]) if kind == "Fortran-ordered array" else residuals[0].tolist()
    for ours, theirs in zip(backward(dout, x, *residuals[1:], residuals_checked=True), backward(dout, *residuals)):
        assert (ours is None and theirs is None) or np.array_equal(ours, theirs)


# ----- non-finite rows ------------------------------------------------------------------


@both_impls
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_norms_reject_a_row_holding_nan_or_inf(impl, bad):
    x, gamma, beta, _ = ln_inputs(np.random.default_rng(51), 4, 6)
    x[2, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        IMPLS[impl]["ln_fwd"](x, gamma, beta, EPS)
    with pytest.raises(ValueError, match="NaN or inf"):
        IMPLS[impl]["rms_fwd"](x, gamma, EPS)


@both_impls
def test_norms_accept_finite_rows_of_huge_values(impl):
    x, gamma, beta, _ = ln_inputs(np.random.default_rng(52), 4, 6)
    y, _, _ = IMPLS[impl]["ln_fwd"](x * 1e150, gamma, beta, EPS)
    assert np.isfinite(y).all()


# ----- the blocked attention path --------------------------------------------------------


def test_blocked_attention_keeps_float32():
    q, k, v, dout = attention_inputs(np.random.default_rng(53), (1, 2, 5, 4), 5, np.float32)
    out, probs = BLOCKED_ATTENTION[0](q, k, v, True)
    grads = BLOCKED_ATTENTION[1](dout, q, k, v, probs)
    assert {a.dtype for a in (out, probs, *grads)} == {np.dtype(np.float32)}


# ----- the blocked attention path on threads ---------------------------------------------


@pytest.fixture
def helpers():
    """A pool of helper threads of the test's own, shut down after it."""
    threads = attention_blocked.HelperThreads()
    yield threads
    threads.shutdown()


def blocked_attention_in_parts(n_parts, shape=(5, 3, 16, 8), causal=True):
    """Forward and backward of the blocked path with the batch split in ``n_parts`` parts."""
    q, k, v, dout = (token_major(a) for a in attention_inputs(np.random.default_rng(54), shape, shape[2]))
    forward, backward = (seam.twin(name).blocked for name in ("attention_forward", "attention_backward"))
    out, probs = forward(q, k, v, causal, n_parts=n_parts)
    return (out, probs, *backward(dout, q, k, v, probs, n_parts=n_parts))


@pytest.mark.parametrize("n_parts", [2, 3, 5])
def test_blocked_attention_gives_the_same_bits_in_any_number_of_parts(n_parts):
    whole = blocked_attention_in_parts(1)
    split = blocked_attention_in_parts(n_parts)
    assert all(np.array_equal(a, b) for a, b in zip(whole, split))


def test_blocked_attention_in_parts_takes_the_helper_threads():
    attention_blocked.HELPERS.shutdown()  # as in a fresh process
    blocked_attention_in_parts(3)
    assert attention_blocked.HELPERS.count == 2


def test_a_split_batch_runs_all_but_its_last_part_on_helper_threads(helpers):
    parts = []
    attention_blocked.over_batch_parts(
        lambda lo, hi: parts.append((lo, hi, threading.current_thread().name)), 5, 3, helpers
    )
    assert sorted((lo, hi) for lo, hi, _ in parts) == [(0, 1), (1, 3), (3, 5)]  # batch 5 in three parts
    assert [(lo, hi) for lo, hi, name in parts if name == threading.current_thread().name] == [(3, 5)]
    assert sum(name.startswith("lnref-attention") for _, _, name in parts) == 2


def test_a_pool_outgrown_by_more_parts_is_replaced_and_shut_down(helpers):
    attention_blocked.over_batch_parts(lambda lo, hi: None, 4, 2, helpers)
    smaller = helpers.pool
    attention_blocked.over_batch_parts(lambda lo, hi: None, 4, 3, helpers)
    assert helpers.count == 2 and helpers.pool is not smaller
    with pytest.raises(RuntimeError, match="shutdown"):
        smaller.submit(int)


def test_an_error_in_a_helper_part_reaches_the_caller(helpers):
    def failing_on_helpers(lo, hi):
        if threading.current_thread() is not threading.main_thread():
            raise FloatingPointError("in a helper part")

    with pytest.raises(FloatingPointError, match="in a helper part"):
        attention_blocked.over_batch_parts(failing_on_helpers, 4, 2, helpers)


@pytest.mark.parametrize(
    "sleep, threads, batch, work, parts",
    [
        (True, 2, 8, attention_blocked.THREADED_WORK_MIN, 2),
        (True, 4, 3, attention_blocked.THREADED_WORK_MIN, 3),  # no more parts than batch rows
        (False, 2, 8, attention_blocked.THREADED_WORK_MIN, 1),  # idle OpenBLAS workers would spin on the cores
        (True, 1, 8, attention_blocked.THREADED_WORK_MIN, 1),  # one BLAS thread: the user asked for one core
        (True, 2, 8, attention_blocked.THREADED_WORK_MIN - 1, 1),  # too little work for a hand-off
        (True, 2, 1, attention_blocked.THREADED_WORK_MIN, 1),
    ],
)
def test_the_batch_is_split_over_the_blas_threads_only_when_that_pays(monkeypatch, sleep, threads, batch, work, parts):
    monkeypatch.setattr(blas, "idle_workers_sleep", lambda: sleep)
    monkeypatch.setattr(blas, "threads", lambda: threads)
    assert attention_blocked.batch_parts(batch, work) == parts


def test_the_large_models_attention_takes_threads_and_the_medium_models_does_not():
    # (B, H, T, S, Dh) of the benchmark's large and medium models (benchmarks/bench_model.py)
    assert 8 * 8 * 64 * 64 * 32 >= attention_blocked.THREADED_WORK_MIN > 4 * 4 * 32 * 32 * 16


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_splits_the_batch_on_threads_of_its_own():
    # The parent's helper threads do not exist in a forked child (the gradient checker forks).
    blocked_attention_in_parts(2)  # the parent's pool, made
    pid = os.fork()
    if pid == 0:  # the child: any error or hang is its exit status
        import signal

        signal.alarm(60)
        try:
            whole = blocked_attention_in_parts(1)
            split = blocked_attention_in_parts(2)
            os._exit(0 if all(np.array_equal(a, b) for a, b in zip(whole, split)) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ----- the seam ---------------------------------------------------------------------------


def huge_work(twin):
    """A work past every limit of ``twin``."""
    return [10**12] * len(twin.loop_pays_up_to)


@pytest.mark.skipif(not K.USE_NUMBA, reason="the rule picks the loops only with Numba")
@pytest.mark.parametrize("twin", seam.twins(), ids=lambda twin: twin.name)
def test_with_numba_a_kernel_takes_its_loop_within_its_limits_and_past_them_its_blocked_path_or_reference(twin):
    assert twin.pick(*[0] * len(twin.loop_pays_up_to)) is twin.loop
    assert twin.pick(*twin.loop_pays_up_to) is twin.loop
    past = twin.reference if twin.blocked is None else twin.blocked
    for i in range(len(twin.loop_pays_up_to)):  # each limit on its own
        work = list(twin.loop_pays_up_to)
        work[i] += 1
        assert twin.pick(*work) is past


NUMPY_ONLY = """
import sys
sys.path.insert(0, {root!r})
from lnref.autograd.kernels import seam
print(seam.USE_NUMBA, all(twin.pick(*[work] * len(twin.loop_pays_up_to)) is twin.reference
                          for twin in seam.twins() for work in (0, 10**12)))
"""


@pytest.mark.parametrize("env", [{"LNREF_KERNELS": "numpy"}, {"NUMBA_DISABLE_JIT": "1"}], ids=["numpy", "no-jit"])
def test_without_numba_every_kernel_takes_its_numpy_twin_at_every_size(env):
    done = subprocess.run(
        [sys.executable, "-c", NUMPY_ONLY.format(root=str(ROOT))],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_forcing_the_reference_runs_every_numpy_twin_then_restores_the_rule():
    rule = {twin.name: twin.pick(*huge_work(twin)) for twin in seam.twins()}
    with seam.forced("reference"):
        assert all(twin.pick() is twin.pick(*huge_work(twin)) is twin.reference for twin in seam.twins())
        x, w, b = rng_for("forced").standard_normal((3, 2)), np.ones((2, 4)), np.ones(4)
        assert np.array_equal(K.linear_forward(x, w, b), K.linear_forward_reference(x, w, b))
    assert {twin.name: twin.pick(*huge_work(twin)) for twin in seam.twins()} == rule
    assert all(twin.override is None for twin in seam.twins())


def test_forcing_the_loop_of_one_kernel_runs_it_past_its_limit_and_leaves_the_others():
    linear, backward = seam.twin("linear_forward"), seam.twin("linear_backward")
    before = backward.pick(*huge_work(backward))
    with seam.forced("loop", "linear_forward"):
        assert linear.pick(*huge_work(linear)) is linear.loop
        assert backward.pick(*huge_work(backward)) is before


def test_a_path_a_kernel_does_not_have_cannot_be_forced():
    with pytest.raises(ValueError, match="paths"):
        with seam.forced("blocked", "linear_forward"):
            pass
    with pytest.raises(ValueError, match="path must be one of"):
        with seam.forced("numba"):
            pass
    assert all(twin.override is None for twin in seam.twins())


def test_a_replaced_kernel_runs_the_replacement_at_every_size_and_is_restored_after_an_error():
    def replacement(x, w, b):
        return "replaced"

    small, big = (rng_for("replaced", n).standard_normal((n, 8)) for n in (1, 10**4))
    w, b = np.ones((8, 8)), np.ones(8)
    with pytest.raises(RuntimeError, match="within the block"):
        with seam.replaced("linear_forward", replacement):
            assert K.linear_forward(small, w, b) == K.linear_forward(big, w, b) == "replaced"
            raise RuntimeError("an error within the block")
    assert seam.twin("linear_forward").override is None
    assert K.linear_forward(small, w, b).shape == (1, 8)


def test_an_override_is_a_path_name_or_a_callable():
    with pytest.raises(TypeError):
        seam.twin("linear_forward").override = 3
    with pytest.raises(TypeError):
        with seam.replaced("linear_forward", "loop"):
            pass
    assert seam.twin("linear_forward").override is None


def test_the_overridden_twins_are_listed_while_and_only_while_overridden():
    # What a fused kernel asks before it asks each of its parts whether it is overridden.
    assert seam.OVERRIDDEN == {twin.name for twin in seam.twins() if twin.override is not None}
    before = set(seam.OVERRIDDEN)
    with seam.forced("reference", "linear_forward"), seam.replaced("mix_streams_backward", lambda *a: None):
        assert seam.OVERRIDDEN == before | {"linear_forward", "mix_streams_backward"}
    assert seam.OVERRIDDEN == before


def test_kernels_are_named_once():
    with pytest.raises(KeyError, match="no kernel named 'linear'"):
        seam.twin("linear")
    with pytest.raises(ValueError, match="declared already"):
        seam.Twin("linear_forward", reference=K.linear_forward_reference, loop=K.linear_forward_reference)
    assert seam.twin("linear_forward").reference is K.linear_forward_reference


def test_every_public_kernel_has_a_twin_of_its_name_multi_head_attention_sharing_attentions():
    public = {name for name in K.__all__ if name.endswith(("_forward", "_backward"))}
    faces = {"multi_head_attention_forward", "multi_head_attention_backward"}  # attention's own twins
    assert {twin.name for twin in seam.twins()} == public - faces


# ----- the compilation cache -----------------------------------------------------------


def fake_kernel(cached=(), compiled=(), unreadable=False):
    """A stand-in for a Numba dispatcher with ``cache=True``: the dtypes of its signatures
    compiled in this process and of those in the index of its on-disk cache (keys shaped
    as Numba's: signature, target, source stamp)."""

    def signature(dtype):
        return (f"Array({dtype}, 2, 'C', False, aligned=True)", "float64")

    def load_index():
        if unreadable:
            raise OSError("index unreadable")
        return {(signature(dtype), ("x86_64",), ("stamp",)): f"{i}.nbc" for i, dtype in enumerate(cached)}

    cache = SimpleNamespace(_cache_file=SimpleNamespace(_load_index=load_index))
    return SimpleNamespace(signatures=[signature(dtype) for dtype in compiled], _cache=cache)


@pytest.mark.parametrize(
    "kernels, cold",
    [
        ((fake_kernel(cached=["float64"]), fake_kernel(cached=["float64"])), False),
        ((fake_kernel(cached=["float64"]), fake_kernel()), True),
        ((fake_kernel(compiled=["float64"]), fake_kernel(cached=["float64"])), False),
        ((fake_kernel(compiled=["float64"]), fake_kernel()), True),
    ],
    ids=["all-cached", "one-missing", "compiled-and-cached", "compiled-and-missing"],
)
def test_the_cache_is_cold_when_a_kernel_is_neither_compiled_nor_cached(kernels, cold):
    assert warmup.cache_is_cold(kernels, "float64") is cold


def test_the_cache_is_cold_for_a_dtype_it_has_no_signature_of():
    kernels = (fake_kernel(cached=["float64"]), fake_kernel(compiled=["float64"]))
    assert warmup.cache_is_cold(kernels, "float64") is False
    assert warmup.cache_is_cold(kernels, "float32") is True


def test_the_cache_reads_warm_when_it_cannot_tell():
    assert warmup.cache_is_cold((fake_kernel(unreadable=True), fake_kernel()), "float64") is False
    assert warmup.cache_is_cold((object(),), "float64") is False  # no cache attributes at all


COLD_PROBE = """
import sys
sys.path.insert(0, {root!r})
from lnref.autograd.kernels import warmup
kernels = warmup.FIRST_RUN_KERNELS["layernorm"]
print(warmup.compile_cache_is_cold(), sum(len(getattr(kernel, "signatures", ())) for kernel in kernels))
"""


def cold_probe(tmp_path, **env):
    """What compile_cache_is_cold says in a fresh process with an empty Numba cache, and how
    many signatures the first-run kernels then have."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), **env}
    done = subprocess.run(
        [sys.executable, "-c", COLD_PROBE.format(root=str(ROOT))], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_without_numba_nothing_is_compiled_so_the_cache_is_never_cold(tmp_path):
    assert cold_probe(tmp_path, LNREF_KERNELS="numpy") == ["False", "0"]


@pytest.mark.skipif(not K.USE_NUMBA, reason="needs Numba's JIT")
def test_an_empty_numba_cache_directory_reads_as_cold_without_compiling(tmp_path):
    assert cold_probe(tmp_path) == ["True", "0"]


@pytest.mark.skipif(not K.USE_NUMBA, reason="needs Numba's JIT")
def test_the_cache_is_warm_once_the_first_run_kernels_have_run():
    x, gamma, beta, dy = ln_inputs(np.random.default_rng(54), 3, 4)
    _, mean, rstd = loop("layer_norm_forward")(x, gamma, beta, EPS)
    loop("layer_norm_backward")(dy, x, gamma, mean, rstd)
    q, k, v, dout = (token_major(a) for a in attention_inputs(np.random.default_rng(55), (1, 1, 2, 2), 2))
    _, probs = loop("attention_forward")(q, k, v, False)
    loop("attention_backward")(dout, q, k, v, probs)
    seam.twin("attention_forward").blocked(q, k, v, False)
    loop("relu_backward")(dy, np.maximum(x, 0))
    sx, _, weights, sdout = sublayer_inputs(np.random.default_rng(56), 1, 2, 2, 4, cross=False)
    outputs = loop("attention_sublayer_forward")(sx, None, *weights, 2, False)
    loop("attention_sublayer_backward")(sdout, sx, None, *weights[::2], *outputs[1:])
    loop("linear_forward")(x, gamma[:, None] * np.ones(3), np.ones(3))
    loop("linear_backward")(dy[:, :3], x, gamma[:, None] * np.ones(3))
    fx, ffn_weights, fdout = ffn_inputs(np.random.default_rng(57), 3, 4, 5)
    _, hidden, acted = loop("feed_forward_forward")(fx, *ffn_weights, "relu")
    loop("feed_forward_backward")(fdout, fx, ffn_weights[0], ffn_weights[2], hidden, acted, "relu")
    assert warmup.compile_cache_is_cold() is False


# A fresh process with an empty cache: compile_first_run_kernels, then a first pass of a small
# model of that configuration, counting the compilations the pass starts; then whether the
# cache is cold for that configuration and for the other norm's.
FIRST_RUN = """
import sys
sys.path.insert(0, {root!r})
import lnref
from numba.core import event
from lnref.autograd.kernels import warmup
warmup.compile_first_run_kernels({dtype!r}, {norm!r})
model = lnref.build("pre", n_layers=2, norm={norm!r}, activation={activation!r}, dtype={dtype!r})
x, dy, _ = model.sample_inputs(batch=2, seq=8)
with event.install_recorder("numba:compile") as recorder:
    model.value_and_grad(x, dy)
other_norm = "rmsnorm" if {norm!r} == "layernorm" else "layernorm"
print(warmup.compile_cache_is_cold({dtype!r}, {norm!r}), warmup.compile_cache_is_cold({dtype!r}, other_norm),
      sum(1 for e in recorder.buffer if e[1].is_start))
"""


@pytest.mark.skipif(not K.USE_NUMBA, reason="compiles Numba kernels")
@pytest.mark.parametrize(
    "norm, activation, dtype",
    [("layernorm", "relu", "float64"), ("rmsnorm", "gelu", "float64"), ("layernorm", "relu", "float32")],
)
def test_after_compile_first_run_kernels_a_first_pass_compiles_nothing(tmp_path, norm, activation, dtype):
    done = subprocess.run(
        [sys.executable, "-c", FIRST_RUN.format(root=str(ROOT), norm=norm, activation=activation, dtype=dtype)],
        env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    cold, other_norm_cold, compilations = done.stdout.split()
    assert compilations == "0", done.stderr[-2000:]
    assert cold == "False"
    assert other_norm_cold == "True"  # its norm kernels were neither run nor cached


# A fresh process with an empty cache: the compilations compile_first_run_kernels starts in
# this process, and whether the cache is then cold.
COMPILED_ELSEWHERE = """
import sys
sys.path.insert(0, {root!r})
from numba.core import event
from lnref.autograd.kernels import warmup
with event.install_recorder("numba:compile") as recorder:
    warmup.compile_first_run_kernels()
print(sum(1 for e in recorder.buffer if e[1].is_start), warmup.compile_cache_is_cold())
"""


@pytest.mark.skipif(not K.USE_NUMBA or not hasattr(os, "fork"), reason="compiles Numba kernels in a forked process")
def test_compile_first_run_kernels_compiles_in_a_forked_process_and_fills_the_cache(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", COMPILED_ELSEWHERE.format(root=str(ROOT))],
        env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    compilations, cold = done.stdout.split()
    assert compilations == "0", done.stderr[-2000:]
    assert cold == "False"


# A fresh process on a copy of the package: how many compilations a call of the attention
# loop twin starts (the attention kernel calls the row softmax of softmax.py).
ATTENTION_COMPILATIONS = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
from numba.core import event
from lnref.autograd.kernels import seam
q = np.ones((1, 2, 1, 2))
with event.install_recorder("numba:compile") as recorder:
    seam.twin("attention_forward").loop(q, q, q, False)
print(sum(1 for e in recorder.buffer if e[1].is_start))
"""


@pytest.mark.skipif(not K.USE_NUMBA, reason="compiles Numba kernels")
def test_an_edit_of_any_file_of_the_package_recompiles_the_kernels_of_the_others(tmp_path):
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(ROOT / "lnref", copy / "lnref", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def compilations():
        done = subprocess.run(
            [sys.executable, "-c", ATTENTION_COMPILATIONS.format(root=str(copy))],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return int(done.stdout)

    assert compilations() > 0  # an empty cache
    assert compilations() == 0  # served by the cache
    with open(copy / "lnref" / "autograd" / "kernels" / "softmax.py", "a") as source:
        source.write("\n# an edit of the row softmax's file\n")
    assert compilations() > 0
