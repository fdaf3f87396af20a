"""lnref.probes: every per-layer quantity agrees with a direct, independent computation."""

import numpy as np
import pytest

import lnref
from lnref import probes
from lnref.autograd import Tape, Tensor, ops

TINY = dict(n_layers=2, d_model=4, n_heads=1, d_ff=8)


def tiny(scheme, **options):
    return lnref.build(scheme, **{**TINY, **options})


def probe(model, batch=2, seq=3, stream=0):
    x, dy, memory = model.sample_inputs(batch=batch, seq=seq)
    return probes.layer_profile(model, x, dy, memory, stream=stream), (x, dy, memory)


# ----- hidden states ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["post", "pre", "peri", "dlcl"])
def test_hidden_norm_is_frobenius_norm_of_hidden_states(scheme):
    model = tiny(scheme, n_layers=3)
    profile, (x, _, memory) = probe(model)
    states = model.hidden_states(x, memory)
    expected = [np.linalg.norm(state[0]) for state in states]
    np.testing.assert_allclose(profile.hidden_norm, expected, rtol=1e-13)
    assert profile.hidden_norm.shape == (4,)


def test_residual_streams_are_told_apart():
    model = tiny("residual", n_layers=3)
    x, dy, _ = model.sample_inputs(batch=2, seq=3)
    states = model.hidden_states(x)
    stream_a = probes.layer_profile(model, x, dy, stream=0)
    stream_d = probes.layer_profile(model, x, dy, stream=1)
    np.testing.assert_allclose(stream_a.hidden_norm, [np.linalg.norm(s[0]) for s in states], rtol=1e-13)
    np.testing.assert_allclose(stream_d.hidden_norm, [np.linalg.norm(s[1]) for s in states], rtol=1e-13)
    # Negative control: the two streams differ after the input, so picking the wrong one shows.
    assert not np.allclose(stream_a.hidden_norm[1:], stream_d.hidden_norm[1:], rtol=1e-3)


def test_hidden_sq_norm_per_token_is_mean_of_token_squared_norms():
    model = tiny("pre", n_layers=3)
    profile, (x, _, _) = probe(model)
    states = model.hidden_states(x)
    expected = [np.mean(np.sum(s[0] ** 2, axis=-1)) for s in states]
    np.testing.assert_allclose(profile.hidden_sq_norm_per_token, expected, rtol=1e-13)


def test_post_ln_states_after_the_first_have_squared_token_norm_d():
    # Every Post-LN state after the input is an LN output: ||x_{l,i}||^2 = d * var / (var + eps).
    model = lnref.build("post", n_layers=3, d_model=16, eps=1e-12)
    profile, _ = probe(model)
    np.testing.assert_allclose(profile.hidden_sq_norm_per_token[1:], 16.0, rtol=1e-9)
    # Negative control: the Gaussian input is not normalized.
    assert abs(profile.hidden_sq_norm_per_token[0] - 16.0) > 1e-3


def test_relative_change_and_cosine_follow_their_formulas():
    model = tiny("pre", n_layers=3)
    profile, (x, _, _) = probe(model)
    xs = [s[0] for s in model.hidden_states(x)]
    change = [np.linalg.norm(b - a) / np.linalg.norm(a) for a, b in zip(xs, xs[1:])]
    cos = [
        np.mean(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))
        for a, b in zip(xs, xs[1:])
    ]
    np.testing.assert_allclose(profile.relative_change, change, rtol=1e-13)
    np.testing.assert_allclose(profile.cosine, cos, rtol=1e-13)
    assert profile.relative_change.shape == profile.cosine.shape == (3,)


def test_rezero_layers_are_the_identity_at_init():
    profile, _ = probe(tiny("rezero", n_layers=3))
    np.testing.assert_array_equal(profile.relative_change, 0.0)
    np.testing.assert_allclose(profile.cosine, 1.0, rtol=1e-15)
    np.testing.assert_array_equal(profile.weight_grad_norms["ffn"], 0.0)
    assert np.all(profile.weight_grad_norms["layer"] > 0)  # the gates alpha do get a gradient


def test_missing_stream_is_a_value_error():
    model = tiny("post")
    x, dy, _ = model.sample_inputs(batch=1, seq=2)
    with pytest.raises(ValueError, match="stream 1 does not exist"):
        probes.layer_profile(model, x, dy, stream=1)


def test_hidden_grad_norms_need_tensor_states():
    model = tiny("post")
    x, _, _ = model.sample_inputs(batch=1, seq=2)
    with pytest.raises(ValueError, match="Tensor states"):
        probes.hidden_grad_norms(model.hidden_states(x))


