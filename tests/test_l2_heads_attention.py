"""Self-attention whose queries and keys are L2-normalized per head and scaled by a gain
(``pieces.HeadL2Norm``, nGPT's q and k) as one kernel each way: its loop twin against its
NumPy twin, the fused primitive against the composition and against finite differences, the
heads of norm 0 and the shapes it refuses, the view's choice of it, and broken backwards caught."""

from __future__ import annotations

import numpy as np
import pytest

import lnref
from lnref import nn
from lnref.autograd import PRIMITIVES, Tape, Tensor, fused
from lnref.autograd.kernels import seam
from lnref.gradcheck import check_vjp
from lnref.pieces import HeadL2Norm, Scaled

TWIN_RTOL = 1e-12
N_HEADS, Q_FACTOR, K_FACTOR = 2, 16.0, 0.75
TINY = {np.float64: float(np.finfo(np.float64).tiny), np.float32: float(np.finfo(np.float32).tiny)}


def _inputs(batch=2, seq=5, d=8, seed=0, dtype=np.float64):
    """x, the eight weights of nn.ATTENTION_PARAMS, the two gains (d,), and a cotangent."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, seq, d)).astype(dtype)
    weights = [(rng.standard_normal(shape) / 3).astype(dtype) for _ in range(4) for shape in ((d, d), (d,))]
    gains = [(1 + rng.standard_normal(d) / 5).astype(dtype) for _ in range(2)]
    return x, weights, gains, rng.standard_normal((batch, seq, d)).astype(dtype)


def _fused(causal=False):
    def attention(x, *arrays):
        return fused.l2_heads_attention(
            x, *arrays, q_factor=Q_FACTOR, k_factor=K_FACTOR, n_heads=N_HEADS, causal=causal
        )

    return attention


def _composed(causal=False):
    def attention(x, *arrays):
        p = dict(zip(nn.ATTENTION_PARAMS, arrays[:8]))
        q_norm = HeadL2Norm(Scaled(arrays[8], Q_FACTOR), N_HEADS)
        k_norm = HeadL2Norm(Scaled(arrays[9], K_FACTOR), N_HEADS)
        return nn.attention(x, p, N_HEADS, causal=causal, q_norm=q_norm, k_norm=k_norm)

    return attention


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, TWIN_RTOL), (np.float32, 1e-4)], ids=["float64", "float32"])
def test_the_loop_twin_computes_what_the_numpy_twin_does(dtype, rtol, causal):
    x, (wq, bq, wk, bk, wv, bv, wo, bo), (q_gain, k_gain), dout = _inputs(dtype=dtype)
    results = {}
    for path in ("loop", "reference"):
        forward = seam.twin("l2_heads_attention_forward").paths[path]
        backward = seam.twin("l2_heads_attention_backward").paths[path]
        factors = (dtype(Q_FACTOR), dtype(K_FACTOR))
        out, *kept = forward(x, wq, bq, wk, bk, wv, bv, wo, bo, q_gain, k_gain, *factors, N_HEADS, causal, TINY[dtype])
        grads = backward(dout, x, wq, wk, wv, wo, q_gain, k_gain, *factors, *kept, TINY[dtype])
        results[path] = (out, *kept, *grads)
    for loop, reference in zip(results["loop"], results["reference"], strict=True):
        assert loop.shape == reference.shape and loop.dtype == reference.dtype
        np.testing.assert_allclose(loop, reference, rtol=rtol, atol=rtol * max(float(np.abs(reference).max()), 1.0))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_the_fused_primitive_is_the_attention_with_l2_normalized_scaled_heads(causal):
    x, weights, gains, dout = _inputs(seed=1)
    results = []
    for attention in (_fused(causal), _composed(causal)):
        leaves = [Tensor(a, requires_grad=True) for a in (x, *weights, *gains)]
        with Tape() as tape:
            out = attention(*leaves)
        tape.backward(out, dout)
        results.append((out.value, [leaf.grad for leaf in leaves]))
    (fused_out, fused_grads), (composed_out, composed_grads) = results
    np.testing.assert_array_equal(fused_out, composed_out)
    for a, b in zip(fused_grads, composed_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * float(np.abs(b).max()))


@pytest.mark.parametrize("path", ["loop", "reference"])
def test_the_fused_vjp_matches_finite_differences(path):
    x, weights, gains, _ = _inputs(seed=2)
    with seam.forced(path, "l2_heads_attention_forward", "l2_heads_attention_backward"):
        checks = check_vjp(_fused(causal=True), x, *weights, *gains)
    # bk: adding q.bk to every score of a query leaves its softmax unchanged, unless a norm on k
    # follows it (here one does), so every argument has a gradient to check.
    assert len(checks) == 11 and all(c.status == "passed" for c in checks), checks


@pytest.mark.parametrize("path", ["loop", "reference"])
def test_a_query_head_of_norm_0_is_refused_in_one_line(path):
    x, weights, gains, _ = _inputs(seed=3)
    weights[0][:, : x.shape[-1] // N_HEADS] = 0.0  # head 0's queries: x Wq + bq with bq ...
    weights[1][: x.shape[-1] // N_HEADS] = 0.0  # ... zero too
    with seam.forced(path, "l2_heads_attention_forward"):
        with pytest.raises(ValueError, match=r"^l2_heads_attention: a vector of norm 0 has no direction[^\n]*$"):
            _fused()(x, *weights, *gains)


@pytest.mark.parametrize("which", ["gain", "weight", "heads"])
def test_shapes_that_do_not_fit_are_refused_in_one_line_naming_the_op(which):
    x, weights, gains, _ = _inputs(seed=4)
    n_heads = 3 if which == "heads" else N_HEADS
    if which == "gain":
        gains[0] = gains[0][:-1]
    elif which == "weight":
        weights[2] = weights[2][:, :-1]
    with pytest.raises(ValueError, match=r"^l2_heads_attention: [^\n]*$"):
        fused.l2_heads_attention(x, *weights, *gains, n_heads=n_heads)


def test_a_backward_that_drops_the_key_gains_gradient_fails_the_finite_difference_check():
    x, weights, gains, _ = _inputs(seed=5)
    correct = seam.twin("l2_heads_attention_backward").reference

    def without_the_key_gain(*args):
        dx, dweights, dbiases, dgains = correct(*args)
        return dx, dweights, dbiases, np.stack((dgains[0], np.zeros_like(dgains[1])))

    with seam.replaced("l2_heads_attention_backward", without_the_key_gain):
        checks = check_vjp(_fused(), x, *weights, *gains)
    assert [i for i, check in enumerate(checks) if check.status == "failed"] == [10]


def _attention_steps(cross_attention=False):
    """The names of the steps of a recorded pass of a two-layer nGPT model."""
    model = lnref.build("ngpt", n_layers=2, cross_attention=cross_attention, causal=cross_attention)
    x, dy, memory = model.sample_inputs()
    model.value_and_grad(x, dy, memory)
    (program,) = model.replayer.programs.values()
    return [step[0] for step in program.steps]


def test_ngpts_self_attention_is_one_tape_record():
    names = _attention_steps()
    assert names.count("l2_heads_attention") == 2 and "multi_head_attention" not in names


def test_ngpts_cross_attention_keeps_the_composition():
    names = _attention_steps(cross_attention=True)
    assert names.count("l2_heads_attention") == 2 and names.count("multi_head_attention") == 2


def test_the_fast_path_comparison_catches_an_l2_heads_backward_off_by_one_part_in_a_billion(monkeypatch):
    import test_fast_paths

    vjp = PRIMITIVES["l2_heads_attention"].vjp
    off = PRIMITIVES["l2_heads_attention"]._replace(
        vjp=lambda d, r: tuple(None if g is None else g * (1 + 1e-9) for g in vjp(d, r))
    )
    monkeypatch.setitem(PRIMITIVES, "l2_heads_attention", off)
    with pytest.raises(AssertionError):
        test_fast_paths.test_fast_paths_give_the_compositions_gradients_to_1e_12_of_their_group("ngpt", "plain")
