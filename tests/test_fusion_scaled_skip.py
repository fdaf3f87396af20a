"""A norm-last branch whose skip is scaled, y = LN(w * a + S(a)) (Admin's omega, DeepNorm's
alpha), replays as one step: ``normed_sum_attention`` or ``normed_sum_feed_forward`` with a
``skip_scale``, with the bits of the product, the sublayer, the add and the norm."""

import numpy as np
import pytest
from tape_helpers import branch_arrays_with_scale, fused_steps, replayed_with_backward_off, taped_and_replayed

import lnref
from lnref.autograd import fused, fused_branches, ops
from lnref.autograd.kernels import seam
from lnref.autograd.primitive import PRIMITIVES
from lnref.autograd.replay import Replayer
from lnref.gradcheck import check_vjp

SMALL = dict(n_layers=3, d_model=16, n_heads=2, d_ff=64)  # the sublayers' loop kernels
MEDIUM = dict(n_layers=2, d_model=64, n_heads=4, d_ff=256)  # past their limits: the NumPy twins
SCHEMES = ("admin", "deepnorm")
KEY_BIAS = 6  # the attention's bk: its gradient is zero by structure (a softmax shifted per row)
BRANCHES = {
    "attention": (fused_branches.normed_sum_attention, {"n_heads": 2, "causal": True}),
    "feed_forward": (fused_branches.normed_sum_feed_forward, {"activation": "gelu"}),
}


def _composition(branch, a, gamma, beta, *weights_and_scale, scale_first=False, **statics):
    """LN(w * a + S(a)) as the four primitives a scheme records."""
    *weights, w = weights_and_scale
    if branch == "attention":
        out = fused.attention_sublayer(a, None, *weights, **statics)
    else:
        out = fused.feed_forward(a, *weights, **statics)
    product = ops.mul(w, a) if scale_first else ops.mul(a, w)
    return ops.layer_norm(ops.add(product, out), gamma, beta)


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("scale", ["array", "number"])
def test_the_fused_branch_with_a_scaled_skip_is_its_product_sublayer_add_and_norm(branch, scale):
    primitive, statics = BRANCHES[branch]
    *arrays, w = branch_arrays_with_scale(branch)
    w = 1.7 if scale == "number" else w
    y = primitive(*arrays, w, **statics)
    composed = _composition(branch, *arrays, w, scale_first=scale == "number", **statics)
    np.testing.assert_array_equal(y.value, composed.value)


@pytest.mark.parametrize("branch", BRANCHES)
def test_the_fused_branch_with_a_scaled_skips_vjp_matches_finite_differences(branch):
    primitive, statics = BRANCHES[branch]
    checks = check_vjp(lambda *args: primitive(*args, **statics), *branch_arrays_with_scale(branch, seed=1))
    resolved = [c for i, c in enumerate(checks) if branch != "attention" or i != KEY_BIAS]
    assert len(checks) == len(branch_arrays_with_scale(branch)) and all(c.status == "passed" for c in resolved), checks


@pytest.mark.parametrize("branch", BRANCHES)
def test_the_fused_branch_with_a_constant_scale_has_the_vjp_of_its_composition(branch):
    primitive, statics = BRANCHES[branch]
    checks = check_vjp(lambda *args: primitive(*args, 0.6, **statics), *branch_arrays_with_scale(branch, seed=2)[:-1])
    assert all(c.status == "passed" for i, c in enumerate(checks) if branch != "attention" or i != KEY_BIAS), checks


@pytest.mark.parametrize("branch", BRANCHES)
def test_a_backward_that_forgets_the_skips_scale_fails_the_finite_difference_check(branch):
    """The negative control of the VJP check: the stream's cotangent through the skip taken as
    the plain skip's, dtotal instead of w * dtotal."""
    primitive, statics = BRANCHES[branch]
    name = f"normed_scaled_sum_{branch}_backward"
    good = seam.twin(name).loop

    def unscaled(dy, a, w, *residuals):
        return good(dy, a, np.ones_like(w), *residuals)

    with seam.replaced(name, unscaled):
        checks = check_vjp(lambda *args: primitive(*args, **statics), *branch_arrays_with_scale(branch, seed=1))
    assert checks[0].status == "failed"


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-4)], ids=["float64", "float32"])
def test_the_loop_twins_with_a_scaled_skip_agree_with_the_numpy_twins(branch, dtype, rtol):
    _, statics = BRANCHES[branch]
    a, gamma, beta, *weights, w = (array.astype(dtype) for array in branch_arrays_with_scale(branch, seed=3))
    dy = np.random.default_rng(4).standard_normal(a.shape).astype(dtype)
    forward = seam.twin(f"normed_scaled_sum_{branch}_forward")
    backward = seam.twin(f"normed_scaled_sum_{branch}_backward")
    results = []
    for path in ("loop", "reference"):
        with seam.forced(path):  # the NumPy twin's parts their NumPy twins too
            outputs = getattr(forward, path)(a, w, gamma, beta, 1e-5, tuple(weights), *statics.values())
            y, total, mean, rstd, *kept = outputs
            if branch == "attention":
                residuals = (w, gamma, total, mean, rstd, *weights[::2], *kept)
            else:
                residuals = (w, gamma, total, mean, rstd, weights[0], weights[2], *kept, statics["activation"])
            results.append((y, total, mean, rstd, *kept, *getattr(backward, path)(dy, a, *residuals)))
    for loop, reference in zip(*results):
        np.testing.assert_allclose(loop, reference, rtol=rtol, atol=rtol)


