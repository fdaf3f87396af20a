"""Every primitive's VJP against central finite differences (float64), its input checks,
and negative controls that break a backward on purpose and show the check fails."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnref import nn
from lnref.autograd import PRIMITIVES, Tape, Tensor, fused, kernels, ops, value_and_grad
from lnref.gradcheck import check_vjp

settings.register_profile("lnref", deadline=None, max_examples=15)
settings.load_profile("lnref")


def rand(rng, *shape, low=None):
    x = rng.standard_normal(shape)
    if low is not None:  # keep away from a kink or a singularity
        x = np.sign(x) * (np.abs(x) + low)
    return x


def assert_all_pass(checks):
    statuses = [c.status for c in checks]
    assert statuses and all(s == "passed" for s in statuses), checks


def assert_some_fail(checks):
    assert any(c.status == "failed" for c in checks), checks


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


# ----- elementwise with broadcasting -----


@given(shape=shapes, seed=st.integers(0, 10_000), data=st.data())
def test_binary_ops_vjp_with_broadcasting(shape, seed, data):
    # b broadcasts against a: some axes of size 1, possibly fewer axes.
    b_shape = tuple(data.draw(st.sampled_from([n, 1])) for n in shape)[data.draw(st.integers(0, len(shape) - 1)) :]
    rng = np.random.default_rng(seed)
    a, b = rand(rng, *shape), rand(rng, *b_shape, low=0.5)
    for op in (ops.add, ops.sub, ops.mul, ops.div):
        assert_all_pass(check_vjp(op, a, b, seed=seed))


def test_neg_vjp():
    rng = np.random.default_rng(0)
    x = rand(rng, 3, 4)
    assert_all_pass(check_vjp(ops.neg, x))


def test_relu_vjp_away_from_the_kink():
    x = rand(np.random.default_rng(2), 6, 5, low=0.1)
    assert_all_pass(check_vjp(ops.relu, x))


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_vjp(approximate):
    x = rand(np.random.default_rng(3), 4, 7) * 2
    assert_all_pass(check_vjp(lambda t: ops.gelu(t, approximate=approximate), x))


def test_absolute_vjp_away_from_the_kink_and_zero_at_it():
    x = rand(np.random.default_rng(10), 4, 5, low=0.1)
    assert_all_pass(check_vjp(ops.absolute, x))
    _, residuals = PRIMITIVES["absolute"].forward(np.zeros(3))
    np.testing.assert_array_equal(PRIMITIVES["absolute"].vjp(np.ones(3), residuals)[0], np.zeros(3))


@pytest.mark.parametrize("op", [ops.tanh, ops.sigmoid], ids=["tanh", "sigmoid"])
def test_tanh_and_sigmoid_vjp(op):
    x = rand(np.random.default_rng(11), 4, 7) * 3
    assert_all_pass(check_vjp(op, x))


def test_sigmoid_saturates_without_overflow_and_matches_its_definition():
    x = np.array([-1000.0, -30.0, -1.5, 0.0, 2.0, 30.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = ops.sigmoid(x).value
    np.testing.assert_allclose(y[1:-1], 1 / (1 + np.exp(-x[1:-1])), rtol=1e-15)
    assert y[0] == 0.0 and y[-1] == 1.0


def test_a_tanh_vjp_without_the_squared_output_fails_the_check(monkeypatch):
    def broken_vjp(dout, out):
        return (dout * (1 - out),)

    monkeypatch.setitem(PRIMITIVES, "tanh", PRIMITIVES["tanh"]._replace(vjp=broken_vjp))
    assert_some_fail(check_vjp(ops.tanh, rand(np.random.default_rng(12), 3, 4)))


@pytest.mark.parametrize("name", ["mul", "div"])
def test_a_python_number_operand_gets_no_cotangent_and_the_array_its_own(name):
    primitive, x = PRIMITIVES[name], rand(np.random.default_rng(13), 2, 3, low=0.5)
    dout = np.ones_like(x)
    for args, number_at in (((2.0, x), 0), ((x, 2.0), 1)):
        _, residuals = primitive.forward(*args)
        cotangents = primitive.vjp(dout, residuals)
        assert cotangents[number_at] is None
        assert cotangents[1 - number_at].shape == x.shape


@pytest.mark.parametrize("scalar", [np.asarray(2.0), np.float64(2.0)], ids=["0-d array", "NumPy scalar"])
def test_a_scalar_operand_of_another_dtype_is_refused(scalar):
    with pytest.raises(ValueError, match="mul: mixed dtypes"):
        ops.mul(scalar, np.ones((2, 3), dtype=np.float32))


def test_a_python_number_operand_takes_the_arrays_dtype():
    assert ops.mul(2.0, np.ones((2, 3), dtype=np.float32)).value.dtype == np.float32


# ----- reductions and shapes -----


@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (-1, True), ((0, 2), False)])
def test_sum_vjp(axis, keepdims):
    x = rand(np.random.default_rng(4), 2, 3, 4)
    assert_all_pass(check_vjp(lambda t: ops.sum(t, axis=axis, keepdims=keepdims), x))


def test_reshape_vjp():
    x = rand(np.random.default_rng(5), 2, 3, 4)
    assert_all_pass(check_vjp(lambda t: ops.reshape(t, shape=(6, 4)), x))


@pytest.mark.parametrize("axis", [-1, 0])
def test_concatenate_vjp_cuts_the_cotangent_back_into_each_input(axis):
    rng = np.random.default_rng(6)
    a, b, c = rand(rng, 2, 3, 4), rand(rng, 2, 3, 4), rand(rng, 2, 3, 4)
    assert_all_pass(check_vjp(lambda *xs: ops.concatenate(*xs, axis=axis), a, b, c))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate_vjp_gives_each_input_its_slice_of_the_cotangent(axis):
    rng = np.random.default_rng(7)
    widths = (1, 3, 2)
    xs = [rand(rng, *(w if i == axis % 3 else 2 for i in range(3))) for w in widths]
    dout = rand(rng, *(sum(widths) if i == axis % 3 else 2 for i in range(3)))
    out, residuals = PRIMITIVES["concatenate"].forward(*xs, axis=axis)
    pieces = PRIMITIVES["concatenate"].vjp(dout, residuals)
    assert [p.shape for p in pieces] == [x.shape for x in xs]
    for piece, expected in zip(pieces, np.split(dout, np.cumsum(widths)[:-1], axis=axis)):
        np.testing.assert_array_equal(piece, expected)


def test_concatenate_refuses_inputs_that_do_not_line_up():
    with pytest.raises(ValueError, match="concatenate: cannot join"):
        ops.concatenate(np.zeros((2, 3)), np.zeros((3, 3)), axis=-1)


def test_index_and_embedding_lookup_vjp_with_repeated_rows():
    rng = np.random.default_rng(7)
    table = rand(rng, 5, 3)
    ids = np.array([[0, 2, 2], [4, 0, 0]])
    assert_all_pass(check_vjp(lambda t: ops.embedding(t, ids), table))
    assert_all_pass(check_vjp(lambda t: t[1:, ::2], rand(rng, 4, 4)))


@pytest.mark.parametrize(
    "index",
    [(Ellipsis, 1, slice(None)), (slice(None, None, -1), 0), 2, (None, 1)],
    ids=["ellipsis", "reversed", "int", "none"],
)
def test_the_vjp_of_basic_indexing_equals_the_scatter_add_it_stands_for(index):
    x = rand(np.random.default_rng(14), 3, 4, 5)
    out, residuals = PRIMITIVES["index"].forward(x, index=index)
    dout = rand(np.random.default_rng(15), *out.shape)
    dx_expected = np.zeros_like(x)
    np.add.at(dx_expected, index, dout)
    np.testing.assert_array_equal(PRIMITIVES["index"].vjp(dout, residuals)[0], dx_expected)


@given(
    batch=st.lists(st.integers(1, 3), max_size=2).map(tuple),
    n=st.integers(1, 4),
    k=st.integers(1, 4),
    m=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    broadcast_b=st.booleans(),
)
def test_batched_matmul_vjp(batch, n, k, m, seed, broadcast_b):
    rng = np.random.default_rng(seed)
    a = rand(rng, *batch, n, k)
    b = rand(rng, k, m) if broadcast_b else rand(rng, *batch, k, m)
    assert_all_pass(check_vjp(ops.matmul, a, b, seed=seed))


def test_linear_vjp():
    rng = np.random.default_rng(8)
    assert_all_pass(check_vjp(ops.linear, rand(rng, 2, 3, 4), rand(rng, 4, 5), rand(rng, 5)))


# ----- fused ops with hand-written backward passes -----


@given(rows=st.integers(1, 6), d=st.integers(2, 9), seed=st.integers(0, 10_000))
def test_layer_norm_vjp(rows, d, seed):
    rng = np.random.default_rng(seed)
    x, gamma, beta = rand(rng, rows, d) * 3 + 1, rand(rng, d), rand(rng, d)
    assert_all_pass(check_vjp(lambda *t: ops.layer_norm(*t, eps=1e-5), x, gamma, beta, seed=seed))


@given(rows=st.integers(1, 6), d=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_rms_norm_vjp(rows, d, seed):
    rng = np.random.default_rng(seed)
    x, gamma = rand(rng, 2, rows, d), rand(rng, d)
    assert_all_pass(check_vjp(lambda *t: ops.rms_norm(*t, eps=1e-5), x, gamma, seed=seed))


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_vjp(axis):
    x = rand(np.random.default_rng(9), 3, 4, 5)
    assert_all_pass(check_vjp(lambda t: ops.softmax(t, axis=axis), x))


@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_attention_vjp_and_its_agreement_with_attention_over_split_heads(causal):
    rng = np.random.default_rng(20)
    q, k, v = (rand(rng, 2, 5, 6) for _ in range(3))
    assert_all_pass(check_vjp(lambda *t: ops.multi_head_attention(*t, n_heads=3, causal=causal), q, k, v))
    split = [a.reshape(2, 5, 3, 2).transpose(0, 2, 1, 3) for a in (q, k, v)]
    heads = kernels.attention_forward(*[np.ascontiguousarray(a) for a in split], causal)[0]
    np.testing.assert_array_equal(
        ops.multi_head_attention(q, k, v, n_heads=3, causal=causal).value, heads.transpose(0, 2, 1, 3).reshape(2, 5, 6)
    )


def test_cross_attention_with_a_longer_memory_vjp():
    rng = np.random.default_rng(11)
    q, k, v = rand(rng, 2, 3, 8), rand(rng, 2, 6, 8), rand(rng, 2, 6, 8)
    assert_all_pass(check_vjp(lambda *t: ops.multi_head_attention(*t, n_heads=2), q, k, v))


def attention_weights(rng, d):
    """wq, bq, wk, bk, wv, bv, wo, bo of an attention sublayer, scaled like the model's."""
    return [rand(rng, d, d) / np.sqrt(d) if i % 2 == 0 else rand(rng, d) for i in range(8)]


