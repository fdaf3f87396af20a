"""SiameseNorm's streams replay stacked (autograd.two_streams): each sublayer, with both streams'
norms and adds, runs as one step (``two_stream_normed_*``) and the readout's two norms as one
more (``two_stream_merge``), with the bits of the taped pass."""

import contextlib

import numpy as np
import pytest
from tape_helpers import assert_same_bits, fused_steps, replayed_with_backward_off, same_bits, taped_and_replayed

import lnref
from lnref.autograd import fused_branches, fused_streams, norm_ops, ops, value_and_grad
from lnref.autograd.fused import feed_forward
from lnref.autograd.kernels import seam
from lnref.autograd.primitive import PRIMITIVES
from lnref.autograd.replay import Replayer
from lnref.gradcheck import check_vjp

SMALL = dict(n_layers=3, d_model=16, n_heads=2, d_ff=64)  # the sublayers' loop kernels
MEDIUM = dict(n_layers=2, d_model=64, n_heads=4, d_ff=256)  # past their limits: BLAS
BRANCHES = {
    "attention": (fused_streams.two_stream_normed_attention, {"n_heads": 2, "causal": True}),
    "feed_forward": (fused_streams.two_stream_normed_feed_forward, {"activation": "gelu"}),
}
DIVISOR = 2.0**0.5
KEY_BIAS = 10  # the attention's bk among the fused step's arguments: zero gradient by structure


def _fused_names(model):
    return [step[0] for step in fused_steps(model)]


