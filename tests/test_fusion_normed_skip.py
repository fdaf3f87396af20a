"""A branch whose skip is its norm's output, y = LN(a) + F(LN(a)) (HybridNorm's Post-Norm FFN),
replays as one step: ``residual_normed_feed_forward`` with ``normed_skip``, with the bits of the
norm, the FFN and the add."""

import numpy as np
import pytest
from tape_helpers import fused_steps, replayed_with_backward_off, taped_and_replayed

import lnref
from lnref.autograd import fused, fused_branches, ops
from lnref.autograd.kernels import seam
from lnref.autograd.replay import Replayer
from lnref.gradcheck import check_vjp

SMALL = dict(n_layers=3, d_model=16, n_heads=2, d_ff=64)
MEDIUM = dict(n_layers=2, d_model=64, n_heads=4, d_ff=256)


def _arrays(seed=0, d=8, d_ff=12):
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((2, 3, d)),
        1 + 0.1 * rng.standard_normal(d),
        0.1 * rng.standard_normal(d),
        0.5 * rng.standard_normal((d, d_ff)),
        0.1 * rng.standard_normal(d_ff),
        0.5 * rng.standard_normal((d_ff, d)),
        0.1 * rng.standard_normal(d),
    ]


def test_the_fused_branch_with_a_normed_skip_is_its_norm_ffn_and_add():
    a, gamma, beta, *weights = _arrays()
    y = fused_branches.residual_normed_feed_forward(a, gamma, beta, *weights, activation="gelu", normed_skip=True)
    normed = ops.layer_norm(a, gamma, beta)
    np.testing.assert_array_equal(y.value, (normed + fused.feed_forward(normed, *weights, activation="gelu")).value)


def test_the_fused_branch_with_a_normed_skips_vjp_matches_finite_differences():
    def fn(*args):
        return fused_branches.residual_normed_feed_forward(*args, activation="gelu", normed_skip=True)

    checks = check_vjp(fn, *_arrays(seed=1))
    assert len(checks) == 7 and all(c.status == "passed" for c in checks), checks


def test_a_backward_that_forgets_the_skip_fails_the_finite_difference_check():
    """The negative control of the VJP check: the normed skip's backward taken as the plain
    residual's (dy added to da instead of dnormed)."""
    good = seam.twin("residual_normed_feed_forward_backward").loop

    def plain_skip(*args):
        *residuals, residual, _ = args
        return good(*residuals, residual, False)

    def fn(*args):
        return fused_branches.residual_normed_feed_forward(*args, activation="gelu", normed_skip=True)

    with seam.replaced("residual_normed_feed_forward_backward", plain_skip):
        checks = check_vjp(fn, *_arrays(seed=1))
    assert checks[0].status == "failed"


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-4)], ids=["float64", "float32"])
def test_the_loop_twins_with_a_normed_skip_agree_with_the_numpy_twins(activation, dtype, rtol):
    a, gamma, beta, *weights = (array.astype(dtype) for array in _arrays(seed=2))
    dy = np.random.default_rng(3).standard_normal(a.shape).astype(dtype)
    forward, backward = (
        seam.twin("residual_normed_feed_forward_forward"),
        seam.twin("residual_normed_feed_forward_backward"),
    )
    results = []
    for path in ("loop", "reference"):
        with seam.forced(path):  # the NumPy twin's parts their NumPy twins too
            y, normed, mean, rstd, hidden, acted = getattr(forward, path)(
                a, gamma, beta, 1e-5, tuple(weights), activation, True, True
            )
            residuals = (gamma, normed, mean, rstd, weights[0], weights[2], hidden, acted, activation, True, True)
            results.append((y, normed, mean, rstd, acted, *getattr(backward, path)(dy, a, *residuals)))
    for loop, reference in zip(*results):
        np.testing.assert_allclose(loop, reference, rtol=rtol, atol=rtol)


def test_hybridnorms_layer_replays_as_three_steps():
    """The attention with its q, k, v norms, its residual add, and the Post-Norm FFN with its
    norm and its normed skip; in the last layer the final norm takes the FFN and its add as
    Post-LN's branch, LN(u + F(u))."""
    model = lnref.build("hybridnorm", **SMALL)
    taped_and_replayed(model)
    names = [step[0] for step in fused_steps(model)]
    skips = [step for step in fused_steps(model) if step[2].get("normed_skip")]
    assert len(skips) == SMALL["n_layers"] - 1 and all(step[0] == "residual_normed_feed_forward" for step in skips)
    assert names.count("normed_sum_feed_forward") == 1
    assert names.count("heads_pieces_attention") == SMALL["n_layers"]


@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "blas"])
@pytest.mark.parametrize("config", [{}, {"activation": "gelu", "causal": True}, {"dtype": "float32"}])
def test_a_fused_normed_skip_gives_the_bits_of_the_taped_pass(size, config):
    model = lnref.build("hybridnorm", **size, **config)
    (loss_a, grads_a), (loss_b, grads_b) = taped_and_replayed(model)
    assert loss_a == loss_b
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


def test_a_broken_fused_normed_skip_backward_changes_the_replayed_gradient():
    """The negative control of the bit tests: a fused VJP off by a part in a billion."""
    model = lnref.build("hybridnorm", **SMALL)
    taped, _ = taped_and_replayed(model)
    broken = replayed_with_backward_off(model, "residual_normed_feed_forward_backward")
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.attn.wq"], broken[1]["layers.0.attn.wq"])


def _skip_program(between):
    """The program of sum(n + F(n)) * c, n = LN(a), with ``between`` a step between the norm and
    the add that reads a (or c)."""

    def fn(a, gamma, beta, w1, b1, w2, b2, c):
        normed = ops.layer_norm(a, gamma, beta)
        squared = a * a if between else c * c
        return ops.sum((normed + fused.feed_forward(normed, w1, b1, w2, b2)) * squared)

    arrays = [*_arrays(seed=4), np.random.default_rng(5).standard_normal((2, 3, 8))]
    replayer = Replayer()
    replayer.value_and_grad("key", fn, arrays, [True] * 8)
    return replayer.programs["key"]


def test_a_normed_skip_is_fused_when_no_step_between_reads_the_stream():
    fused_steps = _skip_program(between=False).fused_steps
    assert [step[0] for step in fused_steps] == ["mul", "residual_normed_feed_forward", "mul", "sum"]


def test_a_normed_skip_is_not_fused_when_a_step_between_reads_the_stream():
    """a's cotangent from the norm would come at the add's place, before the term of the step
    between: another order of the sum than the tape's."""
    program = _skip_program(between=True)
    assert not any(step[2].get("normed_skip") for step in program.fused_steps)