def assert_all_pass_but_the_key_bias(checks, key_bias):
    """Every check passed except the key bias's: adding q . bk to all scores of a query
    leaves its softmax unchanged, so that gradient is exactly zero and cannot be resolved
    from finite differences (the checker says "unresolved", never "passed")."""
    assert checks[key_bias].status == "unresolved" and abs(checks[key_bias].analytic) < 1e-12, checks[key_bias]
    assert_all_pass(checks[:key_bias] + checks[key_bias + 1 :])


# The attention sublayer runs one of two implementations, chosen by size (see
# the seam, kernels.seam): the compiled loops for small sublayers, NumPy/BLAS
# products around the attention kernels otherwise. Tests of the op run both.
SUBLAYER_PATHS = {
    "loop": (
        kernels.seam.twin("attention_sublayer_forward").loop,
        kernels.seam.twin("attention_sublayer_backward").loop,
    ),
    "reference": (kernels.attention_sublayer_forward_reference, kernels.attention_sublayer_backward_reference),
}
sublayer_paths = pytest.mark.parametrize("path", sorted(SUBLAYER_PATHS))


def use_sublayer_path(monkeypatch, path):
    for i, name in enumerate(("attention_sublayer_forward", "attention_sublayer_backward")):
        monkeypatch.setattr(kernels.seam.twin(name), "override", lambda *args, i=i: SUBLAYER_PATHS[path][i](*args))


