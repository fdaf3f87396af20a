"""mHC's sublayers replay as one step each with their mappings (autograd.mapped_copies): the
stacked concatenate, the mapping norm, the three maps, the reshape and Sinkhorn go into the
mixed sublayer's step, ``mapped_normed_*``, with the bits of the taped pass."""

import contextlib

import numpy as np
import pytest
from tape_helpers import (
    assert_same_bits,
    assert_same_program_bits,
    fused_steps,
    mhc_with_varied_mappings,
    recorded_program,
    replayed_with_backward_off,
    same_bits,
    taped_and_replayed,
)

from lnref.autograd import fused, fused_copies, fused_mapped, ops, value_and_grad
from lnref.autograd.kernels import seam
from lnref.autograd.primitive import PRIMITIVES
from lnref.autograd.replay import Replayer
from lnref.gradcheck import check_vjp

SMALL = dict(n_layers=2, d_model=16, n_heads=2, d_ff=64)  # the maps' and the sublayers' loop kernels
MEDIUM = dict(n_layers=2, d_model=64, n_heads=4, d_ff=256)  # past their limits: BLAS
MAPPINGS = ["concatenate", "layer_norm", "scaled_linear", "scaled_linear", "scaled_linear", "reshape", "sinkhorn"]
FIRST_SUBLAYER = [*MAPPINGS, "weighted_sum", "residual_normed_attention", "mix_streams"]
MAPPED = ("mapped_normed_attention", "mapped_normed_feed_forward")
BRANCHES = {
    "attention": (fused_mapped.mapped_normed_attention, {"n_heads": 2, "causal": True}),
    "feed_forward": (fused_mapped.mapped_normed_feed_forward, {"activation": "gelu"}),
}
N, D, TOKENS, ITERATIONS = 3, 8, (2, 3), 4
MAP_STATICS = {"pre_activation": "sigmoid", "post_activation": "sigmoid", "post_gain": 2.0}
KEY_BIAS = 3 + 9 + 2 + 3  # the attention's bk among the fused step's arguments: zero gradient by structure


def _mhc(size=SMALL, **options):
    return mhc_with_varied_mappings(size, **options)


def _names(steps):
    return [step[0] for step in steps]


@contextlib.contextmanager
def _counting_fused_steps(monkeypatch):
    """The number of fused mapped steps run within the block, by name."""
    counts = dict.fromkeys(MAPPED, 0)
    for name in MAPPED:
        defined = PRIMITIVES[name]

        def counted(*args, _name=name, _forward=defined.forward, **params):
            counts[_name] += 1
            return _forward(*args, **params)

        monkeypatch.setitem(PRIMITIVES, name, defined._replace(forward=counted))
    yield counts


def _replayed_with_fused_steps(model, monkeypatch):
    """A taped then a replayed pass of ``model``, the replay running a fused step a sublayer
    after the first."""
    with _counting_fused_steps(monkeypatch) as counts:
        taped, replayed = taped_and_replayed(model)
    n_layers = model.config.n_layers
    assert counts == {"mapped_normed_attention": n_layers - 1, "mapped_normed_feed_forward": n_layers}
    return taped, replayed


# ----- mHC's replayed pass -------------------------------------------------------------------


def test_mhc_replays_each_layer_after_the_first_sublayer_as_two_steps():
    """The first sublayer's copies are the embedding n times, not a stack: its steps stay."""
    model = _mhc()
    taped_and_replayed(model)
    names = _names(fused_steps(model))
    later = ["mapped_normed_feed_forward", *["mapped_normed_attention", "mapped_normed_feed_forward"]]
    sublayers = later[:1] + later[1:] * (SMALL["n_layers"] - 1)
    assert names[: len(FIRST_SUBLAYER) + len(sublayers)] == FIRST_SUBLAYER + sublayers
    assert not {"scaled_linear", "sinkhorn", "reshape"}.intersection(names[len(FIRST_SUBLAYER) :])


