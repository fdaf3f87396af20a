"""A norm-first branch whose output is scaled, y = a + w * S(LN(a)) (LayerScale's diag(lambda)),
replays as one step: ``residual_normed_attention`` or ``residual_normed_feed_forward`` with a
``branch_scale``, with the bits of the norm, the sublayer, the product and the add."""

import numpy as np
import pytest
from tape_helpers import branch_arrays_with_scale, fused_steps, replayed_with_backward_off, taped_and_replayed

import lnref
from lnref.autograd import fused, fused_branches, ops
from lnref.autograd.primitive import PRIMITIVES
from lnref.autograd.replay import Replayer
from lnref.gradcheck import check_vjp

SMALL = dict(n_layers=3, d_model=16, n_heads=2, d_ff=64)  # the sublayers' loop kernels
MEDIUM = dict(n_layers=2, d_model=64, n_heads=4, d_ff=256)  # past their limits: the NumPy twins
KEY_BIAS = 6  # the attention's bk: its gradient is zero by structure (a softmax shifted per row)
BRANCHES = {
    "attention": (fused_branches.residual_normed_attention, {"n_heads": 2, "causal": True}),
    "feed_forward": (fused_branches.residual_normed_feed_forward, {"activation": "gelu"}),
}


def _composition(branch, a, gamma, beta, *weights_and_scale, scale_first=False, **statics):
    """a + w * S(LN(a)) as the four primitives a scheme records."""
    *weights, w = weights_and_scale
    normed = ops.layer_norm(a, gamma, beta)
    if branch == "attention":
        out = fused.attention_sublayer(normed, None, *weights, **statics)
    else:
        out = fused.feed_forward(normed, *weights, **statics)
    product = ops.mul(w, out) if scale_first else ops.mul(out, w)
    return ops.add(a, product)


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("scale", ["array", "number"])
def test_the_fused_branch_with_a_scale_is_its_norm_sublayer_product_and_add(branch, scale):
    primitive, statics = BRANCHES[branch]
    *arrays, w = branch_arrays_with_scale(branch)
    w = 1.7 if scale == "number" else w
    y = primitive(*arrays, w, **statics)
    composed = _composition(branch, *arrays, w, scale_first=scale == "number", **statics)
    np.testing.assert_array_equal(y.value, composed.value)


@pytest.mark.parametrize("branch", BRANCHES)
def test_the_fused_branch_with_a_scales_vjp_matches_finite_differences(branch):
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
def test_a_backward_that_forgets_the_branchs_scale_fails_the_finite_difference_check(branch, monkeypatch):
    """The negative control of the VJP check: the branch's cotangent taken as the unscaled
    branch's, dy instead of w * dy."""
    primitive, statics = BRANCHES[branch]
    good = fused_branches._scaled_branch_vjp

    def unscaled(dy, scaled, branch_vjp):
        return good(dy, (scaled[0], np.ones_like(scaled[1])), branch_vjp)

    monkeypatch.setattr(fused_branches, "_scaled_branch_vjp", unscaled)
    checks = check_vjp(lambda *args: primitive(*args, **statics), *branch_arrays_with_scale(branch, seed=1))
    assert checks[0].status == "failed" and checks[1].status == "failed"


@pytest.mark.parametrize(
    "scale",
    [np.ones(7), np.ones((4, 2, 3, 8)), np.ones(8, dtype=np.float32), "0.5"],
    ids=["the wrong width", "more axes than the branch", "another dtype", "a string"],
)
def test_a_branch_scale_that_does_not_fit_is_refused_in_one_line_naming_the_op(scale):
    primitive, statics = BRANCHES["feed_forward"]
    *arrays, _ = branch_arrays_with_scale("feed_forward")
    with pytest.raises(ValueError, match=r"^residual_normed_feed_forward: [^\n]*$"):
        primitive(*arrays, scale, **statics)


@pytest.mark.parametrize("flags", [{"residual": False}, {"normed_skip": True}], ids=["no add", "normed skip"])
def test_a_branch_scale_without_the_streams_own_add_is_refused_in_one_line(flags):
    primitive, statics = BRANCHES["feed_forward"]
    with pytest.raises(ValueError, match=r"^residual_normed_feed_forward: branch_scale [^\n]*$"):
        primitive(*branch_arrays_with_scale("feed_forward"), **statics, **flags)


def test_a_layer_with_scaled_branches_replays_as_two_steps():
    model = lnref.build("layerscale", **SMALL)
    taped_and_replayed(model)
    names = [step[0] for step in fused_steps(model)]
    assert names.count("residual_normed_attention") == names.count("residual_normed_feed_forward") == SMALL["n_layers"]
    assert len(names) == 2 * SMALL["n_layers"] + 3  # and the final norm, the loss's mul and sum