@pytest.mark.parametrize(
    "scale",
    [np.ones(7), np.ones((1, 8)), np.ones(8, dtype=np.float32), np.float64(2.0)],
    ids=["the wrong width", "a leading axis", "another dtype", "a NumPy scalar"],
)
def test_a_skip_scale_that_does_not_fit_is_refused_in_one_line_naming_the_op(scale):
    primitive, statics = BRANCHES["feed_forward"]
    *arrays, _ = branch_arrays_with_scale("feed_forward")
    with pytest.raises(ValueError, match=r"^normed_sum_feed_forward: [^\n]*$"):
        primitive(*arrays, scale, **statics)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_layer_with_scaled_skips_replays_as_two_steps(scheme):
    model = lnref.build(scheme, **SMALL)
    taped_and_replayed(model)
    names = [step[0] for step in fused_steps(model)]
    assert names.count("normed_sum_attention") == names.count("normed_sum_feed_forward") == SMALL["n_layers"]
    assert len(names) == 2 * SMALL["n_layers"] + 2  # and the loss's mul and sum


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "numpy"])
@pytest.mark.parametrize("config", [{}, {"activation": "gelu", "causal": True}, {"dtype": "float32"}])
def test_a_fused_scaled_skip_gives_the_bits_of_the_taped_pass(scheme, size, config):
    model = lnref.build(scheme, **size, **config)
    (loss_a, grads_a), (loss_b, grads_b) = taped_and_replayed(model)
    assert loss_a == loss_b
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


@pytest.mark.parametrize("scheme, branch", [("admin", "attention"), ("deepnorm", "feed_forward")])
def test_a_broken_fused_scaled_skip_backward_changes_the_replayed_gradient(scheme, branch):
    """The negative control of the bit tests: a fused VJP off by a part in a billion."""
    model = lnref.build(scheme, **SMALL)
    taped, _ = taped_and_replayed(model)
    broken = replayed_with_backward_off(model, f"normed_scaled_sum_{branch}_backward")
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.attn.wq"], broken[1]["layers.0.attn.wq"])


def test_a_replay_runs_the_scaled_skip_unfused_while_mul_is_swapped(monkeypatch):
    model = lnref.build("admin", **SMALL)
    taped_and_replayed(model)
    mul = PRIMITIVES["mul"]
    monkeypatch.setitem(PRIMITIVES, "mul", mul._replace(vjp=lambda dout, residuals: (None, None)))
    _, grads = model.value_and_grad(*model.sample_inputs(seed=1))
    assert not np.any(grads["layers.0.omega_attn"])


def _scaled_program(between, computed_scale=False):
    """The program of sum(LN(w * a + F(a)) * c), with ``between`` ("w", "product" or None) a
    step between the product and the norm that reads w or the product; with
    ``computed_scale``, the scale a value of the pass, w * c."""

    def fn(a, gamma, beta, w1, b1, w2, b2, w, c):
        product = a * (w * c) if computed_scale else a * w
        out = fused.feed_forward(a, w1, b1, w2, b2)
        extra = w * c if between == "w" else product * c if between == "product" else c * c
        return ops.sum(ops.layer_norm(product + out, gamma, beta) * extra)

    arrays = [*branch_arrays_with_scale("feed_forward", seed=5), np.random.default_rng(6).standard_normal((2, 3, 8))]
    replayer = Replayer()
    replayer.value_and_grad("key", fn, arrays, [True] * 9)
    return replayer.programs["key"]


def test_a_scaled_skip_is_fused_when_no_step_between_reads_its_scale():
    fused_steps = _scaled_program(between=None).fused_steps
    assert [step[0] for step in fused_steps] == ["mul", "normed_sum_feed_forward", "mul", "sum"]


@pytest.mark.parametrize("between", ["w", "product"])
def test_a_scaled_skip_is_not_fused_when_a_step_between_reads_its_scale_or_product(between):
    """w's cotangent would come at the norm's place, after the term of the step between (or the
    product's cotangent would be a sum the fused VJP does not form)."""
    names = [step[0] for step in _scaled_program(between).fused_steps]
    assert "normed_sum_feed_forward" not in names


def test_a_skip_scaled_by_a_value_computed_in_the_pass_is_not_fused():
    """Its shape is not known before the pass runs (here that of a, not of a's last axis): the
    fused step would refuse it and the whole pass run unfused."""
    names = [step[0] for step in _scaled_program(between=None, computed_scale=True).fused_steps]
    assert "normed_sum_feed_forward" not in names
