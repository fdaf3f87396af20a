"""mHC's copies replay as their stack and each sublayer between its mappings as one step
(autograd.stacked_copies): the mappings' concatenate, the width connection and the depth
connections take the stack, the index steps go, and weighted_sum, the normed sublayer and
mix_streams (H_res transposed) become one ``mixed_normed_*`` step whose weights are computed in
the pass, one set per token, with the bits of the taped pass. (The mappings then join that step,
``mapped_normed_*``: test_fusion_mhc_maps.py; the tests of the step list here leave them out.)"""

import contextlib

import numpy as np
import pytest
from tape_helpers import (
    assert_same_bits,
    assert_same_program_bits,
    fused_steps,
    mhc_with_varied_mappings,
    replayed_with_backward_off,
    same_bits,
    taped_and_replayed,
)

from lnref.autograd import fused, fused_branches, fused_copies, mapped_copies, mixing_ops, ops, value_and_grad
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
MAPPINGS = ["concatenate", "layer_norm", "scaled_linear", "scaled_linear", "scaled_linear", "reshape", "sinkhorn"]


def _mhc(size=SMALL, **options):
    return mhc_with_varied_mappings(size, **options)


def _names(steps):
    return [step[0] for step in steps]


@pytest.fixture
def mappings_apart(monkeypatch):
    """Programs made within the test keep the mappings apart from the mixed steps."""
    monkeypatch.setattr(mapped_copies, "fuse_mapped_sublayers", lambda steps, fixed, output_slot: list(steps))


def test_mhc_replays_each_sublayer_after_the_first_as_its_mappings_and_one_fused_step(mappings_apart):
    """The first sublayer's copies are the embedding n times, not a stack: its steps stay."""
    model = _mhc()
    taped_and_replayed(model)
    names = _names(fused_steps(model))
    first = [*MAPPINGS, "weighted_sum", "residual_normed_attention", "mix_streams"]
    later = [[*MAPPINGS, f"mixed_normed_{branch}"] for branch in ("feed_forward", "attention")]
    sublayers = [*later[0], *(later[1] + later[0]) * (SMALL["n_layers"] - 1)]
    assert names[: len(first) + len(sublayers)] == first + sublayers
    assert names.count("index") == 4  # the last layer's, which the readout's sum reads


def test_mhc_mappings_read_the_copies_through_a_stacked_concatenate(mappings_apart):
    model = _mhc()
    taped_and_replayed(model)
    concatenates = [step for step in fused_steps(model) if step[0] == "concatenate"]
    assert [step[2] for step in concatenates[1:]] == [{"axis": -1, "stacked": True}] * (2 * SMALL["n_layers"] - 1)
    assert len(concatenates[0][1]) == 4  # the embedding, four times


def test_mhc_fused_steps_take_h_res_transposed(mappings_apart):
    model = _mhc()
    taped_and_replayed(model)
    fused = [step for step in fused_steps(model) if step[0].startswith("mixed_normed")]
    assert fused and all(step[2]["transpose"] is True for step in fused)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "blas"])
def test_a_replayed_mhc_pass_gives_the_bits_of_the_taped_pass(dtype, size):
    assert_same_bits(*taped_and_replayed(_mhc(size, dtype=dtype)))


@pytest.mark.parametrize("n", [2, 3])
def test_a_replayed_mhc_pass_of_other_widths_gives_the_bits_of_the_taped_pass(n):
    model = _mhc(options={"n": n})
    taped, replayed = taped_and_replayed(model)
    assert _names(fused_steps(model)).count("index") == n
    assert_same_bits(taped, replayed)


def test_a_replayed_mhc_pass_with_gelu_and_a_causal_mask_gives_the_bits_of_the_taped_pass():
    assert_same_bits(*taped_and_replayed(_mhc(activation="gelu", causal=True)))


@pytest.mark.parametrize("branch", BRANCHES)
def test_a_broken_fused_mhc_sublayer_backward_changes_the_replayed_gradient(branch):
    """The negative control of the bit tests: a fused VJP off by a part in a billion."""
    model = _mhc()
    taped, _ = taped_and_replayed(model)
    broken = replayed_with_backward_off(model, f"mixed_normed_{branch}_backward")
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.attn.wq"], broken[1]["layers.0.attn.wq"])


