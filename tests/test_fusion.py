"""A replayed pass runs each residual branch with its LayerNorm, a + S(LN(a)) or LN(a + S(a)),
and each normed branch S(LN(a)) whose output goes elsewhere, as one step (autograd.fusion),
with the bits of the steps it replaces."""

import numpy as np
import pytest
from tape_helpers import recorded_program, replayed_with_backward_off, taped_and_replayed

import lnref
from lnref.autograd import fused, fused_branches, fusion, kernels, ops
from lnref.autograd.kernels import seam
from lnref.autograd.primitive import PRIMITIVES
from lnref.autograd.replay import Replayer
from lnref.autograd.timing import TimeSplit

FUSED = {
    "pre": {"residual_normed_attention", "residual_normed_feed_forward"},
    "post": {"normed_sum_attention", "normed_sum_feed_forward"},
}
# Schemes whose branches are S(LN(a)) without the plain residual add: a weighted skip (dslm),
# a norm after the branch (sandwich), a second stream (siamese), copies of the stream (hyper).
NORMED_INPUT = ("dslm", "sandwich", "siamese", "hyper")
SMALL = dict(n_layers=3, d_model=16, n_heads=2, d_ff=64)  # the sublayers' loop kernels
MEDIUM = dict(n_layers=2, d_model=64, n_heads=4, d_ff=256)  # past their limits: BLAS


def _assert_same_bits(first, second):
    (loss_a, grads_a), (loss_b, grads_b) = first, second
    assert loss_a == loss_b
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


@pytest.mark.parametrize("scheme", FUSED)
def test_a_layer_replays_as_two_steps(scheme):
    model = lnref.build(scheme, **SMALL)
    taped_and_replayed(model)
    program = recorded_program(model)
    names = [step[0] for step in program.fused_steps]
    assert len(program.steps) - len(program.fused_steps) == 4 * SMALL["n_layers"]
    assert [names.count(name) for name in sorted(FUSED[scheme])] == [SMALL["n_layers"]] * 2


@pytest.mark.parametrize("scheme", FUSED)
@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "blas"])
@pytest.mark.parametrize(
    "config",
    [{}, {"activation": "gelu"}, {"activation": "gelu_tanh", "causal": True}, {"dtype": "float32"}],
    ids=["relu", "gelu", "gelu_tanh-causal", "float32"],
)
def test_a_fused_pass_gives_the_bits_of_the_taped_pass(scheme, size, config):
    model = lnref.build(scheme, **size, **config)
    taped, replayed = taped_and_replayed(model)
    assert FUSED[scheme] <= {step[0] for step in recorded_program(model).fused_steps}
    _assert_same_bits(taped, replayed)


@pytest.mark.parametrize("scheme", NORMED_INPUT)
def test_a_normed_branch_without_the_add_replays_as_one_step(scheme):
    model = lnref.build(scheme, **SMALL)
    taped_and_replayed(model)
    fused_steps = recorded_program(model).fused_steps
    unfused = [step for step in fused_steps if step[0] in ("attention_sublayer", "feed_forward")]
    normed_input = [step for step in fused_steps if step[2].get("residual") is False]
    # hyper's between its mixtures, siamese's between its two streams
    mixed = [step for step in fused_steps if step[0].startswith(("mixed_normed_", "two_stream_normed_"))]
    assert not unfused and len(normed_input) + len(mixed) == 2 * SMALL["n_layers"]


@pytest.mark.parametrize("scheme", NORMED_INPUT)
@pytest.mark.parametrize("size", [SMALL, MEDIUM], ids=["loops", "blas"])
@pytest.mark.parametrize("config", [{}, {"activation": "gelu", "causal": True}, {"dtype": "float32"}])
def test_a_fused_normed_branch_gives_the_bits_of_the_taped_pass(scheme, size, config):
    model = lnref.build(scheme, **size, **config)
    taped, replayed = taped_and_replayed(model)
    _assert_same_bits(taped, replayed)


