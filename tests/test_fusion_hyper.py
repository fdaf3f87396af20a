"""Hyper-connections' copies replay as their stack (autograd.stacked_copies): the index steps
that hand a layer's copies on one by one go, the next layer's connections take the stack, and
each sublayer between its connections runs as one step (``mixed_normed_*``), with the bits of
the taped pass."""

import contextlib

import numpy as np
import pytest
from tape_helpers import (
    assert_same_bits,
    fused_steps,
    recorded_program,
    replayed_with_backward_off,
    same_bits,
    taped_and_replayed,
)

import lnref
from lnref.autograd import fused_branches, fused_copies, mixing_ops, ops, value_and_grad
from lnref.autograd.kernels import seam
from lnref.autograd.primitive import PRIMITIVES
from lnref.autograd.replay import Replayer
from lnref.gradcheck import check_vjp

SMALL = dict(n_layers=3, d_model=16, n_heads=2, d_ff=64)  # the sublayers' loop kernels
MEDIUM = dict(n_layers=2, d_model=64, n_heads=4, d_ff=256)  # past their limits: BLAS
KEY_BIAS = 9  # the attention's bk among the fused step's arguments: zero gradient by structure
BRANCHES = {
    "attention": (fused_copies.mixed_normed_attention, {"n_heads": 2, "causal": True}),
    "feed_forward": (fused_copies.mixed_normed_feed_forward, {"activation": "gelu"}),
}


def _fused_names(model):
    return [step[0] for step in fused_steps(model)]


@pytest.mark.parametrize("n", [1, 2, 4])
def test_static_hyper_replays_without_index_steps_between_layers(n):
    model = lnref.build("hyper", **SMALL, options={"n": n})
    taped_and_replayed(model)
    assert _fused_names(model).count("index") == n  # the last layer's, which the readout's sum reads


@pytest.mark.parametrize("n", [1, 2, 4])
def test_static_hyper_replays_one_step_per_sublayer_between_its_mixtures(n):
    """Each sublayer but the first, whose copies are the embedding n times, not a stack."""
    model = lnref.build("hyper", **SMALL, options={"n": n})
    taped_and_replayed(model)
    names = _fused_names(model)
    assert names.count("mixed_normed_attention") == SMALL["n_layers"] - 1
    assert names.count("mixed_normed_feed_forward") == SMALL["n_layers"]
    assert names.count("weighted_sum") == names.count("mix_streams") == 1


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "blas"])
def test_a_replayed_static_hyper_pass_gives_the_bits_of_the_taped_pass(n, dtype, size):
    model = lnref.build("hyper", **size, dtype=dtype, options={"n": n})
    assert_same_bits(*taped_and_replayed(model))


@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "blas"])
def test_a_replayed_hyper_pass_with_gelu_and_a_causal_mask_gives_the_bits_of_the_taped_pass(size):
    model = lnref.build("hyper", **size, activation="gelu", causal=True)
    assert_same_bits(*taped_and_replayed(model))


def test_dynamic_hyper_replays_its_copies_as_stacks_and_keeps_the_bits_of_the_taped_pass():
    """Its connections read the copies through a concatenate too, which takes the stack."""
    model = lnref.build("hyper", **SMALL, options={"dynamic": True})
    taped, replayed = taped_and_replayed(model)
    recorded = [step[0] for step in recorded_program(model).steps]
    assert recorded.count("index") == 4 * 2 * SMALL["n_layers"]
    assert _fused_names(model).count("index") == 4  # the last layer's, which the readout's sum reads
    assert_same_bits(taped, replayed)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dynamic_hyper_replays_one_step_per_sublayer_between_its_connections(dtype):
    """Its connections' weights are computed in the pass, one set per token; each sublayer but
    the first (its copies are the embedding n times) is one step, with the bits of the taped pass."""
    model = lnref.build("hyper", **SMALL, dtype=dtype, options={"dynamic": True})
    taped, replayed = taped_and_replayed(model)
    names = _fused_names(model)
    assert names.count("mixed_normed_attention") == SMALL["n_layers"] - 1
    assert names.count("mixed_normed_feed_forward") == SMALL["n_layers"]
    assert names.count("weighted_sum") == names.count("mix_streams") == 1
    assert_same_bits(taped, replayed)