def test_mhc_fused_steps_take_the_mappings_statics_and_h_res_transposed():
    model = _mhc()
    taped_and_replayed(model)
    (step, *_) = [step for step in fused_steps(model) if step[0] == "mapped_normed_attention"]
    statics = {key: value for key, value in step[2].items() if key not in ("eps", "n_heads", "causal")}
    assert statics == {
        "mix_eps": 1e-5,
        **dict(pre_activation="sigmoid", pre_gain=1.0, post_activation="sigmoid", post_gain=2.0),
        **dict(res_activation=None, res_gain=1.0, shape=(2, 8, 4, 4), iterations=20, transpose=True),
    }


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "blas"])
def test_a_replayed_mhc_pass_gives_the_bits_of_the_taped_pass(dtype, size, monkeypatch):
    assert_same_bits(*_replayed_with_fused_steps(_mhc(size, dtype=dtype), monkeypatch))


@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "blas"])
def test_a_replayed_mhc_pass_with_gelu_and_a_causal_mask_gives_the_bits_of_the_taped_pass(size, monkeypatch):
    assert_same_bits(*_replayed_with_fused_steps(_mhc(size, activation="gelu", causal=True), monkeypatch))


def test_a_replayed_mhc_pass_of_other_widths_and_rounds_gives_the_bits_of_the_taped_pass(monkeypatch):
    model = _mhc(options={"n": 3, "sinkhorn_iterations": 5})
    assert_same_bits(*_replayed_with_fused_steps(model, monkeypatch))


def test_a_replayed_mhc_pass_with_the_mappings_numpy_twins_gives_the_bits_of_the_taped_pass(monkeypatch):
    model = _mhc()
    with seam.forced("reference", "mixing_mappings_forward", "mixing_mappings_backward"):
        assert_same_bits(*_replayed_with_fused_steps(model, monkeypatch))


def test_a_broken_fused_mappings_backward_changes_the_replayed_gradient():
    """The negative control of the bit tests: the mappings' VJP off by a part in a billion."""
    model = _mhc()
    taped, _ = taped_and_replayed(model)
    broken = replayed_with_backward_off(model, "mixing_mappings_backward")
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.attn.wq"], broken[1]["layers.0.attn.wq"])


@pytest.mark.parametrize("name", ["scaled_linear", "reshape", "sinkhorn"])
def test_a_replay_runs_the_recorded_steps_while_a_mapping_primitive_is_swapped(name, monkeypatch):
    model = _mhc()
    taped_and_replayed(model)
    defined, calls = PRIMITIVES[name], []

    def noting(*args, **params):
        calls.append(name)
        return defined.forward(*args, **params)

    monkeypatch.setitem(PRIMITIVES, name, defined._replace(forward=noting))
    model.value_and_grad(*model.sample_inputs(seed=1))
    sublayers = 2 * SMALL["n_layers"]
    assert len(calls) == _names(recorded_program(model).steps).count(name) == MAPPINGS.count(name) * sublayers


# ----- the fused step ------------------------------------------------------------------------