def test_siamese_replays_one_step_per_sublayer_and_one_for_the_readouts_norms():
    model = lnref.build("siamese", **SMALL)
    taped_and_replayed(model)
    names = _fused_names(model)
    assert names.count("two_stream_normed_attention") == names.count("two_stream_normed_feed_forward") == 3
    assert names.count("two_stream_merge") == 1
    assert len(names) == 2 * SMALL["n_layers"] + 4  # and the final norm, the loss's mul and sum
    divisors = [step[2]["divisor"] for step in fused_steps(model) if step[0].startswith("two_stream_normed_")]
    assert divisors == [(2 * (i // 2 + 1)) ** 0.5 for i in range(2 * SMALL["n_layers"])]  # c_l = sqrt(2 l)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "blas"])
def test_a_replayed_siamese_pass_gives_the_bits_of_the_taped_pass(dtype, size):
    model = lnref.build("siamese", **size, dtype=dtype)
    assert_same_bits(*taped_and_replayed(model))


@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "blas"])
def test_a_replayed_siamese_pass_with_gelu_and_a_causal_mask_gives_the_bits_of_the_taped_pass(size):
    model = lnref.build("siamese", **size, activation="gelu", causal=True)
    assert_same_bits(*taped_and_replayed(model))


def _sublayer_arrays(branch, stacked, seed=0, d=8):
    """(state, gamma_x, beta_x, gamma_y, beta_y, gamma, beta, the sublayer's weights...)."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((2, 2, 3, d) if stacked else (2, 3, d))]
    arrays += [a for _ in range(3) for a in (1 + 0.1 * rng.standard_normal(d), 0.1 * rng.standard_normal(d))]
    if branch == "attention":
        return arrays + [a for _ in range(4) for a in (0.3 * rng.standard_normal((d, d)), 0.1 * rng.standard_normal(d))]
    arrays += [0.5 * rng.standard_normal((d, 12)), 0.1 * rng.standard_normal(12)]
    return arrays + [0.5 * rng.standard_normal((12, d)), 0.1 * rng.standard_normal(d)]


def _steps(branch, state, gamma_x, beta_x, gamma_y, beta_y, gamma, beta, *weights, divisor, **statics):
    """The steps the fused step stands for, as the tape records them, the two streams stacked."""
    x, y = (state[0], state[1]) if state.ndim == 4 else (state, state)
    xn = norm_ops.layer_norm(x, gamma_x, beta_x)
    u = ops.add(xn, norm_ops.layer_norm(y, gamma_y, beta_y))
    z = getattr(fused_branches, f"residual_normed_{branch}")(u, gamma, beta, *weights, residual=False, **statics)
    rows = [ops.reshape(stream, shape=(1, *stream.shape)) for stream in (ops.add(xn, ops.div(z, divisor)), y + z)]
    return ops.concatenate(*rows, axis=0)


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "one_stream"])
@pytest.mark.parametrize("path", [None, "reference"], ids=["loops", "numpy"])
def test_the_fused_sublayer_gives_the_bits_of_its_steps_each_way(branch, stacked, path):
    primitive, statics = BRANCHES[branch]
    arrays = _sublayer_arrays(branch, stacked)
    dy = np.random.default_rng(1).standard_normal((2, *arrays[0].shape[-3:]))
    with seam.forced(path) if path else contextlib.nullcontext():
        fused = value_and_grad(lambda *a: ops.sum(primitive(*a, divisor=DIVISOR, **statics) * dy))
        steps = value_and_grad(lambda *a: ops.sum(_steps(branch, *a, divisor=DIVISOR, **statics) * dy))
        (fused_y, fused_grads), (y, grads) = fused(*arrays), steps(*arrays)
    assert fused_y == y
    for mine, theirs in zip(fused_grads, grads, strict=True):
        np.testing.assert_array_equal(same_bits(mine), same_bits(theirs))


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "one_stream"])
def test_the_fused_sublayers_vjp_matches_finite_differences(branch, stacked):
    primitive, statics = BRANCHES[branch]
    arrays = _sublayer_arrays(branch, stacked, seed=2)
    checks = check_vjp(lambda *args: primitive(*args, divisor=DIVISOR, **statics), *arrays)
    resolved = [c for i, c in enumerate(checks) if branch != "attention" or i != KEY_BIAS]
    assert all(c.status == "passed" for c in resolved), checks


def test_the_merge_gives_the_bits_of_the_two_norms_and_their_sum():
    state, gamma_x, beta_x, gamma_y, beta_y = _sublayer_arrays("feed_forward", stacked=True)[:5]
    dy = np.random.default_rng(1).standard_normal(state.shape[1:])

    def steps(s, *norms):
        return ops.add(norm_ops.layer_norm(s[0], *norms[:2]), norm_ops.layer_norm(s[1], *norms[2:]))

    fused = value_and_grad(lambda *a: ops.sum(fused_streams.two_stream_merge(*a) * dy))
    taped = value_and_grad(lambda *a: ops.sum(steps(*a) * dy))
    (fused_y, fused_grads), (y, grads) = (f(state, gamma_x, beta_x, gamma_y, beta_y) for f in (fused, taped))
    assert fused_y == y
    for mine, theirs in zip(fused_grads, grads, strict=True):
        np.testing.assert_array_equal(same_bits(mine), same_bits(theirs))


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "one_stream"])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-4)], ids=["float64", "float32"])
def test_the_fused_sublayers_loop_twins_agree_with_its_numpy_twins(branch, stacked, dtype, rtol):
    _, statics = BRANCHES[branch]
    state, *norms, gamma, beta = (a.astype(dtype) for a in _sublayer_arrays(branch, stacked, seed=3)[:7])
    weights = tuple(a.astype(dtype) for a in _sublayer_arrays(branch, stacked, seed=3)[7:])
    dy = np.random.default_rng(4).standard_normal((2, *state.shape[-3:])).astype(dtype)
    forward, backward = (seam.twin(f"two_stream_normed_{branch}_{way}") for way in ("forward", "backward"))
    results = []
    for path in ("loop", "reference"):
        with seam.forced(path):  # the NumPy twin's parts their NumPy twins too
            out, stats, u, *kept = getattr(forward, path)(state, DIVISOR, *norms, gamma, beta, 1e-5, weights,
                                                          *statics.values())  # fmt: skip
            if branch == "attention":
                residuals = (gamma, *kept[:3], *weights[::2], *kept[3:])
            else:
                residuals = (gamma, *kept[:3], weights[0], weights[2], *kept[3:], "gelu")
            grads = getattr(backward, path)(dy, state, DIVISOR, norms[0], norms[2], stats, u, *residuals)
            results.append((out, stats, u, *kept, *grads))
    for loop, reference in zip(*results, strict=True):
        np.testing.assert_allclose(loop, reference, rtol=rtol, atol=rtol)


def _two_sublayers(extra_reader):
    """The program of two SiameseNorm FFN sublayers and the readout's norms, on small arrays;
    with ``extra_reader``, a step reads the first sublayer's output z too."""

    def fn(x, gammas, w1, b1, w2, b2, dy):
        norms = [(gammas[i], gammas[i] - 1.0) for i in range(8)]  # made in the pass: no input repeats
        y, extra = x, None
        for i, c in ((0, 2.0**0.5), (3, 2.0)):
            x = norm_ops.layer_norm(x, *norms[i])
            z = feed_forward(norm_ops.layer_norm(x + norm_ops.layer_norm(y, *norms[i + 1]), *norms[i + 2]),
                             w1, b1, w2, b2)  # fmt: skip
            x, y = x + z / c, y + z
            extra = z if extra is None else extra
        total = norm_ops.layer_norm(x, *norms[6]) + norm_ops.layer_norm(y, *norms[7])
        loss = ops.sum(total * dy)
        return loss + ops.sum(extra * extra) if extra_reader else loss

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((2, 3, 8)), 1 + 0.1 * rng.standard_normal((8, 8))]
    arrays += [0.5 * rng.standard_normal((8, 12)), 0.1 * rng.standard_normal(12), 0.5 * rng.standard_normal((12, 8))]
    arrays += [0.1 * rng.standard_normal(8), rng.standard_normal((2, 3, 8))]
    replayer, differentiate = Replayer(), [True] * len(arrays)
    replayer.value_and_grad("key", fn, arrays, differentiate)
    replayed = replayer.value_and_grad("key", fn, arrays, differentiate)
    return replayer.programs["key"], replayed, value_and_grad(fn)(*arrays)