def test_a_replay_runs_the_recorded_concatenates_while_concatenate_is_swapped(monkeypatch):
    model = _mhc()
    taped_and_replayed(model)
    concatenate, stacked = PRIMITIVES["concatenate"], []

    def noting_stacked(*xs, **params):
        stacked.append(params.get("stacked", False))
        return concatenate.forward(*xs, **params)

    monkeypatch.setitem(PRIMITIVES, "concatenate", concatenate._replace(forward=noting_stacked))
    model.value_and_grad(*model.sample_inputs(seed=1))
    assert stacked == [False] * (2 * SMALL["n_layers"])


# ----- the stacked concatenate --------------------------------------------------------


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_a_stacked_concatenate_gives_the_bits_of_its_rows_given_apart_each_way(axis):
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((3, 2, 4, 5))
    apart, kept_apart = PRIMITIVES["concatenate"].forward(*stack, axis=axis)
    stacked, kept = PRIMITIVES["concatenate"].forward(stack, axis=axis, stacked=True)
    np.testing.assert_array_equal(same_bits(stacked), same_bits(apart))
    assert not np.shares_memory(stacked, stack)
    dy = -rng.standard_normal(apart.shape)
    (rows,) = PRIMITIVES["concatenate"].vjp(dy, kept)
    np.testing.assert_array_equal(same_bits(rows), same_bits(np.stack(PRIMITIVES["concatenate"].vjp(dy, kept_apart))))


def test_a_stacked_concatenate_refuses_more_than_one_array():
    with pytest.raises(ValueError, match="stacked"):
        PRIMITIVES["concatenate"].forward(np.ones((2, 3)), np.ones((2, 3)), stacked=True)


# ----- the fused step with weights per token ------------------------------------------


def _sublayer_arrays(branch, seed=0, n=3, d=8):
    """(xs, a_m, a_r, b, gamma, beta, the sublayer's weights...), the mixtures' weights one set
    per token, a_r (B, T, n, n) to be read transposed."""
    rng = np.random.default_rng(seed)
    tokens = (2, 3)
    arrays = [rng.standard_normal((n, *tokens, d)), rng.standard_normal((*tokens, n))]
    arrays += [rng.standard_normal((*tokens, n, n)), rng.standard_normal((*tokens, n))]
    arrays += [1 + 0.1 * rng.standard_normal(d), 0.1 * rng.standard_normal(d)]
    if branch == "attention":
        return arrays + [a for _ in range(4) for a in (0.3 * rng.standard_normal((d, d)), 0.1 * rng.standard_normal(d))]
    arrays += [0.5 * rng.standard_normal((d, 12)), 0.1 * rng.standard_normal(12)]
    return arrays + [0.5 * rng.standard_normal((12, d)), 0.1 * rng.standard_normal(d)]