@sublayer_paths
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_sublayer_vjp(monkeypatch, path, causal):
    use_sublayer_path(monkeypatch, path)
    rng = np.random.default_rng(22)
    x, weights = rand(rng, 2, 5, 6), attention_weights(rng, 6)
    checks = check_vjp(lambda x, *w: fused.attention_sublayer(x, None, *w, n_heads=3, causal=causal), x, *weights)
    assert_all_pass_but_the_key_bias(checks, key_bias=4)  # x, wq, bq, wk, bk, ...


@sublayer_paths
def test_cross_attention_sublayer_vjp_with_a_longer_memory(monkeypatch, path):
    use_sublayer_path(monkeypatch, path)
    rng = np.random.default_rng(23)
    x, memory, weights = rand(rng, 2, 3, 4), rand(rng, 2, 7, 4), attention_weights(rng, 4)
    checks = check_vjp(lambda x, m, *w: fused.attention_sublayer(x, m, *w, n_heads=2), x, memory, *weights)
    assert_all_pass_but_the_key_bias(checks, key_bias=5)  # x, memory, wq, bq, wk, bk, ...


def ffn_weights(rng, d, d_ff):
    return [rand(rng, d, d_ff) / np.sqrt(d), rand(rng, d_ff), rand(rng, d_ff, d) / np.sqrt(d_ff), rand(rng, d)]