def test_a_normed_branch_is_not_fused_when_a_step_between_reads_its_stream():
    """a's cotangent from the norm would join its other terms at the sublayer's place, after
    the term of the step between: another order of the sum than the tape's."""

    def fn(a, gamma, beta, w1, b1, w2, b2):
        normed = ops.layer_norm(a, gamma, beta)
        squared = a * a
        return ops.sum(fused.feed_forward(normed, w1, b1, w2, b2) * squared)

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((2, 4, 8)), np.ones(8), np.zeros(8)]
    arrays += [rng.standard_normal((8, 16)), np.zeros(16), rng.standard_normal((16, 8)), np.zeros(8)]
    replayer = Replayer()
    replayer.value_and_grad("key", fn, arrays, [True] * 7)
    program = replayer.programs["key"]
    assert program.fused_steps == program.steps


def test_a_broken_fused_backward_of_a_normed_branch_changes_the_replayed_gradient():
    model = lnref.build("sandwich", **SMALL)
    taped, _ = taped_and_replayed(model)
    broken = replayed_with_backward_off(model, "residual_normed_attention_backward")
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.ln_attn.gamma"], broken[1]["layers.0.ln_attn.gamma"])


def test_a_cross_attention_branch_is_not_fused():
    """Its keys and values read the memory: a second input the fused kernel does not take."""
    model = lnref.build("pre", cross_attention=True, **SMALL)
    taped, replayed = taped_and_replayed(model)
    names = [step[0] for step in recorded_program(model).fused_steps]
    assert names.count("attention_sublayer") == names.count("residual_normed_attention") == SMALL["n_layers"]
    _assert_same_bits(taped, replayed)


def test_a_scheme_without_any_of_the_shapes_keeps_its_steps():
    model = lnref.build("rezero", **SMALL)  # a + alpha S(a): no norm around the branch
    taped_and_replayed(model)
    assert recorded_program(model).fused_steps == recorded_program(model).steps


def _ffn_branch(extra_reader):
    """The program of y = sum(a + F(LN(a))), or with ``extra_reader`` a third use of the stream
    a, and its taped and replayed (value, gradients)."""

    def fn(a, gamma, beta, w1, b1, w2, b2):
        y = a + fused.feed_forward(ops.layer_norm(a, gamma, beta), w1, b1, w2, b2)
        return ops.sum(y * a) if extra_reader else ops.sum(y)

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((2, 4, 8)), np.ones(8), np.zeros(8)]
    arrays += [rng.standard_normal((8, 16)), np.zeros(16), rng.standard_normal((16, 8)), np.zeros(8)]
    replayer = Replayer()
    taped = replayer.value_and_grad("key", fn, arrays, [True] * 7)
    replayed = replayer.value_and_grad("key", fn, arrays, [True] * 7)
    return replayer.programs["key"], taped, replayed


def test_a_branch_whose_stream_has_another_reader_keeps_its_add_out_of_the_fused_step():
    """a's cotangent would then be a sum of three terms, which the fused VJP cannot order as
    the tape does: the norm and the sublayer are fused without the add."""
    (step, _) = _ffn_branch(extra_reader=False)[0].fused_steps
    assert step[0] == "residual_normed_feed_forward" and "residual" not in step[2]
    fused_steps = _ffn_branch(extra_reader=True)[0].fused_steps
    assert [step[0] for step in fused_steps] == ["residual_normed_feed_forward", "add", "mul", "sum"]
    assert fused_steps[0][2]["residual"] is False


def test_a_branch_whose_stream_has_another_reader_gives_the_taped_bits():
    _, (loss_taped, grads_taped), (loss_replayed, grads_replayed) = _ffn_branch(extra_reader=True)
    assert loss_taped.value == loss_replayed.value
    for taped, replayed in zip(grads_taped, grads_replayed):
        np.testing.assert_array_equal(taped, replayed)


@pytest.mark.parametrize(
    "scheme, kernel",
    [
        ("pre", "residual_normed_feed_forward"),
        ("post", "normed_sum_attention"),
        ("subln", "residual_normed_heads_pieces_attention"),
    ],
)
def test_a_broken_fused_backward_changes_the_replayed_gradient(scheme, kernel):
    """The negative control of the bit tests above: they catch a wrong fused VJP."""
    model = lnref.build(scheme, **SMALL)
    taped, _ = taped_and_replayed(model)
    broken = replayed_with_backward_off(model, f"{kernel}_backward")
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.attn.wq"], broken[1]["layers.0.attn.wq"])