def test_a_broken_stacked_weighted_sum_backward_changes_the_replayed_gradient():
    """The negative control of the bit tests: a VJP off by a part in a billion where the terms
    come stacked, which only the replay's stacks take between layers."""
    model = lnref.build("hyper", **SMALL)
    taped, _ = taped_and_replayed(model)
    good = seam.twin("weighted_sum_backward").loop

    def off_when_stacked(dy, w, xs):
        dw, dxs = good(dy, w, xs)
        return (dw * (1 + 1e-9), dxs) if isinstance(xs, np.ndarray) and len(xs) == 4 else (dw, dxs)

    with seam.replaced("weighted_sum_backward", off_when_stacked):
        broken = model.value_and_grad(*model.sample_inputs(seed=1))
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.1.hc_attn.am"], broken[1]["layers.1.hc_attn.am"])


def test_a_replay_runs_the_index_steps_while_index_is_swapped(monkeypatch):
    model = lnref.build("hyper", **SMALL)
    taped_and_replayed(model)
    index = PRIMITIVES["index"]
    monkeypatch.setitem(PRIMITIVES, "index", index._replace(vjp=lambda dout, residuals: (None,)))
    _, grads = model.value_and_grad(*model.sample_inputs(seed=1))
    assert not np.any(grads["layers.0.attn.wq"])


def _copies_program(extra_reader):
    """The program of two mixtures of the copies of X = 2 a, each copy handed on by ``index``;
    with ``extra_reader``, a third step reads the last copy."""

    def fn(a, w, r, b, s):
        stack = a * 2.0
        copies = [stack[j] for j in range(3)]
        mixed = ops.mix_streams(r, b, s, *copies)
        total = ops.sum(ops.weighted_sum(w, *copies) * s) + ops.sum(mixed * mixed)
        return total + ops.sum(copies[2]) if extra_reader else total

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((3, 2, 4, 8)), np.array([1.0, 0.0, -0.5]), rng.standard_normal((3, 2))]
    arrays += [rng.standard_normal(2), rng.standard_normal((2, 4, 8))]
    replayer, differentiate = Replayer(), [True] * len(arrays)
    replayer.value_and_grad("key", fn, arrays, differentiate)
    replayed = replayer.value_and_grad("key", fn, arrays, differentiate)
    return replayer.programs["key"], replayed, value_and_grad(fn)(*arrays)


def test_copies_read_by_the_mixtures_alone_are_read_as_their_stack():
    program, (out, grads), (taped_out, taped_grads) = _copies_program(extra_reader=False)
    names = [step[0] for step in program.fused_steps]
    assert "index" not in names and all(step[2].get("stacked") for step in program.fused_steps[1:3])
    assert out.value == taped_out
    for mine, theirs in zip(grads, taped_grads, strict=True):
        np.testing.assert_array_equal(same_bits(mine), same_bits(theirs))