FFN_PATHS = {
    "loop": (kernels.seam.twin("feed_forward_forward").loop, kernels.seam.twin("feed_forward_backward").loop),
    "reference": (kernels.feed_forward_forward_reference, kernels.feed_forward_backward_reference),
}
ffn_paths = pytest.mark.parametrize("ffn_path", sorted(FFN_PATHS))


def use_ffn_path(monkeypatch, path):
    for name, implementation in zip(("feed_forward_forward", "feed_forward_backward"), FFN_PATHS[path]):
        monkeypatch.setattr(kernels.seam.twin(name), "override", implementation)


@ffn_paths
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_feed_forward_vjp(monkeypatch, ffn_path, activation):
    use_ffn_path(monkeypatch, ffn_path)
    rng = np.random.default_rng(24)
    x, weights = rand(rng, 2, 3, 4), ffn_weights(rng, 4, 8)
    hidden = x @ weights[0] + weights[1]
    assert np.abs(hidden).min() > 1e-2  # no ReLU kink within the finite-difference steps
    assert_all_pass(check_vjp(lambda *t: fused.feed_forward(*t, activation=activation), x, *weights))


@sublayer_paths
@pytest.mark.parametrize("cross", [False, True])
def test_the_fused_attention_sublayer_equals_nn_attention_in_value_and_gradients(monkeypatch, path, cross):
    use_sublayer_path(monkeypatch, path)
    rng = np.random.default_rng(27)
    x, weights = rand(rng, 2, 4, 6), attention_weights(rng, 6)
    memory = rand(rng, 2, 5, 6) if cross else None
    arrays = [x, *weights] + ([memory] if cross else [])

    def one_record(x, *rest):
        memory = rest[8] if cross else None
        return ops.sum(fused.attention_sublayer(x, memory, *rest[:8], n_heads=2, causal=not cross) * 1.3)

    def composed(x, *rest):
        p = dict(zip(nn.ATTENTION_PARAMS, rest[:8]))
        return ops.sum(nn.attention(x, p, 2, causal=not cross, memory=rest[8] if cross else None) * 1.3)

    (value, grads), (ref_value, ref_grads) = value_and_grad(one_record)(*arrays), value_and_grad(composed)(*arrays)
    np.testing.assert_allclose(value, ref_value, rtol=1e-13)
    for grad, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref, rtol=1e-12, atol=1e-14)


@ffn_paths
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_the_fused_feed_forward_equals_nn_ffn_in_value_and_gradients(monkeypatch, ffn_path, activation):
    use_ffn_path(monkeypatch, ffn_path)
    rng = np.random.default_rng(28)
    arrays = [rand(rng, 2, 3, 4), *ffn_weights(rng, 4, 8)]
    (value, grads) = value_and_grad(lambda *t: ops.sum(fused.feed_forward(*t, activation=activation) * 0.7))(*arrays)
    composed = lambda x, *w: ops.sum(nn.ffn(x, dict(zip(nn.FFN_PARAMS, w)), activation) * 0.7)  # noqa: E731
    (ref_value, ref_grads) = value_and_grad(composed)(*arrays)
    np.testing.assert_allclose(value, ref_value, rtol=1e-13)
    for grad, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref, rtol=1e-12, atol=1e-14)


def test_a_sublayer_is_one_tape_record():
    rng = np.random.default_rng(29)
    x = Tensor(rand(rng, 2, 3, 4), requires_grad=True)
    with Tape() as tape:
        fused.attention_sublayer(x, None, *attention_weights(rng, 4), n_heads=2)
        fused.feed_forward(x, *ffn_weights(rng, 4, 8))
    assert len(tape.records) == 2


def test_cross_entropy_vjp():
    rng = np.random.default_rng(12)
    logits, targets = rand(rng, 2, 3, 7), rng.integers(0, 7, size=(2, 3))
    assert_all_pass(check_vjp(lambda t: ops.cross_entropy(t, targets), logits))


# ----- negative controls: a broken backward is caught -----