def _sublayer_arrays(branch, seed=0, dtype=np.float64):
    """(xs, mix_gamma, mix_beta, the pre, post and res maps' phi, alpha, b, gamma, beta, the
    sublayer's weights...): n = 3 copies of (2, 3) tokens of d = 8 features."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((N, *TOKENS, D))]
    arrays += [1 + 0.1 * rng.standard_normal(N * D), 0.1 * rng.standard_normal(N * D)]
    for b_shape in ((N,), (N,), (N, N)):
        arrays += [0.3 * rng.standard_normal((N * D, int(np.prod(b_shape)))), np.asarray(0.5 + 0.1 * rng.random())]
        arrays += [0.2 * rng.standard_normal(b_shape)]
    arrays += [1 + 0.1 * rng.standard_normal(D), 0.1 * rng.standard_normal(D)]
    if branch == "attention":
        arrays += [a for _ in range(4) for a in (0.3 * rng.standard_normal((D, D)), 0.1 * rng.standard_normal(D))]
    else:
        arrays += [0.5 * rng.standard_normal((D, 12)), 0.1 * rng.standard_normal(12)]
        arrays += [0.5 * rng.standard_normal((12, D)), 0.1 * rng.standard_normal(D)]
    return [np.asarray(array, dtype) for array in arrays]


def _fused(branch, *arrays):
    primitive, statics = BRANCHES[branch]
    return primitive(*arrays, **MAP_STATICS, shape=(*TOKENS, N, N), iterations=ITERATIONS, transpose=True, **statics)


def _eight_steps(branch, xs, g, c, *rest):
    """The steps the fused step stands for: the mappings, then the mixed sublayer."""
    phi_pre, alpha_pre, b_pre, phi_post, alpha_post, b_post, phi_res, alpha_res, b_res, *sublayer = rest
    u = ops.layer_norm(ops.concatenate(xs, axis=-1, stacked=True), g, c)
    h_pre = ops.scaled_linear(u, phi_pre, alpha_pre, b_pre, activation="sigmoid")
    h_post = ops.scaled_linear(u, phi_post, alpha_post, b_post, activation="sigmoid", gain=2.0)
    res = ops.scaled_linear(u, phi_res, alpha_res, b_res)
    h_res = ops.sinkhorn(ops.reshape(res, shape=(*TOKENS, N, N)), iterations=ITERATIONS)
    mixed = getattr(fused_copies, f"mixed_normed_{branch}")
    return mixed(xs, h_pre, h_res, h_post, *sublayer, transpose=True, **BRANCHES[branch][1])


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("path", [None, "reference"], ids=["loops", "numpy"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_the_fused_step_gives_the_bits_of_its_eight_steps_each_way(branch, path, dtype):
    arrays = _sublayer_arrays(branch, dtype=dtype)
    dy = np.random.default_rng(1).standard_normal(arrays[0].shape).astype(dtype)
    with seam.forced(path) if path else contextlib.nullcontext():
        fused_y, fused_grads = value_and_grad(lambda *a: ops.sum(_fused(branch, *a) * dy))(*arrays)
        y, grads = value_and_grad(lambda *a: ops.sum(_eight_steps(branch, *a) * dy))(*arrays)
    assert fused_y == y
    for mine, theirs in zip(fused_grads, grads, strict=True):
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
        np.testing.assert_array_equal(same_bits(mine), same_bits(theirs))


@pytest.mark.parametrize("branch", BRANCHES)
def test_the_fused_steps_vjp_matches_finite_differences(branch):
    checks = check_vjp(lambda *args: _fused(branch, *args), *_sublayer_arrays(branch, seed=2))
    resolved = [c for i, c in enumerate(checks) if branch != "attention" or i != KEY_BIAS]
    assert all(c.status == "passed" for c in resolved), checks


def test_the_fused_step_refuses_a_reshape_that_is_not_square_matrices_per_token():
    with pytest.raises(ValueError, match="square"):
        fused_mapped.mapped_normed_feed_forward(
            *_sublayer_arrays("feed_forward"), shape=(TOKENS[0] * TOKENS[1], N, N), iterations=ITERATIONS
        )


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-4)], ids=["float64", "float32"])
def test_the_mappings_loop_twins_agree_with_their_numpy_twins(dtype, rtol):
    xs, g, c, *maps = _sublayer_arrays("feed_forward", seed=3, dtype=dtype)[:12]
    maps = [array.reshape(-1) if k % 3 == 2 else array for k, array in enumerate(maps)]  # each b of q entries
    rng = np.random.default_rng(4)
    cotangents = [rng.standard_normal((*TOKENS, N)), rng.standard_normal((*TOKENS, N)), rng.standard_normal((6, N, N))]
    statics = ((True, True, False), (1.0, 2.0, 1.0))
    forward, backward = seam.twin("mixing_mappings_forward"), seam.twin("mixing_mappings_backward")
    results = []
    for path in ("loop", "reference"):
        with seam.forced(path):  # the NumPy twin's parts their NumPy twins too
            outputs = getattr(forward, path)(xs, g, c, 1e-5, tuple(maps), *statics, N, ITERATIONS)
            grads = getattr(backward, path)(*(dh.astype(dtype) for dh in cotangents), xs.shape, g, tuple(maps),
                                            statics[1], ITERATIONS, *outputs[3:])  # fmt: skip
            results.append((*outputs, *grads))
    for loop, reference in zip(*results, strict=True):
        assert (loop is None) == (reference is None)
        if loop is not None:
            np.testing.assert_allclose(loop.reshape(reference.shape), reference, rtol=rtol, atol=rtol)


# ----- the fusion's conditions, on a program of mHC's shape ---------------------------------


def _mapped_program(extra=None, mapping_norm="layer_norm"):
    """The replayed program and gradients of one sublayer between mixtures of the copies of
    X = 2 a, each copy handed on by ``index``, its weights computed from their concatenate as
    mHC's are, and the taped gradients. ``extra``: "parameter between", a step between the
    concatenate and the sublayer reads phi_pre; "copies between", one mixes the copies (with
    weights of their own, the last input, which nothing else reads)."""

    def fn(a, g, c, phi_pre, alpha_pre, b_pre, phi_post, alpha_post, b_post, phi_res, alpha_res, b_res,
           gamma, beta, w1, b1, w2, b2, weights):  # fmt: skip
        stack = a * 2.0
        copies = [stack[j] for j in range(N)]
        flat = ops.concatenate(*copies, axis=-1)
        u = ops.layer_norm(flat, g, c) if mapping_norm == "layer_norm" else ops.rms_norm(flat, g)
        h_pre = ops.scaled_linear(u, phi_pre, alpha_pre, b_pre, activation="sigmoid")
        h_post = ops.scaled_linear(u, phi_post, alpha_post, b_post, activation="sigmoid", gain=2.0)
        res = ops.scaled_linear(u, phi_res, alpha_res, b_res)
        h_res = ops.sinkhorn(ops.reshape(res, shape=(*res.shape[:-1], N, N)), iterations=ITERATIONS)
        between = 0.0
        if extra == "parameter between":
            between = ops.sum(phi_pre * phi_pre)
        elif extra == "copies between":
            between = ops.sum(ops.weighted_sum(weights, *copies))
        s = fused.feed_forward(ops.layer_norm(ops.weighted_sum(h_pre, *copies), gamma, beta), w1, b1, w2, b2)
        mixed = ops.mix_streams(h_res, h_post, s, *copies, transpose=True)
        return ops.sum(mixed * mixed) + between

    arrays = [*_sublayer_arrays("feed_forward", seed=6), np.arange(1.0, N + 1)]
    replayer, differentiate = Replayer(), [True] * len(arrays)
    replayer.value_and_grad("key", fn, arrays, differentiate)
    replayed = replayer.value_and_grad("key", fn, arrays, differentiate)
    return replayer.programs["key"], replayed, value_and_grad(fn)(*arrays)


def test_a_sublayer_with_its_mappings_computed_from_its_copies_is_one_step():
    program, replayed, taped = _mapped_program()
    assert _names(program.fused_steps).count("mapped_normed_feed_forward") == 1
    assert not set(MAPPINGS).intersection(_names(program.fused_steps)[1:])  # after X = 2 a
    assert_same_program_bits(replayed, taped)


@pytest.mark.parametrize("extra", ["parameter between", "copies between"])
def test_a_sublayer_whose_parameter_or_copies_are_read_between_its_steps_keeps_its_mappings(extra):
    program, replayed, taped = _mapped_program(extra)
    names = _names(program.fused_steps)
    assert "mapped_normed_feed_forward" not in names and set(MAPPINGS) <= set(names)
    assert_same_program_bits(replayed, taped)


def test_a_sublayer_whose_mapping_norm_is_not_a_layer_norm_keeps_its_mappings():
    program, replayed, taped = _mapped_program(mapping_norm="rms_norm")
    names = _names(program.fused_steps)
    assert "mixed_normed_feed_forward" in names and "mapped_normed_feed_forward" not in names
    assert_same_program_bits(replayed, taped)
