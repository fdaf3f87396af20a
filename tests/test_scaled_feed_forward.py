"""The feed-forward sublayer with a scale on its hidden units, act((x W1 + b1) * c s) W2 + b2
(``nn.ffn`` with a ``hidden_scale`` that is a ``pieces.Scaled``, nGPT's s_u), as one kernel
each way: its loop twin against its NumPy twin, the fused primitive against the composition
and against finite differences, the shapes it refuses, the view's choice of it, and a broken
backward caught."""

from __future__ import annotations

import numpy as np
import pytest

import lnref
from lnref import nn
from lnref.autograd import Tape, Tensor, fused
from lnref.autograd.kernels import seam
from lnref.gradcheck import check_vjp
from lnref.pieces import Scaled

TWIN_RTOL = 1e-12
FACTOR = 4.0
ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


def _inputs(rows=6, d=8, d_ff=16, seed=0, dtype=np.float64):
    """x (2, rows / 2, d), W1, b1, the scale s (d_ff,), W2, b2, and a cotangent."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, rows // 2, d))
    w1, b1 = rng.standard_normal((d, d_ff)) / 3, rng.standard_normal(d_ff) / 5
    s = 1 + rng.standard_normal(d_ff) / 5
    w2, b2 = rng.standard_normal((d_ff, d)) / 3, rng.standard_normal(d) / 5
    dout = rng.standard_normal(x.shape)
    return [a.astype(dtype) for a in (x, w1, b1, s, w2, b2, dout)]


def _fused(activation):
    return lambda x, w1, b1, s, w2, b2: fused.scaled_feed_forward(
        x, w1, b1, s, w2, b2, scale_factor=FACTOR, activation=activation
    )


def _composed(activation):
    def ffn(x, w1, b1, s, w2, b2):
        return nn.ffn(x, {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, activation, hidden_scale=Scaled(s, FACTOR).compose())

    return ffn


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype, rtol", [(np.float64, TWIN_RTOL), (np.float32, 1e-5)], ids=["float64", "float32"])
def test_the_loop_twin_computes_what_the_numpy_twin_does(dtype, rtol, activation):
    x, w1, b1, s, w2, b2, dout = _inputs(dtype=dtype)
    rows, drows = x.reshape(-1, x.shape[-1]), dout.reshape(-1, dout.shape[-1])
    results = {}
    for path in ("loop", "reference"):
        forward = seam.twin("scaled_feed_forward_forward").paths[path]
        backward = seam.twin("scaled_feed_forward_backward").paths[path]
        out, hidden, scaled, acted = forward(rows, w1, b1, s, dtype(FACTOR), w2, b2, activation)
        grads = backward(drows, rows, w1, s, dtype(FACTOR), w2, hidden, scaled, acted, activation)
        # For ReLU the loop writes acted over scaled, which only the GELUs' backward reads.
        results[path] = (out, hidden, acted, *grads) + (() if activation == "relu" else (scaled,))
    for loop, reference in zip(results["loop"], results["reference"], strict=True):
        assert loop.shape == reference.shape and loop.dtype == reference.dtype
        np.testing.assert_allclose(loop, reference, rtol=rtol, atol=rtol * max(float(np.abs(reference).max()), 1.0))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_the_fused_primitive_is_the_ffn_with_a_scale_on_its_hidden_units(activation):
    *arrays, dout = _inputs(seed=1)
    results = []
    for ffn in (_fused(activation), _composed(activation)):
        leaves = [Tensor(a, requires_grad=True) for a in arrays]
        with Tape() as tape:
            out = ffn(*leaves)
        tape.backward(out, dout)
        results.append((out.value, [leaf.grad for leaf in leaves]))
    (fused_out, fused_grads), (composed_out, composed_grads) = results
    np.testing.assert_array_equal(fused_out, composed_out)
    for a, b in zip(fused_grads, composed_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * float(np.abs(b).max()))


@pytest.mark.parametrize("path", ["loop", "reference"])
def test_the_fused_vjp_matches_finite_differences(path):
    *arrays, _ = _inputs(seed=2)
    with seam.forced(path, "scaled_feed_forward_forward", "scaled_feed_forward_backward"):
        checks = check_vjp(_fused("gelu"), *arrays)
    assert len(checks) == 6 and all(c.status == "passed" for c in checks), checks


@pytest.mark.parametrize("which", ["scale", "w2"])
def test_shapes_that_do_not_fit_are_refused_in_one_line_naming_the_op(which):
    x, w1, b1, s, w2, b2, _ = _inputs(seed=3)
    if which == "scale":
        s = s[:-1]
    else:
        w2 = w2[:-1]
    with pytest.raises(ValueError, match=r"^scaled_feed_forward: [^\n]*$"):
        fused.scaled_feed_forward(x, w1, b1, s, w2, b2)


def test_a_backward_that_drops_the_factor_from_the_scales_gradient_fails_the_check():
    *arrays, _ = _inputs(seed=4)
    correct = seam.twin("scaled_feed_forward_backward").reference

    def scale_gradient_off(*args):
        dx, dw1, db1, ds, dw2, db2 = correct(*args)
        return dx, dw1, db1, ds / FACTOR, dw2, db2

    with seam.replaced("scaled_feed_forward_backward", scale_gradient_off):
        checks = check_vjp(_fused("relu"), *arrays)
    assert [i for i, check in enumerate(checks) if check.status == "failed"] == [3]


def test_ngpts_ffn_is_one_step_of_a_recorded_pass():
    model = lnref.build("ngpt", n_layers=2)
    model.value_and_grad(*model.sample_inputs()[:2])
    (program,) = model.replayer.programs.values()
    names = [step[0] for step in program.steps]
    assert names.count("scaled_feed_forward") == 2 and "linear" not in names