# ----- hidden-state gradients --------------------------------------------------------------


def loss_from_state(model, index, value, dy):
    """sum(y * dy) of the layers index.. run from a single-stream state ``value``."""
    y, _ = model.forward(model.run(), state=(Tensor(value),), start=index)
    return float(np.sum(y.value * dy))


def gradient_from_state(model, index, value, dy):
    """dLoss/dx_index by a separate tape started at that state (no retained gradients)."""
    leaf = Tensor(value, requires_grad=True)
    with Tape() as tape:
        y, _ = model.forward(model.run(), state=(leaf,), start=index)
        loss = ops.sum(ops.mul(y, dy))
    tape.backward(loss)
    return leaf.grad


@pytest.mark.parametrize("scheme", ["post", "pre", "b2t", "sandwich"])
def test_hidden_grad_norm_matches_a_tape_started_at_each_state(scheme):
    model = tiny(scheme, n_layers=3)
    profile, (x, dy, _) = probe(model)
    states = model.hidden_states(x)
    expected = [np.linalg.norm(gradient_from_state(model, l, s[0], dy)) for l, s in enumerate(states)]
    np.testing.assert_allclose(profile.hidden_grad_norm, expected, rtol=1e-12)
    # Negative control: the norms change from layer to layer, so an off-by-one would show.
    assert not np.allclose(profile.hidden_grad_norm[:-1], profile.hidden_grad_norm[1:], rtol=1e-3)


@pytest.mark.parametrize("scheme", ["post", "pre"])
def test_hidden_grad_norm_matches_central_finite_differences(scheme):
    model = lnref.build(scheme, n_layers=2, d_model=4, n_heads=1, d_ff=8, activation="gelu")
    profile, (x, dy, _) = probe(model, batch=1, seq=2)
    states = model.hidden_states(x)
    step = 1e-6
    for index, state in enumerate(states):
        value = state[0]
        fd = np.zeros_like(value)
        for position in np.ndindex(value.shape):
            up, down = value.copy(), value.copy()
            up[position] += step
            down[position] -= step
            difference = loss_from_state(model, index, up, dy) - loss_from_state(model, index, down, dy)
            fd[position] = difference / (2 * step)
        assert profile.hidden_grad_norm[index] == pytest.approx(np.linalg.norm(fd), rel=1e-6)


def test_last_state_gradient_of_post_ln_is_the_cotangent():
    # Post-LN has no readout: y is the last state, so dLoss/dx_L = dy exactly.
    profile, (_, dy, _) = probe(tiny("post"))
    assert profile.hidden_grad_norm[-1] == np.linalg.norm(dy)


def test_first_state_gradient_of_two_stream_scheme_is_the_input_gradient():
    model = tiny("residual")
    profile, (x, dy, _) = probe(model)
    _, grads = model.value_and_grad(x, dy)
    assert profile.hidden_grad_norm[0] == pytest.approx(np.linalg.norm(grads["input"]), rel=1e-13)


# ----- weight gradients ----------------------------------------------------------------------


def joint(grads, names):
    return np.sqrt(sum(np.sum(grads[n] ** 2) for n in names))


@pytest.mark.parametrize("scheme", ["post", "pre", "residual", "b2t", "admin", "deepnorm", "peri", "dlcl"])
def test_weight_grad_norms_equal_norms_of_value_and_grad(scheme):
    model = tiny(scheme, n_layers=3, cross_attention=True)
    profile, (x, dy, memory) = probe(model)
    loss, grads = model.value_and_grad(x, dy, memory)
    assert profile.loss == loss
    norms = profile.weight_grad_norms
    for l in range(3):
        p = f"layers.{l}."
        assert norms["ffn.w2"][l] == pytest.approx(np.linalg.norm(grads[p + "ffn.w2"]), rel=1e-13)
        assert norms["ffn"][l] == pytest.approx(joint(grads, [p + "ffn.w1", p + "ffn.w2"]), rel=1e-13)
        attn = [p + f"attn.{w}" for w in ("wq", "wk", "wv", "wo")]
        assert norms["attn"][l] == pytest.approx(joint(grads, attn), rel=1e-13)
        cross = [p + f"cross.{w}" for w in ("wq", "wk", "wv", "wo")]
        assert norms["cross"][l] == pytest.approx(joint(grads, cross), rel=1e-13)
        gains = [n for n in grads if n.startswith(p) and n.endswith(".gamma")]
        assert gains, "every scheme here has per-layer norms"
        assert norms["norm_gain"][l] == pytest.approx(joint(grads, gains), rel=1e-13)
        everything = [n for n in grads if n.startswith(p)]
        assert norms["layer"][l] == pytest.approx(joint(grads, everything), rel=1e-13)