def _broken_layer_norm_backward(dy, x, gamma, mean, rstd, residuals_checked=False):
    x_hat = (x - mean[:, None]) * rstd[:, None]
    g = dy * gamma
    dx = rstd[:, None] * (g - g.mean(axis=1, keepdims=True))  # drops - x_hat * mean(g * x_hat)
    return dx, (dy * x_hat).sum(axis=0), dy.sum(axis=0)


def _broken_softmax_backward(dp, p):
    return p * dp  # drops the row-sum term of diag(p) - p p^T


def _broken_attention_backward(dout, q, k, v, probs):
    scale = 1.0 / np.sqrt(q.shape[-1])
    dv = np.swapaxes(probs, -1, -2) @ dout
    dscores = probs * (dout @ np.swapaxes(v, -1, -2))  # drops the softmax row-sum term
    return dscores @ k * scale, np.swapaxes(dscores, -1, -2) @ q * scale, dv


def test_layer_norm_check_fails_without_the_projection_term(monkeypatch):
    rng = np.random.default_rng(13)
    x, gamma, beta = rand(rng, 4, 6), rand(rng, 6), rand(rng, 6)
    monkeypatch.setattr(kernels, "layer_norm_backward", _broken_layer_norm_backward)
    assert_some_fail(check_vjp(lambda *t: ops.layer_norm(*t, eps=1e-5), x, gamma, beta))


def test_layer_norm_check_fails_when_the_backward_ignores_gamma(monkeypatch):
    rng = np.random.default_rng(14)
    x, gamma, beta = rand(rng, 4, 6), rand(rng, 6), rand(rng, 6)
    original = kernels.layer_norm_backward
    monkeypatch.setattr(
        kernels,
        "layer_norm_backward",
        lambda dy, x, gamma, mean, rstd, **flags: original(dy, x, np.ones_like(gamma), mean, rstd, **flags),
    )
    assert_some_fail(check_vjp(lambda *t: ops.layer_norm(*t, eps=1e-5), x, gamma, beta))


def test_softmax_check_fails_without_the_row_sum_term(monkeypatch):
    monkeypatch.setattr(kernels, "softmax_backward", _broken_softmax_backward)
    assert_some_fail(check_vjp(ops.softmax, rand(np.random.default_rng(15), 3, 5)))


def test_multi_head_attention_check_fails_without_the_row_sum_term(monkeypatch):
    def broken(dout, q, k, v, probs):
        n_heads = probs.shape[1]
        split = [a.reshape(*a.shape[:2], n_heads, -1).transpose(0, 2, 1, 3) for a in (dout, q, k, v)]
        return tuple(
            g.transpose(0, 2, 1, 3).reshape(a.shape)
            for g, a in zip(_broken_attention_backward(*split, probs), (q, k, v))
        )

    rng = np.random.default_rng(30)
    q, k, v = (rand(rng, 1, 4, 6) for _ in range(3))
    mha = lambda *t: ops.multi_head_attention(*t, n_heads=2)  # noqa: E731
    assert_all_pass(check_vjp(mha, q, k, v))
    monkeypatch.setattr(kernels, "multi_head_attention_backward", broken)
    assert_some_fail(check_vjp(mha, q, k, v))


def test_attention_sublayer_check_fails_when_its_attention_backward_is_broken(monkeypatch):
    # A wrong dV from the attention kernel must show in the value projection's gradients
    # and in dx, and nowhere else. (The NumPy/BLAS path, which calls the kernel from Python.)
    use_sublayer_path(monkeypatch, "reference")
    rng = np.random.default_rng(31)
    x, weights = rand(rng, 2, 4, 6), attention_weights(rng, 6)
    backward = kernels.multi_head_attention_backward

    def doubled_dv(*args):
        dq, dk, dv = backward(*args)
        return dq, dk, 2.0 * dv

    monkeypatch.setattr(kernels, "multi_head_attention_backward", doubled_dv)
    checks = check_vjp(lambda x, *w: fused.attention_sublayer(x, None, *w, n_heads=2), x, *weights)
    statuses = [c.status for c in checks]  # x, wq, bq, wk, bk, wv, bv, wo, bo
    assert statuses[0] == statuses[5] == statuses[6] == "failed"
    assert statuses[1] == statuses[2] == statuses[3] == statuses[7] == statuses[8] == "passed"


