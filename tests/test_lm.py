"""The language-model wrapper: its gradients against central finite differences.

Every check is directional. Pick a random unit direction u for one tensor (or for all of
them at once), take the 4-point central difference of the loss along u,

    D_h = [8 (f(+h) - f(-h)) - (f(+2h) - f(-2h))] / (12 h),     error O(h^4),

and compare it with <grad, u> from the tape. With h = 1e-3 in float64 the truncation error
is about 1e-12 and the rounding error about 1e-13, so agreement to 1e-7 relative means the
gradient is right, and a gradient off by 1e-4 fails by three orders of magnitude (the
negative controls). The models use GELU so the loss is smooth, and the parameters are
jittered away from the symmetric initialization (ReZero's alpha = 0 would otherwise zero the
branch gradients).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import lnref
from lnref.lm import EMBED_POSITIONS, EMBED_TOKENS, HEAD_B, HEAD_W, LanguageModel, build_lm, sinusoidal_positions
from lnref.model import ConfigError
from lnref.tasks import IGNORE

STEP = 1e-3
RTOL = 1e-7
VOCAB, SEQ, BATCH = 7, 6, 3


def rng_for(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def small_lm(scheme, seed=0):
    """Two GELU layers, d = 8, with every parameter jittered to a generic point."""
    lm = build_lm(scheme, 2, VOCAB, SEQ, d_model=8, n_heads=2, d_ff=16, seed=seed, activation="gelu")
    rng = rng_for("jitter", scheme, seed)
    for value in lm.params.values():
        value += 0.1 * rng.standard_normal(value.shape)
    return lm


def batch_with_ignored(seed=0):
    """Tokens with repeats (embedding rows receive several contributions) and a few IGNOREs."""
    rng = rng_for("batch", seed)
    tokens = rng.integers(0, VOCAB, size=(BATCH, SEQ))
    targets = rng.integers(0, VOCAB, size=(BATCH, SEQ))
    targets[0, :2] = IGNORE
    targets[2, 4] = IGNORE
    return tokens, targets


def directional_error(lm, grads, names, tokens, targets, seed=0):
    """|D_h - <g, u>| / max(|D_h|, |<g, u>|, 1e-12) for a random unit direction over ``names``."""
    rng = rng_for("direction", tuple(names), seed)
    direction = {name: rng.standard_normal(lm.params[name].shape) for name in names}
    norm = np.sqrt(sum(float(np.vdot(u, u)) for u in direction.values()))
    direction = {name: u / norm for name, u in direction.items()}

    def loss_at(t):
        shifted = dict(lm.params)
        for name, u in direction.items():
            shifted[name] = lm.params[name] + t * u
        return lm.loss(tokens, targets, params=shifted)

    numeric = (8 * (loss_at(STEP) - loss_at(-STEP)) - (loss_at(2 * STEP) - loss_at(-2 * STEP))) / (12 * STEP)
    analytic = sum(float(np.vdot(grads[name], u)) for name, u in direction.items())
    return abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-12)


def checked_names(lm):
    """The wrapper's four tensors and a sample of the stack's: both layers, every kind."""
    stack = [
        n
        for n in lm.model.params
        if n.startswith("layers.0.attn.wq")
        or n.startswith("layers.1.ffn.w2")
        or n.endswith(".gamma")
        or n.endswith("omega_attn")
        or n.endswith("alpha")
        or n.endswith("dlcl_weights")
    ]
    return [EMBED_TOKENS, EMBED_POSITIONS, HEAD_W, HEAD_B, *stack[:6]]


# ----- gradients ------------------------------------------------------------------------

# GPAS's stop-gradient makes the tape's gradient differ from the loss's derivative by design;
# ``lnref gradcheck --with-head`` checks it with the stop-gradient's value held at the point.
WITHOUT_STOP_GRADIENTS = [scheme for scheme in lnref.SCHEMES if scheme != "gpas"]


@pytest.mark.parametrize("scheme", WITHOUT_STOP_GRADIENTS)
def test_lm_gradient_of_each_checked_tensor_matches_finite_differences(scheme):
    lm = small_lm(scheme)
    tokens, targets = batch_with_ignored()
    _, grads = lm.value_and_grad(tokens, targets)
    errors = {name: directional_error(lm, grads, [name], tokens, targets) for name in checked_names(lm)}
    assert max(errors.values()) < RTOL, errors


@pytest.mark.parametrize("scheme", WITHOUT_STOP_GRADIENTS)
def test_lm_gradient_along_a_direction_over_all_parameters_matches_finite_differences(scheme):
    lm = small_lm(scheme, seed=1)
    tokens, targets = batch_with_ignored(seed=1)
    _, grads = lm.value_and_grad(tokens, targets)
    assert directional_error(lm, grads, list(lm.params), tokens, targets) < RTOL


def test_gpas_lm_gradient_passes_the_checker_that_holds_its_stop_gradient():
    from lnref.gradcheck import gradcheck_lm

    report = gradcheck_lm(small_lm("gpas"), batch=BATCH, seq=SEQ)
    assert report.ok and not [r for r in report.results if r.status == "failed"], report.to_text()


def test_gradient_check_detects_a_head_gradient_off_by_one_part_in_ten_thousand():
    lm = small_lm("post")
    tokens, targets = batch_with_ignored()
    _, grads = lm.value_and_grad(tokens, targets)
    wrong = dict(grads, **{HEAD_W: grads[HEAD_W] * (1 + 1e-4)})
    assert directional_error(lm, grads, [HEAD_W], tokens, targets) < RTOL
    assert directional_error(lm, wrong, [HEAD_W], tokens, targets) > 100 * RTOL


def test_gradient_check_detects_a_position_gradient_that_forgets_the_batch_sum():
    # A classic broadcasting bug: the positions are added to every sequence of the batch,
    # so their gradient is a sum over the batch; keeping one sequence's share is wrong.
    lm = small_lm("pre")
    tokens, targets = batch_with_ignored()
    _, grads = lm.value_and_grad(tokens, targets)
    one_sequence = lm.value_and_grad(tokens[:1], targets[:1])[1][EMBED_POSITIONS] / BATCH
    wrong = dict(grads, **{EMBED_POSITIONS: one_sequence})
    assert directional_error(lm, wrong, [EMBED_POSITIONS], tokens, targets) > 100 * RTOL


def test_loss_is_the_mean_cross_entropy_over_scored_positions_only():
    lm = small_lm("pre")
    tokens, targets = batch_with_ignored()
    loss = lm.loss(tokens, targets)
    logits = lm.logits(tokens)
    scored = targets != IGNORE
    # The loss is the mean cross-entropy over the scored positions, computed here by hand.
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    by_hand = -np.mean(np.take_along_axis(log_probs, np.where(scored, targets, 0)[..., None], -1)[..., 0][scored])
    assert loss == pytest.approx(by_hand, rel=1e-12)
    # Negative control: scoring every position gives a different number.
    assert abs(lm.loss(tokens, np.where(scored, targets, 0)) - loss) > 1e-3


def test_value_and_grad_loss_equals_loss():
    lm = small_lm("residual")
    tokens, targets = batch_with_ignored()
    assert lm.value_and_grad(tokens, targets)[0] == lm.loss(tokens, targets)


def test_logits_are_causal():
    """Changing the last token leaves the logits of every earlier position unchanged."""
    lm = small_lm("b2t")
    tokens, _ = batch_with_ignored()
    changed = tokens.copy()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    before, after = lm.logits(tokens), lm.logits(changed)
    np.testing.assert_array_equal(before[:, :-1], after[:, :-1])
    assert np.abs(before[:, -1] - after[:, -1]).max() > 1e-6  # the last position does see it


# ----- construction and input checks ---------------------------------------------------


def test_params_hold_the_stack_and_the_wrapper_tensors_with_their_shapes():
    lm = build_lm("pre", 2, vocab_size=11, max_len=9, d_model=8, n_heads=2, d_ff=16)
    assert lm.params[EMBED_TOKENS].shape == (11, 8)
    assert lm.params[EMBED_POSITIONS].shape == (9, 8)
    assert lm.params[HEAD_W].shape == (8, 11) and lm.params[HEAD_B].shape == (11,)
    assert set(lm.model.params) < set(lm.params)
    assert all(v.dtype == np.float64 for v in lm.params.values())


def test_positions_start_as_the_sinusoidal_table():
    table = sinusoidal_positions(5, 4)
    np.testing.assert_allclose(table[3], [np.sin(3), np.cos(3), np.sin(3 / 100), np.cos(3 / 100)], rtol=1e-15)
    lm = build_lm("post", 1, vocab_size=5, max_len=5, d_model=4, n_heads=2, d_ff=8)
    np.testing.assert_array_equal(lm.params[EMBED_POSITIONS], table)


def test_same_seed_gives_the_same_parameters_and_another_seed_does_not():
    first = build_lm("admin", 2, 7, 6, d_model=8, n_heads=2, d_ff=16, seed=4).params
    again = build_lm("admin", 2, 7, 6, d_model=8, n_heads=2, d_ff=16, seed=4).params
    other = build_lm("admin", 2, 7, 6, d_model=8, n_heads=2, d_ff=16, seed=5).params
    assert all(np.array_equal(first[n], again[n]) for n in first)
    assert not np.array_equal(first[EMBED_TOKENS], other[EMBED_TOKENS])


@pytest.mark.parametrize(
    "tokens, targets, message",
    [
        (np.zeros((2, 7), np.int64), np.zeros((2, 7), np.int64), "max_len"),
        (np.full((2, 3), 7), np.zeros((2, 3), np.int64), "tokens outside"),
        (np.zeros((2, 3), np.int64), np.full((2, 3), IGNORE), "no scored position"),
        (np.zeros((2, 3), np.int64), np.full((2, 3), 9), "targets outside"),
        (np.zeros((2, 3)), np.zeros((2, 3), np.int64), "integers"),
    ],
)
def test_bad_batches_raise_config_errors(tokens, targets, message):
    lm = small_lm("pre")
    with pytest.raises(ConfigError, match=message):
        lm.loss(tokens, targets)


def test_a_non_causal_stack_is_refused():
    with pytest.raises(ConfigError, match="causal"):
        LanguageModel(lnref.build("pre", 1, 8, 2, 16), vocab_size=5, max_len=4)
