"""Training an encoder-decoder model: the mirror task, the translation model's gradients against
finite differences (with a negative control), ``lnref train`` and ``lnref stability`` with
``--encoder-layers`` and ``--decoder-layers``, and their one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import lnref
from lnref.cli import main
from lnref.lm import EMBED_SOURCE, EMBED_TARGET, TranslationModel
from lnref.model import ConfigError
from lnref.tasks import SEQ2SEQ_TASKS, MirrorTask, get_task
from lnref.train import TrainConfig, train

STEP = 1e-3
RTOL = 1e-7
SMALL = dict(d_model=8, n_heads=2, d_ff=16, activation="gelu")  # GELU: a smooth loss


def translation_model(scheme="post", encoder_layers=2, decoder_layers=2, seed=0):
    """A small translation model with every parameter moved off its initialization."""
    model = lnref.build(scheme, encoder_layers=encoder_layers, decoder_layers=decoder_layers, seed=seed, **SMALL)
    task = get_task("mirror", 5)
    tm = TranslationModel(model, task.source_vocab, task.vocab_size, task.seq_len)
    rng = np.random.default_rng(seed + 100)
    for value in tm.params.values():
        value += 0.1 * rng.standard_normal(value.shape)
    return tm, task.batch(np.random.default_rng(seed), 3)


def directional_error(tm, grads, batch, seed=0):
    """|D_h - <g, u>| / max(|D_h|, |<g, u>|) along a random unit direction over every tensor,
    D_h the fourth-order central difference of the loss."""
    rng = np.random.default_rng(seed)
    direction = {name: rng.standard_normal(value.shape) for name, value in tm.params.items()}
    norm = np.sqrt(sum(float(np.vdot(u, u)) for u in direction.values()))

    def loss_at(t):
        return tm.loss(*batch, params={n: tm.params[n] + t * u / norm for n, u in direction.items()})

    numeric = (8 * (loss_at(STEP) - loss_at(-STEP)) - (loss_at(2 * STEP) - loss_at(-2 * STEP))) / (12 * STEP)
    analytic = sum(float(np.vdot(grads[n], u)) for n, u in direction.items()) / norm
    return abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-12)


# ----- the task -----


def test_mirror_is_a_translation_task_whose_target_is_the_source_reversed():
    assert "mirror" in SEQ2SEQ_TASKS and get_task("mirror").seq2seq
    task = MirrorTask(seq_len=6, symbols=5)
    source, inputs, targets = task.batch(np.random.default_rng(0), 4)
    assert source.shape == inputs.shape == targets.shape == (4, 6)
    assert np.array_equal(targets, source[:, ::-1])
    assert np.all(inputs[:, 0] == task.bos) and np.array_equal(inputs[:, 1:], targets[:, :-1])
    assert task.vocab_size == task.source_vocab + 1  # the target side adds BOS


def test_the_same_seed_draws_the_same_batch():
    task = get_task("mirror")
    first, second = (task.batch(np.random.default_rng(3), 2) for _ in range(2))
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


# ----- the translation model's gradients -----


@pytest.mark.parametrize("scheme", ["post", "pre", "residual", "admin", "deepnorm"])
def test_the_translation_model_s_gradient_matches_finite_differences(scheme):
    tm, batch = translation_model(scheme)
    _, grads = tm.value_and_grad(*batch)
    assert directional_error(tm, grads, batch) < RTOL


def test_a_source_embedding_gradient_off_by_one_part_in_ten_thousand_fails_the_check():
    tm, batch = translation_model()
    _, grads = tm.value_and_grad(*batch)
    grads[EMBED_SOURCE] = grads[EMBED_SOURCE] * (1 + 1e-4)
    rng = np.random.default_rng(0)  # a direction along the source embedding alone
    direction = rng.standard_normal(tm.params[EMBED_SOURCE].shape)
    direction /= np.linalg.norm(direction)

    def loss_at(t):
        return tm.loss(*batch, params={**tm.params, EMBED_SOURCE: tm.params[EMBED_SOURCE] + t * direction})

    numeric = (8 * (loss_at(STEP) - loss_at(-STEP)) - (loss_at(2 * STEP) - loss_at(-2 * STEP))) / (12 * STEP)
    analytic = float(np.vdot(grads[EMBED_SOURCE], direction))
    assert abs(numeric - analytic) / abs(numeric) > 10 * RTOL


def test_the_loss_reaches_both_embeddings_and_both_stacks():
    tm, batch = translation_model()
    _, grads = tm.value_and_grad(*batch)
    for name in (EMBED_SOURCE, EMBED_TARGET, "encoder.layers.0.attn.wq", "decoder.layers.1.cross.wk"):
        assert np.abs(grads[name]).max() > 0, name


def test_a_model_of_one_stack_is_no_translation_model():
    with pytest.raises(ConfigError, match="needs an encoder-decoder model"):
        TranslationModel(lnref.build("pre", 2, **SMALL), 5, 6, 8)


# ----- training -----


def tiny(**changes):
    settings = dict(scheme="post", layers=2, encoder_layers=1, decoder_layers=1, task="mirror", lr=3e-3, warmup=2)
    settings.update(steps=6, d_model=8, heads=2, batch=4, eval_batch=8, eval_every=3, seq=4)
    return TrainConfig(**{**settings, **changes})


def test_a_run_on_mirror_is_deterministic():
    first, second = train(tiny()).to_dict(), train(tiny()).to_dict()
    assert first["curve"] == second["curve"] and first["evals"] == second["evals"]


def test_a_small_model_learns_to_mirror_its_source():
    config = tiny(scheme="pre", lr=3e-3, warmup=10, steps=200, d_model=16, batch=16, eval_every=100)
    summary = train(config).summary()
    assert summary["outcome"] == "trained" and summary["final_accuracy"] > 0.95, summary


def test_mirror_needs_an_encoder_decoder_model_and_the_other_tasks_refuse_one():
    with pytest.raises(ConfigError, match="trains an encoder-decoder model"):
        tiny(encoder_layers=0, decoder_layers=0)
    with pytest.raises(ConfigError, match="trains a language model of one stack"):
        tiny(task="reverse")


def invoke(*args):
    return CliRunner().invoke(main, list(args))


TRAIN = ["train", "--scheme", "post", "--task", "mirror", "--d-model", "8", "--batch", "4", "--seq", "4"]
TRAIN += ["--steps", "4", "--warmup", "1", "--eval-every", "2"]


def test_cli_trains_an_encoder_decoder_model_on_mirror():
    result = invoke(*TRAIN, "--encoder-layers", "2", "--decoder-layers", "1", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert (record["config"]["encoder_layers"], record["config"]["decoder_layers"]) == (2, 1)
    assert record["summary"]["steps_run"] == 4 and record["task"]["source_len"] == 4


@pytest.mark.parametrize(
    "args, words",
    [
        (["--encoder-layers", "1"], "go together"),
        ([], "trains an encoder-decoder model"),
        (["--encoder-layers", "1", "--decoder-layers", "1", "--task", "reverse"], "one stack"),
        (["--encoder-layers", "1", "--decoder-layers", "1", "--source-len", "3"], "--source-len is not used"),
        (["--encoder-layers", "1", "--decoder-layers", "1", "--cross-attention"], "--cross-attention"),
    ],
)
def test_cli_train_options_that_do_not_go_together_are_one_line_and_exit_2(args, words):
    result = invoke(*TRAIN, *args)
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output


STABILITY = ["stability", "--schemes", "post,pre", "--task", "mirror", "--seeds", "1", "--steps", "4"]
STABILITY += ["--warmup", "2", "--d-model", "8", "--batch", "4", "--seq", "4", "--eval-every", "2"]


def test_cli_stability_pairs_encoder_and_decoder_layers_into_depths():
    result = invoke(*STABILITY, "--encoder-layers", "1,2", "--decoder-layers", "1,1")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 1-1") or line.startswith("| 2-1")]
    assert len(rows) == 2 * 2 * 2  # depths x warm-up arms x schemes


@pytest.mark.parametrize(
    "args, words",
    [
        (["--encoder-layers", "1"], "go together"),
        (["--encoder-layers", "1,2", "--decoder-layers", "1"], "pair up in order"),
        (["--encoder-layers", "1", "--decoder-layers", "1", "--depths", "1-1"], "not both"),
        (["--encoder-layers", "1", "--decoder-layers", "1", "--task", "reverse"], "trains one stack"),
        (["--encoder-layers", "1", "--decoder-layers", "x"], "N-M pairs"),
    ],
)
def test_cli_stability_options_that_do_not_go_together_are_one_line_and_exit_2(args, words):
    result = invoke(*STABILITY, *args)
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