def test_attention_sublayer_check_fails_when_dx_misses_the_key_and_value_paths(monkeypatch):
    rng = np.random.default_rng(32)
    x, weights = rand(rng, 2, 4, 6), attention_weights(rng, 6)
    vjp = PRIMITIVES["attention_sublayer"].vjp

    def only_the_query_path(dout, residuals):
        grads = vjp(dout, residuals)
        x, memory, wq, wk, wv, wo, q, k, v, probs, heads = residuals
        dq = kernels.multi_head_attention_backward(dout @ wo.T, q, k, v, probs)[0]
        return (dq @ wq.T, *grads[1:])

    sublayer = lambda x, *w: fused.attention_sublayer(x, None, *w, n_heads=2)  # noqa: E731
    assert_all_pass_but_the_key_bias(check_vjp(sublayer, x, *weights), key_bias=4)
    monkeypatch.setitem(
        PRIMITIVES, "attention_sublayer", PRIMITIVES["attention_sublayer"]._replace(vjp=only_the_query_path)
    )
    checks = check_vjp(sublayer, x, *weights)
    assert checks[0].status == "failed"  # dx, and only dx
    assert_all_pass_but_the_key_bias(checks[1:], key_bias=3)


def test_attention_sublayer_check_fails_when_the_loop_kernel_drops_the_key_and_value_paths_from_dx(monkeypatch):
    # The compiled backward run as if the keys and values read another input (its
    # cross-attention branch): it writes dQ Wq^T into dx and the key and value paths elsewhere.
    use_sublayer_path(monkeypatch, "loop")
    rng = np.random.default_rng(35)
    x, weights = rand(rng, 2, 4, 6), attention_weights(rng, 6)
    sublayer = lambda x, *w: fused.attention_sublayer(x, None, *w, n_heads=2)  # noqa: E731
    assert_all_pass_but_the_key_bias(check_vjp(sublayer, x, *weights), key_bias=4)

    def backward_without_the_key_and_value_paths(dout, x, memory, wq, wk, wv, wo, q, k, v, probs, heads):
        dx, _, *weight_grads = kernels.seam.twin("attention_sublayer_backward").loop(  # x as its own memory
            dout, x, x, wq, wk, wv, wo, q, k, v, probs, heads
        )
        return dx, None, *weight_grads

    monkeypatch.setitem(SUBLAYER_PATHS, "loop", (SUBLAYER_PATHS["loop"][0], backward_without_the_key_and_value_paths))
    checks = check_vjp(sublayer, x, *weights)
    assert checks[0].status == "failed"  # dx, and only dx
    assert_all_pass_but_the_key_bias(checks[1:], key_bias=3)


@pytest.mark.usefixtures("ffn_backward_without_the_relu_pattern")
def test_feed_forward_check_fails_when_the_backward_ignores_the_relu_pattern():
    rng = np.random.default_rng(33)
    x, weights = rand(rng, 2, 3, 4), ffn_weights(rng, 4, 8)
    assert_some_fail(check_vjp(lambda *t: fused.feed_forward(*t), x, *weights))


def test_feed_forward_check_fails_when_the_exact_gelu_backward_takes_the_tanh_slope():
    rng = np.random.default_rng(34)
    x, weights = rand(rng, 2, 3, 4), ffn_weights(rng, 4, 8)
    backward = kernels.feed_forward_backward_reference

    def tanh_slope(dout, x, w1, w2, hidden, acted, activation):
        return backward(dout, x, w1, w2, hidden, acted, "gelu_tanh")

    with kernels.seam.replaced("feed_forward_backward", tanh_slope):
        assert_some_fail(check_vjp(lambda *t: fused.feed_forward(*t, activation="gelu"), x, *weights))


def test_a_registered_vjp_replaced_in_the_registry_is_what_the_tape_uses(monkeypatch):
    forward, vjp = PRIMITIVES["mul"].forward, PRIMITIVES["mul"].vjp
    monkeypatch.setitem(PRIMITIVES, "mul", PRIMITIVES["mul"]._replace(vjp=lambda d, r: tuple(2 * g for g in vjp(d, r))))
    assert_some_fail(check_vjp(ops.mul, np.ones(3) * 2, np.ones(3) * 3))
    assert forward is PRIMITIVES["mul"].forward


# ----- the tape -----


