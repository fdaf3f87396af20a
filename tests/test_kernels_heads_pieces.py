"""Self-attention with a head scale and a LayerNorm between the heads and W_o as one kernel
each way (NormFormer, Sub-LN): its loop twin against its NumPy twin, the fused primitive
against the composition, the view's choice of it, and a broken backward caught."""

from __future__ import annotations

import numpy as np
import pytest

import lnref
from lnref.autograd import PRIMITIVES, fused, ops, value_and_grad
from lnref.autograd.kernels import seam
from lnref.nn import attention

TWIN_RTOL = 1e-12
PIECES = {"scale": (True, False), "norm": (False, True), "both": (True, True)}


def _inputs(batch=2, seq=5, d=8, n_heads=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, seq, d))
    weights = [rng.standard_normal(shape) / 3 for _ in range(4) for shape in ((d, d), (d,))]
    scale = 1 + rng.standard_normal(n_heads) / 5
    gamma, beta = 1 + rng.standard_normal(d) / 10, rng.standard_normal(d) / 10
    return x, weights, scale, gamma, beta, rng.standard_normal((batch, seq, d))


@pytest.mark.parametrize("pieces", PIECES)
def test_the_loop_twin_computes_what_the_numpy_twin_does(pieces):
    x, weights, scale, gamma, beta, dout = _inputs()
    with_scale, with_norm = PIECES[pieces]
    empty = np.empty(0)
    stacked, biases = np.stack(weights[0::2]), np.stack(weights[1::2])
    arguments = (scale if with_scale else empty, gamma if with_norm else empty, beta if with_norm else empty)
    results = {}
    for path in ("loop", "reference"):
        forward = seam.twin("heads_pieces_attention_forward").paths[path]
        backward = seam.twin("heads_pieces_attention_backward").paths[path]
        out, *kept = forward(x, stacked, biases, *arguments, 2, False, 1e-5)
        grads = backward(dout, x, stacked, arguments[0], arguments[1], *kept)
        results[path] = (out, *grads)
    for loop, reference in zip(results["loop"], results["reference"]):
        scale_of = max(float(np.abs(reference).max()), 1.0) if reference.size else 1.0
        np.testing.assert_allclose(loop, reference, rtol=TWIN_RTOL, atol=TWIN_RTOL * scale_of)


@pytest.mark.parametrize("pieces", PIECES)
def test_the_fused_primitive_is_the_attention_with_its_pieces(pieces):
    x, weights, scale, gamma, beta, dout = _inputs(seed=1)
    with_scale, with_norm = PIECES[pieces]

    def fused_loss(x, *rest):
        *weights, scale, gamma, beta = rest
        s, g, b = (scale if with_scale else None), (gamma if with_norm else None), (beta if with_norm else None)
        return ops.sum(fused.heads_pieces_attention(x, *weights, s, g, b, n_heads=2) * dout)

    def composed_loss(x, *rest):
        *weights, scale, gamma, beta = rest
        params = dict(zip(("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo"), weights))
        norm = (lambda h: ops.layer_norm(h, gamma, beta, eps=1e-5)) if with_norm else None
        out = attention(x, params, 2, head_scale=scale if with_scale else None, heads_norm=norm)
        return ops.sum(out * dout) + 0.0 * ops.sum(scale) + 0.0 * ops.sum(gamma) + 0.0 * ops.sum(beta)

    arrays = (x, *weights, scale, gamma, beta)
    fused_value, fused_grads = value_and_grad(fused_loss)(*arrays)
    composed_value, composed_grads = value_and_grad(composed_loss)(*arrays)
    assert fused_value == composed_value  # the same kernels in the same order
    for ours, theirs in zip(fused_grads, composed_grads):
        np.testing.assert_allclose(ours, theirs, rtol=TWIN_RTOL, atol=TWIN_RTOL * max(np.abs(theirs).max(), 1.0))


@pytest.mark.parametrize("scheme", ["subln", "normformer"])
def test_the_attention_of_a_scheme_with_pieces_before_w_o_is_one_record(scheme):
    model = lnref.build(scheme, n_layers=2)
    model.value_and_grad(*model.sample_inputs()[:2])
    (program,) = model.replayer.programs.values()
    names = [step[0] for step in program.steps]
    assert names.count("heads_pieces_attention") == model.config.n_layers
    assert "multi_head_attention" not in names


def test_another_norm_kind_between_the_heads_and_w_o_keeps_the_composition():
    model = lnref.build("subln", n_layers=2, norm="rmsnorm")
    model.value_and_grad(*model.sample_inputs()[:2])
    (program,) = model.replayer.programs.values()
    assert "heads_pieces_attention" not in [step[0] for step in program.steps]


def test_the_fast_path_comparison_catches_a_heads_pieces_backward_off_by_one_part_in_a_billion(monkeypatch):
    import test_fast_paths

    vjp = PRIMITIVES["heads_pieces_attention"].vjp
    off = PRIMITIVES["heads_pieces_attention"]._replace(
        vjp=lambda d, r: tuple(None if g is None else g * (1 + 1e-9) for g in vjp(d, r))
    )
    monkeypatch.setitem(PRIMITIVES, "heads_pieces_attention", off)
    with pytest.raises(AssertionError):
        test_fast_paths.test_fast_paths_give_the_compositions_gradients_to_1e_12_of_their_group("normformer", "plain")