def _three_steps(branch, xs, a_m, a_r, b, gamma, beta, *weights, **statics):
    """The three primitives the fused step stands for, on stacked copies, a_r transposed."""
    normed = getattr(fused_branches, f"residual_normed_{branch}")
    width = mixing_ops.weighted_sum(a_m, xs, stacked=True)
    return mixing_ops.mix_streams(a_r, b, normed(width, gamma, beta, *weights, residual=False, **statics), xs,
                                  stacked=True, transpose=True)  # fmt: skip


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("path", [None, "reference"], ids=["loops", "numpy"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_the_fused_sublayer_with_weights_per_token_gives_the_bits_of_its_three_steps_each_way(branch, path, dtype):
    primitive, statics = BRANCHES[branch]
    arrays = [array.astype(dtype) for array in _sublayer_arrays(branch)]
    dy = np.random.default_rng(1).standard_normal(arrays[0].shape).astype(dtype)
    with seam.forced(path) if path else contextlib.nullcontext():
        fused_y, fused_grads = value_and_grad(lambda *a: ops.sum(primitive(*a, **statics, transpose=True) * dy))(
            *arrays
        )
        y, grads = value_and_grad(lambda *a: ops.sum(_three_steps(branch, *a, **statics) * dy))(*arrays)
    assert fused_y == y
    for mine, theirs in zip(fused_grads, grads, strict=True):
        assert mine.dtype == theirs.dtype
        np.testing.assert_array_equal(same_bits(mine), same_bits(theirs))


@pytest.mark.parametrize("branch", BRANCHES)
def test_the_fused_sublayers_vjp_with_weights_per_token_matches_finite_differences(branch):
    primitive, statics = BRANCHES[branch]
    checks = check_vjp(lambda *args: primitive(*args, **statics, transpose=True), *_sublayer_arrays(branch, seed=2))
    resolved = [c for i, c in enumerate(checks) if branch != "attention" or i != KEY_BIAS]
    assert all(c.status == "passed" for c in resolved), checks


@pytest.mark.parametrize("branch", BRANCHES)
def test_the_fused_sublayer_refuses_depth_weights_shared_with_a_per_token_b(branch):
    primitive, statics = BRANCHES[branch]
    xs, a_m, a_r, b, *rest = _sublayer_arrays(branch)
    with pytest.raises(ValueError):
        primitive(xs, a_m, a_r[0, 0], b, *rest, **statics)


# ----- the fusion's conditions, on a program of mHC's shape ---------------------------

N, D = 3, 8


def _mapped_program(extra=None):
    """The replayed program and gradients of one sublayer between mixtures of the copies of
    X = 2 a, each copy handed on by ``index``, its weights computed from their concatenate as
    mHC's are (one set per token, the depth weights transposed), and the taped gradients.
    ``extra``: "weight between", a step between the width and depth connections reads b;
    "copies after", a weighted sum after the depth connections reads the copies."""

    def fn(a, wm, wr, wb, gamma, beta, w1, b1, w2, b2):
        stack = a * 2.0
        copies = [stack[j] for j in range(N)]
        vec = ops.concatenate(*copies, axis=-1)
        a_m, b = ops.matmul(vec, wm), ops.matmul(vec, wb)
        a_r = ops.reshape(ops.matmul(vec, wr), shape=(*vec.shape[:-1], N, N))
        s = fused.feed_forward(ops.layer_norm(ops.weighted_sum(a_m, *copies), gamma, beta), w1, b1, w2, b2)
        between = ops.sum(b * b) if extra == "weight between" else 0.0
        mixed = ops.mix_streams(a_r, b, s, *copies, transpose=True)
        after = ops.sum(ops.weighted_sum(a_m, *copies)) if extra == "copies after" else 0.0
        return ops.sum(mixed * mixed) + between + after

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((N, 2, 4, D))]
    arrays += [0.2 * rng.standard_normal((N * D, cols)) for cols in (N, N * N, N)]
    arrays += [1 + 0.1 * rng.standard_normal(D), 0.1 * rng.standard_normal(D)]
    arrays += [0.5 * rng.standard_normal((D, 12)), 0.1 * rng.standard_normal(12)]
    arrays += [0.5 * rng.standard_normal((12, D)), 0.1 * rng.standard_normal(D)]
    replayer, differentiate = Replayer(), [True] * len(arrays)
    replayer.value_and_grad("key", fn, arrays, differentiate)
    replayed = replayer.value_and_grad("key", fn, arrays, differentiate)
    return replayer.programs["key"], replayed, value_and_grad(fn)(*arrays)


def test_a_sublayer_between_mixtures_with_weights_computed_per_token_is_one_step():
    program, replayed, taped = _mapped_program()
    names = _names(program.fused_steps)
    assert "mixed_normed_feed_forward" in names and "index" not in names
    assert not {"weighted_sum", "mix_streams", "residual_normed_feed_forward"}.intersection(names)
    assert_same_program_bits(replayed, taped)


def test_a_sublayer_whose_weight_is_read_between_its_mixtures_stays_three_steps():
    program, replayed, taped = _mapped_program("weight between")
    names = _names(program.fused_steps)
    assert "mixed_normed_feed_forward" not in names and "index" not in names
    assert {"weighted_sum", "mix_streams", "residual_normed_feed_forward"} <= set(names)
    assert_same_program_bits(replayed, taped)


def test_a_sublayer_whose_copies_are_read_after_its_mixtures_stays_three_steps():
    """On the tape the later reader's term comes first in the copies' cotangent, a sum the
    fused step cannot split."""
    program, replayed, taped = _mapped_program("copies after")
    names = _names(program.fused_steps)
    assert "mixed_normed_feed_forward" not in names and "index" not in names
    assert_same_program_bits(replayed, taped)
