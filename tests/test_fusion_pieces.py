"""A replayed pass fuses the input LayerNorm (and the residual add) of a sublayer with pieces
inside, ``heads_pieces_attention`` or ``normed_feed_forward``, as it does the plain ones:
a + S(LN(a)) and S(LN(a)) become one step each (autograd.fusion), with the bits of the steps
they replace."""

import re

import numpy as np
import pytest
from tape_helpers import fused_steps, taped_and_replayed

import lnref
from lnref.autograd import fused, fused_branches, ops
from lnref.autograd.kernels import seam
from lnref.autograd.primitive import PRIMITIVES
from lnref.gradcheck import check_vjp

SMALL = dict(n_layers=3, d_model=16, n_heads=2, d_ff=64)  # the sublayers' loop kernels
MEDIUM = dict(n_layers=2, d_model=64, n_heads=4, d_ff=256)  # past their limits: BLAS
ATTENTION = "residual_normed_heads_pieces_attention"
FFN = "residual_normed_normed_feed_forward"


def _assert_same_bits(first, second):
    (loss_a, grads_a), (loss_b, grads_b) = first, second
    assert loss_a == loss_b
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


def test_sublns_layer_replays_as_two_steps():
    model = lnref.build("subln", **SMALL)
    taped_and_replayed(model)
    names = [step[0] for step in fused_steps(model)]
    assert names.count(ATTENTION) == names.count(FFN) == SMALL["n_layers"]
    assert "layer_norm" not in names[: -1 - 2]  # the final norm and the loss's steps remain


def test_normformers_layer_with_a_norm_after_the_attention_replays_as_two_steps():
    """x + LN_out(A(LN(x))): the attention's fused step takes the norm after it as well."""
    model = lnref.build("normformer", **SMALL)
    taped_and_replayed(model)
    names = [step[0] for step in fused_steps(model)]
    assert names.count(ATTENTION) == names.count(FFN) == SMALL["n_layers"]
    attention_steps = [step for step in fused_steps(model) if step[0] == ATTENTION]
    assert all(len(args) == 3 + 17 + 2 and "out_eps" in params for _, args, params, _ in attention_steps)


@pytest.mark.parametrize("scheme", ["subln", "normformer"])
@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "blas"])
@pytest.mark.parametrize(
    "config",
    [{}, {"activation": "gelu", "causal": True}, {"dtype": "float32"}],
    ids=["relu", "gelu-causal", "float32"],
)
def test_a_fused_pass_with_pieces_gives_the_bits_of_the_taped_pass(scheme, size, config):
    model = lnref.build(scheme, **size, **config)
    taped, replayed = taped_and_replayed(model)
    assert {ATTENTION, FFN} <= {step[0] for step in fused_steps(model)}
    _assert_same_bits(taped, replayed)


def test_a_norm_of_another_eps_than_the_sublayers_keeps_its_own():
    """The fused step takes the input norm's eps as ``norm_eps`` and the sublayer's as ``eps``."""
    a, gamma, beta, w1, b1, g, b, w2, b2 = _ffn_arrays()
    y = fused_branches.residual_normed_normed_feed_forward(a, gamma, beta, w1, b1, g, b, w2, b2, norm_eps=0.5, eps=1e-3)
    normed = ops.layer_norm(a, gamma, beta, eps=0.5)
    composed = a + fused.normed_feed_forward(normed, w1, b1, g, b, w2, b2, eps=1e-3)
    np.testing.assert_array_equal(y.value, composed.value)