def test_a_replay_runs_a_swapped_constituent_primitive_unfused(monkeypatch):
    model = lnref.build("pre", **SMALL)
    taped, _ = taped_and_replayed(model)
    norm = PRIMITIVES["layer_norm"]
    without_dbeta = norm._replace(vjp=lambda dout, residuals: (*norm.vjp(dout, residuals)[:2], None))
    monkeypatch.setitem(PRIMITIVES, "layer_norm", without_dbeta)
    x, dy, memory = model.sample_inputs(seed=1)
    _, grads = model.value_and_grad(x, dy, memory)
    assert not np.any(grads["layers.0.ln_attn.beta"])
    assert np.any(taped[1]["layers.0.ln_attn.beta"])


def test_a_fused_step_calls_a_replaced_norm_kernel():
    model = lnref.build("pre", **SMALL)
    taped_and_replayed(model)
    calls = []

    def counted(*args):
        calls.append(1)
        return kernels.layer_norm_forward_reference(*args)

    with seam.replaced("layer_norm_forward", counted):
        model.value_and_grad(*model.sample_inputs(seed=1)[:2])
    assert len(calls) == 2 * SMALL["n_layers"] + 1


def test_a_replay_calls_a_primitive_swapped_before_its_first_pass(monkeypatch):
    norm = PRIMITIVES["layer_norm"]
    without_dbeta = norm._replace(vjp=lambda dout, residuals: (*norm.vjp(dout, residuals)[:2], None))
    monkeypatch.setitem(PRIMITIVES, "layer_norm", without_dbeta)
    model = lnref.build("pre", **SMALL)
    _, (_, grads) = taped_and_replayed(model)
    assert not np.any(grads["layers.0.ln_attn.beta"])


def test_timed_primitives_keep_a_pass_fused():
    with TimeSplit():
        assert fusion.defined_primitives_in_place()


@pytest.mark.parametrize(
    "fusion_name, flags",
    [("residual_normed", (True,)), ("residual_normed", (False,)), ("normed_sum", ())],
    ids=["residual_normed", "normed_input", "normed_sum"],
)
@pytest.mark.parametrize("branch", ["attention", "feed_forward"])
@pytest.mark.parametrize("shape", [(2, 8, 16), (1, 5, 12)])
def test_the_fused_loop_twins_agree_with_the_numpy_twins(fusion_name, flags, branch, shape):
    rng = np.random.default_rng(3)
    d = shape[-1]
    a, gamma, beta = rng.standard_normal(shape), 1 + 0.1 * rng.standard_normal(d), 0.1 * rng.standard_normal(d)
    if branch == "attention":
        weights = sum(((0.3 * rng.standard_normal((d, d)), 0.1 * rng.standard_normal(d)) for _ in range(4)), ())
        statics = (2, True)
    else:
        weights = (0.3 * rng.standard_normal((d, 3 * d)), 0.1 * rng.standard_normal(3 * d))
        weights += (0.3 * rng.standard_normal((3 * d, d)), 0.1 * rng.standard_normal(d))
        statics = ("gelu",)
    forward = seam.twin(f"{fusion_name}_{branch}_forward")
    backward = seam.twin(f"{fusion_name}_{branch}_backward")
    dy = rng.standard_normal(shape)
    results = []
    for path in ("loop", "reference"):
        out, *kept = getattr(forward, path)(a, gamma, beta, 1e-5, weights, *statics, *flags)
        if branch == "attention":
            residuals = (gamma, kept[0], kept[1], kept[2], *weights[::2], *kept[3:], *flags)
        else:
            residuals = (gamma, *kept[:3], weights[0], weights[2], *kept[3:], *statics, *flags)
        results.append((out, *getattr(backward, path)(dy, a, *residuals)))
    for loop, reference in zip(*results):
        np.testing.assert_allclose(loop, reference, rtol=1e-12, atol=1e-12)


def test_a_fused_branch_given_weights_that_do_not_fit_says_so_in_one_line():
    rng = np.random.default_rng(0)
    a, gamma, beta = rng.standard_normal((2, 4, 8)), np.ones(8), np.zeros(8)
    with pytest.raises(ValueError, match=r"^residual_normed_feed_forward: shapes do not fit: .*\n?$"):
        w1, b1, w2, b2 = np.ones((8, 16)), np.zeros(16), np.ones((16, 7)), np.zeros(8)
        fused_branches.residual_normed_feed_forward(a, gamma, beta, w1, b1, w2, b2)