def test_a_tape_pauses_the_cyclic_gc_while_it_records_and_replays_and_restores_it_after():
    import gc

    seen = []
    vjp = PRIMITIVES["neg"].vjp

    def spying_vjp(dout, residuals):
        seen.append(("replay", gc.isenabled()))
        return vjp(dout, residuals)

    was_enabled = gc.isenabled()
    gc.enable()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(PRIMITIVES, "neg", PRIMITIVES["neg"]._replace(vjp=spying_vjp))
            x = Tensor(np.ones(3), requires_grad=True)
            with Tape() as tape:
                seen.append(("record", gc.isenabled()))
                out = ops.sum(ops.neg(x))
            seen.append(("after recording", gc.isenabled()))
            tape.backward(out)
            seen.append(("after replaying", gc.isenabled()))
    finally:
        gc.enable() if was_enabled else gc.disable()
    assert seen == [("record", False), ("after recording", True), ("replay", False), ("after replaying", True)]


def test_gradients_accumulate_over_fan_out():
    # y = x * x + x uses x three times: dy/dx = 2x + 1.
    loss, (dx,) = value_and_grad(lambda x: ops.sum(x * x + x))(np.array([1.5, -2.0]))
    np.testing.assert_array_equal(dx, [4.0, -3.0])
    assert loss == 1.5**2 + 4.0 + 1.5 - 2.0


def test_tape_records_nothing_without_an_input_that_needs_a_gradient():
    with Tape() as tape:
        ops.add(Tensor(np.ones(2)), np.ones(2))
    assert tape.records == []


def test_backward_of_an_unused_input_gives_zeros():
    _, (dx, dz) = value_and_grad(lambda x, z: ops.sum(x))(np.ones(2), np.ones(3))
    np.testing.assert_array_equal(dz, np.zeros(3))


def test_float32_stays_float32():
    x = np.ones((2, 4), np.float32)
    y = ops.layer_norm(x, np.ones(4, np.float32), np.zeros(4, np.float32), eps=1e-5)
    assert y.dtype == np.float32


@sublayer_paths
def test_float32_sublayers_stay_float32(monkeypatch, path):
    use_sublayer_path(monkeypatch, path)
    rng = np.random.default_rng(34)
    x = rand(rng, 2, 3, 4).astype(np.float32)
    attn = [w.astype(np.float32) for w in attention_weights(rng, 4)]
    ffn = [w.astype(np.float32) for w in ffn_weights(rng, 4, 8)]
    _, grads = value_and_grad(
        lambda x, *w: ops.sum(fused.feed_forward(fused.attention_sublayer(x, None, *w[:8], n_heads=2), *w[8:]))
    )(x, *attn, *ffn)
    assert {g.dtype for g in grads} == {np.dtype(np.float32)}


def test_same_inputs_give_the_same_bits():
    rng = np.random.default_rng(17)
    q, k, v = (rand(rng, 2, 5, 8) for _ in range(3))

    def grads():
        mha = lambda *t: ops.multi_head_attention(*t, n_heads=2, causal=True)  # noqa: E731
        return value_and_grad(lambda *t: ops.sum(mha(*t) * 1.7))(q, k, v)[1]

    for a, b in zip(grads(), grads()):
        assert a.tobytes() == b.tobytes()


# ----- numerics at the edges -----


def test_layer_norm_on_constant_rows_is_beta_with_finite_gradients():
    x, gamma, beta = np.full((3, 5), 7.0), np.linspace(1, 2, 5), np.linspace(-1, 1, 5)
    loss, grads = value_and_grad(lambda *t: ops.sum(ops.layer_norm(*t, eps=1e-5) * 2.0))(x, gamma, beta)
    np.testing.assert_array_equal(ops.layer_norm(x, gamma, beta, eps=1e-5).value, np.broadcast_to(beta, (3, 5)))
    assert all(np.isfinite(g).all() for g in grads)


def test_layer_norm_of_huge_inputs_is_finite_and_shift_invariant():
    rng = np.random.default_rng(18)
    x = rand(rng, 4, 8)
    ones, zeros = np.ones(8), np.zeros(8)
    shifted = ops.layer_norm(x + 1e8, ones, zeros, eps=1e-5).value
    np.testing.assert_allclose(shifted, ops.layer_norm(x, ones, zeros, eps=1e-5).value, atol=1e-7)
    assert np.isfinite(ops.layer_norm(x * 1e150, ones, zeros, eps=1e-5).value).all()