def _attention_arrays(d=8, seed=0):
    """a (2, 3, d), the input norm's gamma and beta, the attention's 8 weights and its 9 pieces
    (two heads), every one present and none at its init value."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((2, 3, d))
    norm = [1 + 0.1 * rng.standard_normal(d), 0.1 * rng.standard_normal(d)]
    weights = [rng.standard_normal(shape) * 0.5 for _ in range(4) for shape in ((d, d), (d,))]
    head = [f(d // 2) for _ in range(3) for f in (lambda n: 1 + 0.1 * rng.standard_normal(n), rng.standard_normal)]
    pieces = [*head, 1 + 0.1 * rng.standard_normal(2), 1 + 0.1 * rng.standard_normal(d), rng.standard_normal(d)]
    return [a, *norm, *weights, *pieces]


def _ffn_arrays(d=8, d_ff=12, seed=1):
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((2, 3, d)),
        1 + 0.1 * rng.standard_normal(d),
        0.1 * rng.standard_normal(d),
        rng.standard_normal((d, d_ff)),
        rng.standard_normal(d_ff),
        1 + 0.1 * rng.standard_normal(d_ff),
        0.1 * rng.standard_normal(d_ff),
        rng.standard_normal((d_ff, d)),
        rng.standard_normal(d),
    ]


@pytest.mark.parametrize("residual", [True, False])
def test_the_fused_attention_is_its_norm_attention_and_add(residual):
    a, gamma, beta, *attention = _attention_arrays()
    y = fused_branches.residual_normed_heads_pieces_attention(a, gamma, beta, *attention, n_heads=2, residual=residual)
    branch = fused.heads_pieces_attention(ops.layer_norm(a, gamma, beta), *attention, n_heads=2)
    np.testing.assert_array_equal(y.value, (a + branch if residual else branch).value)


@pytest.mark.parametrize("residual", [True, False])
def test_the_fused_ffn_is_its_norm_ffn_and_add(residual):
    a, gamma, beta, *weights = _ffn_arrays()
    ffn = fused_branches.residual_normed_normed_feed_forward
    y = ffn(a, gamma, beta, *weights, activation="gelu", residual=residual)
    branch = fused.normed_feed_forward(ops.layer_norm(a, gamma, beta), *weights, activation="gelu")
    np.testing.assert_array_equal(y.value, (a + branch if residual else branch).value)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("out_norm", [False, True], ids=["", "out norm"])
def test_the_fused_attentions_vjp_matches_finite_differences(residual, out_norm):
    def fn(*args):
        return fused_branches.residual_normed_heads_pieces_attention(*args, n_heads=2, causal=True, residual=residual)

    rng = np.random.default_rng(9)
    out_norms = [1 + 0.1 * rng.standard_normal(8), 0.1 * rng.standard_normal(8)] if out_norm else []
    checks = check_vjp(fn, *_attention_arrays(), *out_norms)
    k_beta = checks.pop(14)  # a shift of the keys: zero by structure (nn.ZERO_BY_STRUCTURE)
    assert abs(k_beta.analytic) < 1e-12 and abs(k_beta.numeric) < k_beta.noise
    assert len(checks) == 19 + len(out_norms) and all(c.status == "passed" for c in checks), checks


def test_the_fused_attention_with_a_norm_after_it_is_its_norms_attention_and_add():
    a, gamma, beta, *attention = _attention_arrays()
    out_gamma, out_beta = 1 + 0.1 * np.arange(8), 0.01 * np.arange(8)
    y = fused_branches.residual_normed_heads_pieces_attention(
        a, gamma, beta, *attention, out_gamma, out_beta, n_heads=2, out_eps=1e-3
    )
    branch = fused.heads_pieces_attention(ops.layer_norm(a, gamma, beta), *attention, n_heads=2)
    np.testing.assert_array_equal(y.value, (a + ops.layer_norm(branch, out_gamma, out_beta, eps=1e-3)).value)


@pytest.mark.parametrize("residual", [True, False])
def test_the_fused_ffns_vjp_matches_finite_differences(residual):
    def fn(*args):
        return fused_branches.residual_normed_normed_feed_forward(*args, activation="gelu_tanh", residual=residual)

    checks = check_vjp(fn, *_ffn_arrays())
    assert len(checks) == 9 and all(c.status == "passed" for c in checks), checks


def test_an_attention_vjp_that_drops_the_skip_fails_the_finite_difference_check(monkeypatch):
    """The negative control of the VJP check: a's cotangent without the add's term."""
    defined = PRIMITIVES[ATTENTION]

    def broken_vjp(dout, residuals):
        da, *rest = defined.vjp(dout, residuals)
        return (da - dout, *rest)

    monkeypatch.setitem(PRIMITIVES, ATTENTION, defined._replace(vjp=broken_vjp))
    checks = check_vjp(
        lambda *args: fused_branches.residual_normed_heads_pieces_attention(*args, n_heads=2), *_attention_arrays()
    )
    assert [c.status for c in checks[:3]] == ["failed", "passed", "passed"]


def test_a_broken_fused_ffn_backward_changes_the_replayed_gradient(monkeypatch):
    """The negative control of the bit tests: they catch a fused VJP off by a part in a billion."""
    model = lnref.build("subln", **SMALL)
    taped, _ = taped_and_replayed(model)
    defined = PRIMITIVES[FFN]

    def off_by_a_little(dout, residuals):
        da, *rest = defined.vjp(dout, residuals)
        return (da * (1 + 1e-9), *rest)

    monkeypatch.setitem(PRIMITIVES, FFN, defined._replace(vjp=off_by_a_little))
    x, dy, memory = model.sample_inputs(seed=1)
    broken = model.value_and_grad(x, dy, memory)
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.attn.wq"], broken[1]["layers.0.attn.wq"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda args: args[:-1], "takes the attention's 8 weights and 9 pieces"),
        (lambda args: [*args, args[1], args[2][:4]], "out_beta (4,)"),
        (lambda args: [args[0], args[1][:4], *args[2:]], "gamma (4,)"),
        (lambda args: [args[0][0], *args[1:]], "do not fit one attention sublayer"),
    ],
    ids=[
        "a piece short",
        "an output norm's shift of the wrong width",
        "a norm gain of the wrong width",
        "a stream of two axes",
    ],
)
def test_attention_inputs_that_do_not_fit_are_refused_in_one_line_naming_the_op(change, message):
    with pytest.raises(ValueError, match=rf"^residual_normed_heads_pieces_attention: [^\n]*{re.escape(message)}"):
        fused_branches.residual_normed_heads_pieces_attention(*change(_attention_arrays()), n_heads=2)


def _one_weight_in_float32(args):
    return [*args[:5], args[5].astype(np.float32), *args[6:]]  # W_k of the attention's 8 weights


def test_attention_weights_of_two_dtypes_are_refused_not_cast_to_one():
    with pytest.raises(ValueError, match=r"^residual_normed_heads_pieces_attention: [^\n]*one dtype"):
        fused_branches.residual_normed_heads_pieces_attention(*_one_weight_in_float32(_attention_arrays()), n_heads=2)
    with pytest.raises(ValueError, match=r"^heads_pieces_attention: [^\n]*one dtype"):
        args = _one_weight_in_float32(_attention_arrays())
        fused.heads_pieces_attention(args[0], *args[3:], n_heads=2)  # the stream, the weights, the pieces


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan")])
def test_an_input_norm_eps_that_is_not_positive_is_refused_in_one_line(eps):
    with pytest.raises(ValueError, match=r"^residual_normed_normed_feed_forward: [^\n]*$"):
        fused_branches.residual_normed_normed_feed_forward(*_ffn_arrays(), norm_eps=eps)


PIECES = {
    "heads norm": {7, 8},  # Sub-LN
    "scale and heads norm": {6, 7, 8},  # NormFormer
    "q, k, v norms": {0, 1, 2, 3, 4, 5},  # HybridNorm
    "all": set(range(9)),
}


def _twin_pieces(present, d, n_heads, rng, dtype):
    """The nine pieces, those of the indices ``present`` drawn (gains and the scale near 1,
    shifts near 0), the others empty."""
    shapes = [(d // n_heads,)] * 6 + [(n_heads,), (d,), (d,)]
    pieces = []
    for i, shape in enumerate(shapes):
        near = 1.0 if i in (0, 2, 4, 6, 7) else 0.0
        pieces.append(near + 0.1 * rng.standard_normal(shape) if i in present else np.empty(0))
    return tuple(piece.astype(dtype) for piece in pieces)


@pytest.mark.parametrize("pieces", PIECES)
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("out_norm", [False, True], ids=["", "out norm"])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-4)], ids=["float64", "float32"])
def test_the_fused_attentions_loop_twins_agree_with_the_numpy_twins(pieces, residual, out_norm, dtype, rtol):
    rng = np.random.default_rng(5)
    shape, n_heads = (2, 5, 12), 3
    d = shape[-1]
    a = rng.standard_normal(shape).astype(dtype)
    gamma, beta = (1 + 0.1 * rng.standard_normal(d)).astype(dtype), (0.1 * rng.standard_normal(d)).astype(dtype)
    weights, biases = (
        (0.3 * rng.standard_normal((4, d, d))).astype(dtype),
        (0.1 * rng.standard_normal((4, d))).astype(dtype),
    )
    given = _twin_pieces(PIECES[pieces], d, n_heads, rng, dtype)
    out_gamma, out_beta = (1 + 0.1 * rng.standard_normal((2, d)) if out_norm else np.empty((2, 0))).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    forward, backward = seam.twin(f"{ATTENTION}_forward"), seam.twin(f"{ATTENTION}_backward")
    results = []
    for path in ("loop", "reference"):
        with seam.forced(path):  # the NumPy twin's parts their NumPy twins too
            outputs = getattr(forward, path)(
                a, gamma, beta, 1e-5, weights, biases, given, (out_gamma, out_beta), n_heads, True, 1e-5, 1e-3, residual
            )
            y, normed, mean, rstd, branch, out_mean, out_rstd, *kept = outputs
            residuals = (gamma, normed, mean, rstd, out_gamma, branch, out_mean, out_rstd, weights, *given[0:8:2])
            results.append((*outputs, *getattr(backward, path)(dy, a, *residuals, given[7], *kept, residual)))
    for loop, reference in zip(*results):
        np.testing.assert_allclose(loop, reference, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-4)], ids=["float64", "float32"])
def test_the_fused_ffns_loop_twins_agree_with_the_numpy_twins(activation, residual, dtype, rtol):
    a, gamma, beta, *weights = (array.astype(dtype) for array in _ffn_arrays(d=12, d_ff=20, seed=6))
    dy = np.random.default_rng(7).standard_normal(a.shape).astype(dtype)
    forward, backward = seam.twin(f"{FFN}_forward"), seam.twin(f"{FFN}_backward")
    results = []
    for path in ("loop", "reference"):
        with seam.forced(path):  # the NumPy twin's parts their NumPy twins too
            out = getattr(forward, path)(a, gamma, beta, 1e-5, tuple(weights), activation, 1e-5, residual)
            y, normed, mean, rstd, hidden, acted, *hidden_norm = out
            residuals = (gamma, normed, mean, rstd, weights[0], weights[2], weights[4], hidden, acted, *hidden_norm)
            results.append((*out, *getattr(backward, path)(dy, a, *residuals, activation, residual)))
    for index, (loop, reference) in enumerate(zip(*results)):
        if index != 4 or activation != "relu":  # the loop keeps ReLU's output in hidden's place, as the FFN's
            np.testing.assert_allclose(loop, reference, rtol=rtol, atol=rtol)


def test_a_fused_step_calls_a_replaced_heads_pieces_kernel():
    """While a test puts another implementation in the attention's kernel's place, the fused
    step runs the composition's public kernels, which call it."""
    calls = []
    good = seam.twin("heads_pieces_attention_forward").loop

    def counted(*args):
        calls.append(1)
        return good(*args)

    a, gamma, beta, *attention = _attention_arrays()
    with seam.replaced("heads_pieces_attention_forward", counted):
        fused_branches.residual_normed_heads_pieces_attention(a, gamma, beta, *attention, n_heads=2)
    assert calls == [1]