@pytest.mark.parametrize("extra_reader", [False, True], ids=["alone", "read_elsewhere"])
def test_two_stream_sublayers_are_fused_only_where_nothing_else_reads_their_intermediates(extra_reader):
    program, (out, grads), (taped_out, taped_grads) = _two_sublayers(extra_reader)
    names = [step[0] for step in program.fused_steps]
    if extra_reader:
        assert not any(name.startswith("two_stream_") for name in names)
    else:
        assert names.count("two_stream_normed_feed_forward") == 2 and names.count("two_stream_merge") == 1
    assert out.value == taped_out
    for mine, theirs in zip(grads, taped_grads, strict=True):
        np.testing.assert_array_equal(same_bits(mine), same_bits(theirs))


@pytest.mark.parametrize("branch", BRANCHES)
def test_a_broken_fused_sublayer_backward_changes_the_replayed_gradient(branch):
    """The negative control of the bit tests: a fused VJP off by a part in a billion in the
    state's cotangent, which only the replay's fused steps hand on."""
    model = lnref.build("siamese", **SMALL)
    taped, _ = taped_and_replayed(model)
    broken = replayed_with_backward_off(model, f"two_stream_normed_{branch}_backward")
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.attn.wq"], broken[1]["layers.0.attn.wq"])


def test_a_broken_merge_backward_changes_the_replayed_gradient(monkeypatch):
    model = lnref.build("siamese", **SMALL)
    taped, _ = taped_and_replayed(model)
    merge = PRIMITIVES["two_stream_merge"]

    def off_by_a_little(dout, residuals):
        dstate, *rest = merge.vjp(dout, residuals)
        return (dstate * (1 + 1e-9), *rest)

    monkeypatch.setitem(PRIMITIVES, "two_stream_merge", merge._replace(vjp=off_by_a_little))
    broken = model.value_and_grad(*model.sample_inputs(seed=1))
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.2.ffn.w2"], broken[1]["layers.2.ffn.w2"])


def test_a_replay_runs_the_sublayers_unfused_while_layer_norm_is_swapped(monkeypatch):
    model = lnref.build("siamese", **SMALL)
    taped_and_replayed(model)
    norm = PRIMITIVES["layer_norm"]
    monkeypatch.setitem(PRIMITIVES, "layer_norm", norm._replace(vjp=lambda dout, res: (None, *norm.vjp(dout, res)[1:])))
    _, grads = model.value_and_grad(*model.sample_inputs(seed=1))
    assert not np.any(grads["layers.0.attn.wq"])


def test_a_state_of_three_streams_is_refused_in_one_line():
    arrays = _sublayer_arrays("feed_forward", stacked=True)
    arrays[0] = np.concatenate([arrays[0], arrays[0][:1]])
    with pytest.raises(ValueError, match=r"^two_stream_normed_feed_forward: shapes do not fit: state \(3, 2, 3, 8\)"):
        fused_streams.two_stream_normed_feed_forward(*arrays, divisor=DIVISOR)