def test_weight_grad_norms_tell_layers_apart():
    model = tiny("post", n_layers=3)
    _, (x, dy, _) = probe(model)
    _, grads = model.value_and_grad(x, dy)
    norms = probes.weight_grad_norms(grads, 3)
    swapped = dict(grads)
    swapped["layers.0.ffn.w2"], swapped["layers.2.ffn.w2"] = grads["layers.2.ffn.w2"], grads["layers.0.ffn.w2"]
    moved = probes.weight_grad_norms(swapped, 3)["ffn.w2"]
    # Negative control: a gradient credited to the wrong layer changes the profile.
    assert moved[0] == norms["ffn.w2"][2] and moved[0] != norms["ffn.w2"][0]


def test_weight_kinds_follow_the_parameters():
    encoder, _ = probe(tiny("post"))
    decoder, _ = probe(tiny("post", cross_attention=True))
    rezero, _ = probe(tiny("rezero"))
    assert "cross" not in encoder.weight_grad_norms and "cross" in decoder.weight_grad_norms
    assert "norm_gain" in encoder.weight_grad_norms and "norm_gain" not in rezero.weight_grad_norms
    assert list(encoder.weight_grad_norms) == [
        "attn",
        "attn.wq",
        "attn.wk",
        "attn.wv",
        "attn.wo",
        "ffn",
        "ffn.w1",
        "ffn.w2",
        "norm_gain",
        "layer",
    ]


def test_weight_grad_norms_without_layers_is_a_value_error():
    with pytest.raises(ValueError, match="no parameter named layers.0"):
        probes.weight_grad_norms({"input": np.ones(3)}, 2)


def test_metrics_flatten_weight_kinds_with_a_prefix():
    profile, _ = probe(tiny("pre"))
    metrics = profile.metrics()
    assert metrics["grad.ffn.w2"] is profile.weight_grad_norms["ffn.w2"]
    assert metrics["hidden_grad_norm"] is profile.hidden_grad_norm


# ----- over seeds ----------------------------------------------------------------------------


def test_profile_over_seeds_summarizes_the_per_seed_profiles():
    kwargs = dict(scheme="b2t", **TINY)
    summary = probes.profile_over_seeds(kwargs, seeds=[3, 4, 5], batch=2, seq=3)
    singles = []
    for seed in (3, 4, 5):
        model = lnref.build(**kwargs, seed=seed)
        singles.append(probe(model)[0].weight_grad_norms["ffn.w2"])
    singles = np.array(singles)
    np.testing.assert_array_equal(summary.mean["grad.ffn.w2"], singles.mean(axis=0))
    np.testing.assert_allclose(summary.std["grad.ffn.w2"], singles.std(axis=0, ddof=1), rtol=1e-13)
    np.testing.assert_allclose(summary.sem["grad.ffn.w2"], singles.std(axis=0, ddof=1) / np.sqrt(3), rtol=1e-13)
    assert summary.seeds == (3, 4, 5) and len(summary.profiles) == 3


def test_profile_over_seeds_uses_a_fresh_model_per_seed():
    summary = probes.profile_over_seeds(dict(scheme="pre", **TINY), seeds=[0, 1])
    assert np.all(summary.std["hidden_grad_norm"] > 0)


def test_one_seed_has_no_spread():
    summary = probes.profile_over_seeds(dict(scheme="pre", **TINY), seeds=[0])
    assert np.all(np.isnan(summary.std["grad.ffn"])) and np.all(np.isnan(summary.sem["grad.ffn"]))


def test_same_seed_gives_the_same_bits():
    first = probes.profile_over_seeds(dict(scheme="residual", **TINY), seeds=[7])
    second = probes.profile_over_seeds(dict(scheme="residual", **TINY), seeds=[7])
    for name, values in first.mean.items():
        np.testing.assert_array_equal(values, second.mean[name])


def test_progress_is_called_once_per_seed():
    messages = []
    probes.profile_over_seeds(dict(scheme="post", **TINY), seeds=[0, 1], progress=messages.append)
    assert len(messages) == 2 and "seed 1" in messages[1]


def test_no_seeds_is_a_value_error():
    with pytest.raises(ValueError, match="no seeds"):
        probes.profile_over_seeds(dict(scheme="post", **TINY), seeds=[])