def test_softmax_of_logits_of_1e4_is_finite_and_exact():
    p = ops.softmax(np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4]])).value
    np.testing.assert_array_equal(p[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(p[1], [1 / 3] * 3, rtol=1e-15)


def test_causal_attention_ignores_the_future():
    rng = np.random.default_rng(19)
    q, k, v = (rand(rng, 1, 4, 4) for _ in range(3))
    out = ops.multi_head_attention(q, k, v, n_heads=2, causal=True).value
    v_changed = v.copy()
    v_changed[:, 3, :] += 100.0  # only the last position may see it
    out_changed = ops.multi_head_attention(q, k, v_changed, n_heads=2, causal=True).value
    np.testing.assert_array_equal(out[:, :3, :], out_changed[:, :3, :])
    np.testing.assert_allclose(out[:, 0, :], v[:, 0, :], rtol=1e-15)  # the first query sees only itself


# ----- bad calls: clear ValueErrors naming the op and the shapes -----


@pytest.mark.parametrize(
    "call,words",
    [
        (lambda: ops.add(np.ones((2, 3)), np.ones((4,))), ["add", "(2, 3)", "(4,)"]),
        (lambda: ops.matmul(np.ones((2, 3)), np.ones((4, 2))), ["matmul", "(2, 3)", "(4, 2)"]),
        (lambda: ops.mul(np.ones(3), np.ones(3, np.float32)), ["mul", "float32", "float64"]),
        (lambda: ops.layer_norm(np.ones((2, 3)), np.ones(4), np.zeros(4), eps=1e-5), ["layer_norm", "(4,)", "(2, 3)"]),
        (lambda: ops.layer_norm(np.full((2, 3), np.nan), np.ones(3), np.zeros(3), eps=1e-5), ["layer_norm", "NaN"]),
        (lambda: ops.layer_norm(np.ones((2, 3)), np.ones(3), np.zeros(3), eps=0.0), ["layer_norm", "eps"]),
        (
            lambda: ops.multi_head_attention(
                np.ones((1, 2, 4)), np.ones((1, 3, 4)), np.ones((1, 3, 4)), n_heads=2, causal=True
            ),
            ["multi_head_attention", "causal"],
        ),
        (lambda: ops.softmax(np.array([[1.0, np.inf]])), ["softmax", "NaN or inf"]),
        (lambda: ops.cross_entropy(np.ones((2, 3)), np.array([0, 3])), ["cross_entropy", "targets"]),
        (lambda: ops.reshape(np.ones(6), shape=(4, 2)), ["reshape", "(6,)"]),
        (lambda: ops.embedding(np.ones((3, 2)), np.array([5])), ["embedding", "[0, 3)"]),
        (lambda: ops.rms_norm(np.array([[1.0, np.inf]]), np.ones(2), eps=1e-5), ["rms_norm", "NaN or inf"]),
        (lambda: ops.linear(np.ones((2, 3)), np.ones((4, 5)), np.ones(5)), ["linear", "(2, 3)", "(4, 5)"]),
        (lambda: ops.multi_head_attention(*np.ones((3, 1, 2, 6)), n_heads=4), ["multi_head_attention", "4 heads"]),
        (
            lambda: fused.attention_sublayer(
                np.ones((1, 2, 4)), None, *([np.ones((4, 4)), np.ones(4)] * 3), np.ones((4, 5)), np.ones(4), n_heads=2
            ),
            ["attention_sublayer", "(4, 5)"],
        ),
        (
            lambda: fused.attention_sublayer(
                np.ones((1, 2, 4)), np.ones((2, 3, 4)), *([np.ones((4, 4)), np.ones(4)] * 4), n_heads=2
            ),
            ["attention_sublayer", "memory", "(2, 3, 4)"],
        ),
        (
            lambda: fused.attention_sublayer(
                np.ones((1, 2, 4)), None, *([np.ones((4, 4), np.float32), np.ones(4)] * 4), n_heads=2
            ),
            ["attention_sublayer", "float32"],
        ),
        (
            lambda: fused.feed_forward(
                np.ones((1, 2, 4)), np.ones((4, 8)), np.ones(8), np.ones((8, 4)), np.ones(4), activation="tanh"
            ),
            ["feed_forward", "tanh"],
        ),
        (
            lambda: fused.feed_forward(np.ones((1, 2, 4)), np.ones((4, 8)), np.ones(8), np.ones((9, 4)), np.ones(4)),
            ["feed_forward", "(9, 4)"],
        ),
    ],
)
def test_bad_calls_raise_a_value_error_naming_the_op(call, words):
    with pytest.raises(ValueError) as err:
        call()
    for word in words:
        assert word in str(err.value)


def test_relu_of_an_integer_array_is_the_op_s_value_error():
    with pytest.raises(ValueError, match="relu: dtype int64"):
        ops.relu(Tensor(np.array([1, -2])))