@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "numpy"])
@pytest.mark.parametrize("config", [{}, {"activation": "gelu", "causal": True}, {"dtype": "float32"}])
def test_a_fused_scaled_branch_gives_the_bits_of_the_taped_pass(size, config):
    model = lnref.build("layerscale", **size, **config)
    (loss_a, grads_a), (loss_b, grads_b) = taped_and_replayed(model)
    assert loss_a == loss_b
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


def test_a_replay_of_scaled_branches_runs_the_fused_steps(monkeypatch):
    """The bit test above would pass as well if the fused steps raised and the replay ran the
    recorded ones: count the fused products."""
    calls = []
    forward = fused_branches._scaled_branch_forward
    monkeypatch.setattr(fused_branches, "_scaled_branch_forward", lambda *args: calls.append(1) or forward(*args))
    taped_and_replayed(lnref.build("layerscale", **SMALL))
    assert len(calls) == 2 * SMALL["n_layers"]


@pytest.mark.parametrize("branch", BRANCHES)
def test_a_broken_fused_scaled_branch_backward_changes_the_replayed_gradient(branch):
    """The negative control of the bit tests: the normed branch's fused VJP off by a part in a
    billion."""
    model = lnref.build("layerscale", **SMALL)
    taped, _ = taped_and_replayed(model)
    broken = replayed_with_backward_off(model, f"residual_normed_{branch}_backward")
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.attn.wq"], broken[1]["layers.0.attn.wq"])


def test_a_scale_cotangent_off_by_a_part_in_a_billion_changes_the_replayed_gradient(monkeypatch):
    """The negative control of the scale's own cotangent, which no kernel computes."""
    model = lnref.build("layerscale", **SMALL)
    taped, _ = taped_and_replayed(model)
    good = fused_branches._scaled_branch_vjp

    def off(dy, scaled, branch_vjp):
        *grads, dscale = good(dy, scaled, branch_vjp)
        return (*grads, dscale * (1 + 1e-9))

    monkeypatch.setattr(fused_branches, "_scaled_branch_vjp", off)
    _, grads = model.value_and_grad(*model.sample_inputs(seed=1))
    assert not np.array_equal(taped[1]["layers.0.layerscale_attn"], grads["layers.0.layerscale_attn"])


def test_a_replay_runs_the_scaled_branch_unfused_while_mul_is_swapped(monkeypatch):
    model = lnref.build("layerscale", **SMALL)
    taped_and_replayed(model)
    mul = PRIMITIVES["mul"]
    monkeypatch.setitem(PRIMITIVES, "mul", mul._replace(vjp=lambda dout, residuals: (None, None)))
    _, grads = model.value_and_grad(*model.sample_inputs(seed=1))
    assert not np.any(grads["layers.0.layerscale_attn"])


def _scaled_program(between=None, computed_scale=False):
    """The program of sum((a + w * F(LN(a))) * c), with ``between`` ("w", "product" or None) a
    step between the product and the add that reads w or the product; with
    ``computed_scale``, the scale a value of the pass, w * c."""

    def fn(a, gamma, beta, w1, b1, w2, b2, w, c):
        out = fused.feed_forward(ops.layer_norm(a, gamma, beta), w1, b1, w2, b2)
        product = out * (w * c) if computed_scale else out * w
        extra = w * c if between == "w" else product * c if between == "product" else c * c
        return ops.sum((a + product) * extra)

    arrays = [*branch_arrays_with_scale("feed_forward", seed=5), np.random.default_rng(6).standard_normal((2, 3, 8))]
    replayer = Replayer()
    replayer.value_and_grad("key", fn, arrays, [True] * 9)
    return replayer.programs["key"]


def test_a_scaled_branch_is_fused_when_no_step_between_reads_its_scale():
    names = [step[0] for step in _scaled_program().fused_steps]
    assert names == ["mul", "residual_normed_feed_forward", "mul", "sum"]  # c * c, the branch, the loss


@pytest.mark.parametrize("between", ["w", "product"])
def test_a_scaled_branch_is_not_fused_when_a_step_between_reads_its_scale_or_product(between):
    """w's cotangent would come at the add's place, after the term of the step between (or the
    product's cotangent would be a sum the fused VJP does not form)."""
    steps = _scaled_program(between).fused_steps
    assert not any(name == "residual_normed_feed_forward" and len(args) == 8 for name, args, _, _ in steps)


def test_a_branch_scaled_by_a_value_computed_in_the_pass_is_not_fused():
    """Its shape is not known before the pass runs: the fused step could refuse it and the
    whole pass run unfused."""
    steps = _scaled_program(computed_scale=True).fused_steps
    assert not any(name == "residual_normed_feed_forward" and len(args) == 8 for name, args, _, _ in steps)