def test_copies_with_another_reader_keep_their_index_steps():
    program, (out, grads), (taped_out, taped_grads) = _copies_program(extra_reader=True)
    assert [step[0] for step in program.fused_steps] == [step[0] for step in program.steps]
    assert out.value == taped_out
    for mine, theirs in zip(grads, taped_grads, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_a_stack_read_as_its_copies_gets_the_positive_zeros_of_the_index_vjps():
    """A zero weight times a negative cotangent is -0.0; an index VJP adds it into +0.0."""

    def fn(a, w):
        stack = a * 2.0
        copies = [stack[j] for j in range(2)]
        return ops.sum(ops.weighted_sum(w, *copies) * -1.0)

    arrays = [np.ones((2, 3, 4)), np.array([1.0, 0.0])]
    replayer, differentiate = Replayer(), [True, True]
    replayer.value_and_grad("key", fn, arrays, differentiate)
    _, grads = replayer.value_and_grad("key", fn, arrays, differentiate)
    assert "index" not in [step[0] for step in replayer.programs["key"].fused_steps]
    _, taped_grads = value_and_grad(fn)(*arrays)
    assert not np.any(np.signbit(taped_grads[0][1])) and not np.any(np.signbit(grads[0][1]))


def _sublayer_arrays(branch, seed=0, n=3, d=8):
    """(xs, a_m, a_r, b, gamma, beta, the sublayer's weights...)."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((n, 2, 3, d)), rng.standard_normal(n), rng.standard_normal((n, n))]
    arrays += [rng.standard_normal(n), 1 + 0.1 * rng.standard_normal(d), 0.1 * rng.standard_normal(d)]
    if branch == "attention":
        return arrays + [a for _ in range(4) for a in (0.3 * rng.standard_normal((d, d)), 0.1 * rng.standard_normal(d))]
    arrays += [0.5 * rng.standard_normal((d, 12)), 0.1 * rng.standard_normal(12)]
    return arrays + [0.5 * rng.standard_normal((12, d)), 0.1 * rng.standard_normal(d)]


def _three_steps(branch, xs, a_m, a_r, b, gamma, beta, *weights, **statics):
    """The three primitives the fused step stands for, on stacked copies."""
    normed = getattr(fused_branches, f"residual_normed_{branch}")
    width = mixing_ops.weighted_sum(a_m, xs, stacked=True)
    return mixing_ops.mix_streams(a_r, b, normed(width, gamma, beta, *weights, residual=False, **statics), xs,
                                  stacked=True)  # fmt: skip


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("path", [None, "reference"], ids=["loops", "numpy"])
def test_the_fused_sublayer_gives_the_bits_of_its_three_steps_each_way(branch, path):
    primitive, statics = BRANCHES[branch]
    arrays = _sublayer_arrays(branch)
    dy = np.random.default_rng(1).standard_normal(arrays[0].shape)
    with seam.forced(path) if path else contextlib.nullcontext():
        fused_y, fused_grads = value_and_grad(lambda *a: ops.sum(primitive(*a, **statics) * dy))(*arrays)
        y, grads = value_and_grad(lambda *a: ops.sum(_three_steps(branch, *a, **statics) * dy))(*arrays)
    assert fused_y == y
    for mine, theirs in zip(fused_grads, grads, strict=True):
        np.testing.assert_array_equal(same_bits(mine), same_bits(theirs))


@pytest.mark.parametrize("branch", BRANCHES)
def test_the_fused_sublayers_vjp_matches_finite_differences(branch):
    primitive, statics = BRANCHES[branch]
    checks = check_vjp(lambda *args: primitive(*args, **statics), *_sublayer_arrays(branch, seed=2))
    resolved = [c for i, c in enumerate(checks) if branch != "attention" or i != KEY_BIAS]
    assert all(c.status == "passed" for c in resolved), checks


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-4)], ids=["float64", "float32"])
def test_the_fused_sublayers_loop_twins_agree_with_its_numpy_twins(branch, dtype, rtol):
    _, statics = BRANCHES[branch]
    xs, a_m, a_r, b, gamma, beta, *weights = (array.astype(dtype) for array in _sublayer_arrays(branch, seed=3))
    dy = np.random.default_rng(4).standard_normal(xs.shape).astype(dtype)
    forward, backward = seam.twin(f"mixed_normed_{branch}_forward"), seam.twin(f"mixed_normed_{branch}_backward")
    results = []
    for path in ("loop", "reference"):
        with seam.forced(path):  # the NumPy twin's parts their NumPy twins too
            y, h, s, *kept = getattr(forward, path)(xs, a_m, a_r, b, gamma, beta, 1e-5, tuple(weights),
                                                   *statics.values())  # fmt: skip
            if branch == "attention":
                residuals = (a_m, a_r, b, h, s, gamma, *kept[:3], *weights[::2], *kept[3:])
            else:
                residuals = (a_m, a_r, b, h, s, gamma, *kept[:3], weights[0], weights[2], *kept[3:], "gelu")
            results.append((y, h, s, *kept, *getattr(backward, path)(dy, xs, *residuals)))
    for loop, reference in zip(*results, strict=True):
        np.testing.assert_allclose(loop, reference, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("branch", BRANCHES)
def test_a_broken_fused_sublayer_backward_changes_the_replayed_gradient(branch):
    """The negative control of the bit tests: a fused VJP off by a part in a billion."""
    model = lnref.build("hyper", **SMALL)
    taped, _ = taped_and_replayed(model)
    broken = replayed_with_backward_off(model, f"mixed_normed_{branch}_backward")
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.attn.wq"], broken[1]["layers.0.attn.wq"])


def test_a_replay_runs_the_sublayers_unfused_while_mix_streams_is_swapped(monkeypatch):
    model = lnref.build("hyper", **SMALL)
    taped_and_replayed(model)
    mix = PRIMITIVES["mix_streams"]
    monkeypatch.setitem(PRIMITIVES, "mix_streams", mix._replace(vjp=lambda dout, res: (None, *mix.vjp(dout, res)[1:])))
    _, grads = model.value_and_grad(*model.sample_inputs(seed=1))
    assert not np.any(grads["layers.1.hc_attn.ar"])
