"""The FFN with a LayerNorm on its hidden units as one kernel each way (Sub-LN, NormFormer):
its loop twin against its NumPy twin, the fused primitive against the composition, the
view's choice of it, and a broken backward caught."""

from __future__ import annotations

import numpy as np
import pytest

import lnref
from lnref.autograd import PRIMITIVES, fused, kernels, ops, value_and_grad
from lnref.autograd.kernels import seam
from lnref.nn import ffn

TWIN_RTOL = 1e-12


def _inputs(rows=6, d=8, d_ff=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, d))
    w1, w2 = rng.standard_normal((d, d_ff)) / 3, rng.standard_normal((d_ff, d)) / 4
    b1, b2 = rng.standard_normal(d_ff) / 5, rng.standard_normal(d) / 5
    gamma, beta = 1 + rng.standard_normal(d_ff) / 10, rng.standard_normal(d_ff) / 10
    return x, w1, b1, gamma, beta, w2, b2, rng.standard_normal((rows, d))


def _both_twins(activation):
    x, w1, b1, gamma, beta, w2, b2, dout = _inputs()
    results = {}
    for path in ("loop", "reference"):
        forward = seam.twin("normed_feed_forward_forward").paths[path]
        backward = seam.twin("normed_feed_forward_backward").paths[path]
        out, hidden, acted, normed, mean, rstd = forward(x, w1, b1, gamma, beta, w2, b2, activation, 1e-5)
        grads = backward(dout, x, w1, gamma, w2, hidden, acted, normed, mean, rstd, activation)
        results[path] = (out, normed, *grads)
    return results


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_the_loop_twin_computes_what_the_numpy_twin_does(activation):
    results = _both_twins(activation)
    for loop, reference in zip(results["loop"], results["reference"]):
        np.testing.assert_allclose(loop, reference, rtol=TWIN_RTOL, atol=TWIN_RTOL * np.abs(reference).max())


def test_the_fused_primitive_is_the_ffn_with_a_hidden_layer_norm():
    *arrays, dout = _inputs(seed=1)
    fused_value, fused_grads = value_and_grad(lambda *a: ops.sum(fused.normed_feed_forward(*a) * dout))(*arrays)

    def composed(x, w1, b1, gamma, beta, w2, b2):
        params = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
        hidden_norm = lambda h: ops.layer_norm(h, gamma, beta, eps=1e-5)  # noqa: E731
        return ops.sum(ffn(x, params, "relu", hidden_norm=hidden_norm) * dout)

    composed_value, composed_grads = value_and_grad(composed)(*arrays)
    assert fused_value == composed_value  # the same kernels in the same order
    for ours, theirs in zip(fused_grads, composed_grads):
        np.testing.assert_allclose(ours, theirs, rtol=TWIN_RTOL, atol=TWIN_RTOL * np.abs(theirs).max())


def test_a_nan_in_the_hidden_units_is_refused_in_one_line():
    x, w1, b1, gamma, beta, w2, b2, _ = _inputs()
    x[2, 3] = np.nan
    with pytest.raises(ValueError, match="normed_feed_forward: .*NaN or inf"):
        fused.normed_feed_forward(x, w1, b1, gamma, beta, w2, b2)


@pytest.mark.parametrize("scheme", ["subln", "normformer"])
def test_the_ffn_of_a_scheme_with_a_hidden_layer_norm_is_one_record(scheme):
    model = lnref.build(scheme, n_layers=2)
    model.value_and_grad(*model.sample_inputs()[:2])
    (program,) = model.replayer.programs.values()
    names = [step[0] for step in program.steps]
    assert names.count("normed_feed_forward") == model.config.n_layers
    assert "relu" not in names


def test_another_norm_kind_on_the_hidden_units_keeps_the_composition():
    model = lnref.build("subln", n_layers=2, norm="rmsnorm")
    model.value_and_grad(*model.sample_inputs()[:2])
    (program,) = model.replayer.programs.values()
    assert "normed_feed_forward" not in [step[0] for step in program.steps]


def test_the_fast_path_comparison_catches_a_normed_ffn_backward_off_by_one_part_in_a_billion(monkeypatch):
    import test_fast_paths

    vjp = PRIMITIVES["normed_feed_forward"].vjp
    off = PRIMITIVES["normed_feed_forward"]._replace(vjp=lambda d, r: tuple(g * (1 + 1e-9) for g in vjp(d, r)))
    monkeypatch.setitem(PRIMITIVES, "normed_feed_forward", off)
    with pytest.raises(AssertionError):
        test_fast_paths.test_fast_paths_give_the_compositions_gradients_to_1e_12_of_their_group("subln", "plain")


def test_the_public_kernels_are_exported():
    assert kernels.normed_feed_forward_forward is not None and kernels.normed_feed_forward_backward is not None
