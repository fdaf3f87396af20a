"""Training: the optimizers, schedules and clipping, the tasks, the trainer's determinism and
divergence detector, the ``train`` and ``stability`` commands, and a reduced stability grid.

Speed targets live in benchmarks/bench_train.py, not here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner

from lnref.cli import main
from lnref.model import ConfigError
from lnref.optim import Adam, AdamW, Schedule, clip_by_global_norm, global_norm
from lnref.tasks import IGNORE, CharTask, RecallTask, ReverseTask, get_task, load_text
from lnref.train import TrainConfig, _divergence, format_grid, grid_configs, run_grid, summarize_grid, train

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
TINY = dict(layers=2, d_model=8, heads=2, batch=4, eval_batch=8, eval_every=5)


# ----- Adam / AdamW -----------------------------------------------------------------------


def adam_by_hand(theta, grads, lr, beta1, beta2, eps, weight_decay=0.0, decoupled=False, bias_correction=True):
    """Kingma and Ba's Algorithm 1 for one scalar, written as plainly as possible."""
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        if weight_decay and not decoupled:
            g = g + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t) if bias_correction else m
        v_hat = v / (1 - beta2**t) if bias_correction else v
        step = m_hat / (math.sqrt(v_hat) + eps)
        if weight_decay and decoupled:
            step += weight_decay * theta
        theta = theta - lr * step
    return theta


def run_optimizer(cls, grads, theta0=0.7, lr=0.01, **options):
    params = {"w": np.full((1, 1), theta0)}
    optimizer = cls(params, betas=(0.9, 0.98), eps=1e-8, **options)
    for g in grads:
        optimizer.step(params, {"w": np.full((1, 1), g)}, lr)
    return params["w"].item()


GRADS = [0.3, -1.2, 0.05, 2.0, -0.4]


def test_adam_matches_the_algorithm_by_hand():
    by_hand = adam_by_hand(0.7, GRADS, 0.01, 0.9, 0.98, 1e-8)
    assert run_optimizer(Adam, GRADS) == pytest.approx(by_hand, rel=1e-14)
    # Negative control: the same comparison sees a missing bias correction.
    no_correction = adam_by_hand(0.7, GRADS, 0.01, 0.9, 0.98, 1e-8, bias_correction=False)
    assert abs(no_correction - by_hand) > 1e-3


def test_adam_weight_decay_is_added_to_the_gradient():
    by_hand = adam_by_hand(0.7, GRADS, 0.01, 0.9, 0.98, 1e-8, weight_decay=0.1)
    assert run_optimizer(Adam, GRADS, weight_decay=0.1) == pytest.approx(by_hand, rel=1e-14)
    decoupled = adam_by_hand(0.7, GRADS, 0.01, 0.9, 0.98, 1e-8, weight_decay=0.1, decoupled=True)
    assert abs(decoupled - by_hand) > 1e-5  # the two forms differ measurably here


def test_adamw_decouples_weight_decay():
    by_hand = adam_by_hand(0.7, GRADS, 0.01, 0.9, 0.98, 1e-8, weight_decay=0.1, decoupled=True)
    assert run_optimizer(AdamW, GRADS, weight_decay=0.1) == pytest.approx(by_hand, rel=1e-14)


def test_weight_decay_skips_vectors_by_default():
    params = {"w": np.ones((2, 2)), "b": np.ones(2)}
    optimizer = AdamW(params, weight_decay=0.5)
    optimizer.step(params, {"w": np.zeros((2, 2)), "b": np.zeros(2)}, lr=0.1)
    np.testing.assert_array_equal(params["b"], np.ones(2))
    np.testing.assert_allclose(params["w"], np.full((2, 2), 1 - 0.1 * 0.5), rtol=1e-15)


@pytest.mark.torch
@pytest.mark.parametrize("name, weight_decay", [("Adam", 0.0), ("Adam", 0.05), ("AdamW", 0.05)])
def test_optimizers_match_pytorch(name, weight_decay):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    rng = np.random.default_rng(3)
    start = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(6)]
    ours = {"w": start.copy()}
    optimizer = {"Adam": Adam, "AdamW": AdamW}[name](ours, betas=(0.9, 0.98), eps=1e-8, weight_decay=weight_decay)
    theirs = torch.tensor(start.copy(), requires_grad=True)
    reference = getattr(torch.optim, name)([theirs], lr=0.003, betas=(0.9, 0.98), eps=1e-8, weight_decay=weight_decay)
    for g in grads:
        optimizer.step(ours, {"w": g}, lr=0.003)
        theirs.grad = torch.tensor(g)
        reference.step()
    np.testing.assert_allclose(ours["w"], theirs.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert np.abs(ours["w"] - start).max() > 1e-3  # the comparison is between moved weights


# ----- schedules and clipping ---------------------------------------------------------------


def test_warmup_is_linear_then_constant():
    schedule = Schedule(1e-3, warmup=4, total=10)
    assert [schedule(t) for t in (1, 2, 4, 5, 10)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3], rel=1e-15)


def test_no_warmup_starts_at_the_peak():
    assert Schedule(1e-3, warmup=0, total=10)(1) == 1e-3


def test_inverse_sqrt_decays_from_the_end_of_warmup():
    schedule = Schedule(1e-3, warmup=4, total=100, kind="inverse_sqrt")
    assert schedule(4) == pytest.approx(1e-3) and schedule(16) == pytest.approx(5e-4)


def test_cosine_reaches_min_lr_at_the_last_step():
    schedule = Schedule(1e-3, warmup=10, total=110, kind="cosine", min_lr=1e-5)
    assert schedule(10) == pytest.approx(1e-3)
    assert schedule(60) == pytest.approx((1e-3 + 1e-5) / 2)
    assert schedule(110) == pytest.approx(1e-5)


@pytest.mark.parametrize(
    "options", [dict(lr=0.0), dict(lr=-1e-3), dict(lr=float("nan")), dict(warmup=11), dict(total=0), dict(kind="step")]
)
def test_schedule_rejects_bad_settings(options):
    settings = dict(lr=1e-3, warmup=2, total=10, kind="constant") | options
    with pytest.raises(ValueError):
        Schedule(**settings)


def test_clipping_scales_to_the_max_norm_and_reports_the_norm_before():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0, 4.0]])}
    clipped, norm = clip_by_global_norm(grads, 1.0)
    assert norm == 5.0
    assert global_norm(clipped) == pytest.approx(1.0, rel=1e-15)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0])


def test_clipping_leaves_small_gradients_alone():
    grads = {"a": np.array([0.3, 0.4])}
    clipped, norm = clip_by_global_norm(grads, 1.0)
    assert clipped is grads and norm == pytest.approx(0.5)


# ----- tasks --------------------------------------------------------------------------------


def is_reversal(task, tokens, targets):
    n = task.length
    return bool(
        np.all(tokens[:, n] == task.separator)
        and np.all(targets[:, :n] == IGNORE)
        and np.all(targets[:, n:] == tokens[:, :n][:, ::-1])
    )


def answers_are_recalled(task, tokens, targets):
    """Every scored target is the value stored with the query key at that position."""
    for row_tokens, row_targets in zip(tokens, targets):
        memory = dict(zip(row_tokens[0 : 2 * task.pairs : 2], row_tokens[1 : 2 * task.pairs : 2]))
        for position in np.flatnonzero(row_targets != IGNORE):
            if memory.get(row_tokens[position]) != row_targets[position]:
                return False
    return True


def test_reverse_batches_hold_the_reversed_source():
    task = ReverseTask(16)
    tokens, targets = task.batch(np.random.default_rng(0), 32)
    assert tokens.shape == targets.shape == (32, 16)
    assert is_reversal(task, tokens, targets)
    broken = targets.copy()
    broken[0, [8, 9]] = broken[0, [9, 8]] if broken[0, 8] != broken[0, 9] else (broken[0, 8] + 1) % 10
    assert not is_reversal(task, tokens, broken)  # negative control


def test_recall_batches_score_the_stored_values():
    task = RecallTask(16)
    tokens, targets = task.batch(np.random.default_rng(0), 32)
    assert (task.pairs, task.queries) == (4, 4)
    assert tokens.shape == (32, 16) and (targets != IGNORE).sum(axis=1).tolist() == [4] * 32
    assert answers_are_recalled(task, tokens, targets)
    keys = tokens[:, 0:8:2]
    assert all(len(set(row)) == 4 for row in keys)  # distinct keys, so the answer is unique
    broken = targets.copy()
    position = np.flatnonzero(broken[0] != IGNORE)[0]
    broken[0, position] = task.keys + (broken[0, position] - task.keys + 1) % task.values
    assert not answers_are_recalled(task, tokens, broken)  # negative control


def test_char_windows_predict_the_next_character_and_hold_out_the_tail():
    task = CharTask(32)
    tokens, targets = task.batch(np.random.default_rng(0), 8)
    np.testing.assert_array_equal(tokens[:, 1:], targets[:, :-1])
    text = load_text()
    for row in tokens:
        assert task.decode(row) in text[: len(task.train_ids)]
    eval_tokens, _ = task.eval_batch(np.random.default_rng(0), 8)
    held_out = text[len(task.train_ids) :]
    assert all(task.decode(row) in held_out for row in eval_tokens)


def test_the_shipped_text_is_public_domain_ascii_under_200_kb():
    path = os.path.join(os.path.dirname(importlib.util.find_spec("lnref").origin), "data", "devils_dictionary.txt")
    raw = open(path, "rb").read()
    assert len(raw) < 200_000
    raw.decode("ascii")
    assert b"A Public Domain Text, Copyright Expired" in raw[:2000]


def test_baseline_loss_is_the_entropy_of_the_target_distribution():
    assert ReverseTask(16).baseline_loss == pytest.approx(math.log(10))
    task = CharTask(8, text="aab" * 50)
    assert task.baseline_loss == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)), rel=1e-3)


@pytest.mark.parametrize("name, seq", [("reverse", 7), ("recall", 2), ("nonsense", None)])
def test_bad_task_settings_raise(name, seq):
    with pytest.raises(ValueError):
        get_task(name, seq)


def test_task_batches_are_deterministic_in_the_generator():
    task = RecallTask(16)
    first = task.batch(np.random.default_rng(5), 4)
    again = task.batch(np.random.default_rng(5), 4)
    other = task.batch(np.random.default_rng(6), 4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])


# ----- the trainer ------------------------------------------------------------------------------


def tiny(**options):
    return TrainConfig(**(dict(scheme="pre", task="reverse", lr=3e-3, warmup=2, steps=10) | TINY | options))


def test_training_reduces_the_loss_on_reversal():
    result = train(tiny(steps=60, lr=1e-2))
    summary = result.summary()
    assert not summary["diverged"]
    assert summary["final_loss"] < 0.9 * result.evals[0]["loss"]


def test_same_seed_same_bits_and_another_seed_differs():
    first, again, other = train(tiny()), train(tiny()), train(tiny(seed=1))
    assert first.loss == again.loss and first.evals == again.evals and first.grad_norm == again.grad_norm
    assert first.loss != other.loss


def test_the_curve_records_every_step_and_the_schedule():
    result = train(tiny(steps=8, warmup=4))
    assert len(result.loss) == len(result.lr) == len(result.grad_norm) == 8
    assert result.lr[:5] == pytest.approx([0.75e-3, 1.5e-3, 2.25e-3, 3e-3, 3e-3])
    assert [e["step"] for e in result.evals] == [0, 5, 8]


def test_divergence_rules():
    assert _divergence(float("nan"), 1.0, 2.0, 3.0).startswith("non-finite loss")
    assert _divergence(1.0, float("inf"), 2.0, 3.0) == "non-finite gradient"
    assert _divergence(6.1, 1.0, 2.0, 3.0).startswith("loss 6.1 > 3 x initial")
    assert _divergence(5.9, 1.0, 2.0, 3.0) is None  # negative control: under the factor


def test_an_absurd_learning_rate_is_reported_as_diverged_not_raised():
    result = train(tiny(scheme="post", lr=30.0, warmup=0, steps=40))
    summary = result.summary()
    assert summary["diverged"] and summary["outcome"] == "diverged"
    assert 1 < summary["diverged_at"] <= 40 and len(result.loss) == summary["diverged_at"]
    assert summary["final_loss"] is None
    json.dumps(result.to_dict(), allow_nan=False)  # still valid JSON


def failing_on_third_call(monkeypatch, message):
    from lnref.lm import LanguageModel

    real, calls = LanguageModel.value_and_grad, []

    def value_and_grad(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError(message)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LanguageModel, "value_and_grad", value_and_grad)


def test_an_activation_overflowing_to_inf_counts_as_divergence(monkeypatch):
    failing_on_third_call(monkeypatch, "layer_norm: input of shape (64, 8) contains NaN or inf")
    result = train(tiny())
    assert result.diverged and result.diverged_at == 3 and "overflowed" in result.divergence_reason


def test_other_errors_are_raised_not_reported_as_divergence(monkeypatch):
    failing_on_third_call(monkeypatch, "linear: shapes do not fit")
    with pytest.raises(ValueError, match="do not fit"):
        train(tiny())


def test_gradient_clipping_changes_the_run():
    plain, clipped = train(tiny(lr=1e-2)), train(tiny(lr=1e-2, clip=1e-3))
    assert plain.loss[0] == clipped.loss[0]  # same start
    assert plain.loss[-1] != clipped.loss[-1]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(task="sorting"), "unknown task"),
        (dict(lr=0.0), "learning rate"),
        (dict(lr=-1.0), "learning rate"),
        (dict(steps=0), "steps"),
        (dict(warmup=11), "longer than the run"),
        (dict(warmup=-1), "warm-up"),
        (dict(clip=0.0), "clip"),
    ],
)
def test_bad_train_configs_raise_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**options)


# ----- the stability grid -------------------------------------------------------------------------


def test_reduced_grid_covers_every_cell_and_tabulates_it():
    configs = grid_configs(
        ("post", "pre"),
        (1, 2),
        (0, 3),
        range(2),
        task="reverse",
        lr=3e-3,
        steps=6,
        d_model=8,
        heads=2,
        batch=4,
        eval_batch=8,
        eval_every=3,
    )
    results = run_grid(configs)
    rows = summarize_grid(results)
    assert len(results) == 16 and len(rows) == 8
    assert {(r["layers"], r["warmup"], r["scheme"]) for r in rows} == {
        (d, w, s) for d in (1, 2) for w in (0, 3) for s in ("post", "pre")
    }
    assert all(r["runs"] == 2 and r["diverged"] + r["no_progress"] + r["trained"] == 2 for r in rows)
    table = format_grid(rows)
    assert table.count("\n") == 1 + len(rows)


def test_grid_results_do_not_depend_on_the_number_of_workers():
    configs = grid_configs(
        ("post",),
        (2,),
        (0, 2),
        range(1),
        task="recall",
        lr=3e-3,
        steps=4,
        d_model=8,
        heads=2,
        batch=4,
        eval_batch=8,
        eval_every=2,
    )
    serial, parallel = run_grid(configs, workers=1), run_grid(configs, workers=2)
    assert [r["curve"]["loss"] for r in serial] == [r["curve"]["loss"] for r in parallel]


# ----- the command line ---------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(main, list(args))


TRAIN_TINY = [
    "train",
    "--scheme",
    "pre",
    "--layers",
    "2",
    "--d-model",
    "8",
    "--batch",
    "4",
    "--steps",
    "6",
    "--warmup",
    "2",
    "--eval-every",
    "3",
]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "sorting"], "unknown task"),
        (["--lr", "0"], "learning rate"),
        (["--lr", "-0.1"], "learning rate"),
        (["--steps", "0"], "steps"),
        (["--warmup", "7"], "longer than the run"),
        (["--seq", "7"], "even"),
        (["--cross-attention"], "cross-attention"),
    ],
)
def test_train_bad_input_gives_one_line_and_exit_2(args, message):
    result = invoke(*TRAIN_TINY, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.output


def test_train_json_holds_the_summary_and_the_curve():
    result = invoke(*TRAIN_TINY, "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert len(record["curve"]["loss"]) == 6
    summary = record["summary"]
    assert {"final_loss", "best_loss", "final_accuracy", "diverged", "steps_per_second"} <= set(summary)
    assert "step 6/6" in result.stderr  # progress goes to stderr, not into the JSON


def test_train_text_summary_names_the_outcome():
    result = invoke(*TRAIN_TINY)
    assert result.exit_code == 0
    assert "outcome:" in result.stdout and "steps/s" in result.stdout


def test_a_diverged_run_exits_0_and_says_so():
    result = invoke(*TRAIN_TINY[:-6], "--steps", "40", "--warmup", "0", "--lr", "30", "--json", "--scheme", "post")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["diverged"] is True


def test_png_without_matplotlib_fails_before_training(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a)
    )
    monkeypatch.setattr("lnref.train.train", lambda *a, **k: pytest.fail("trained before checking --png"))
    result = invoke(*TRAIN_TINY, "--png", "curve.png")
    assert result.exit_code == 2 and "lnref[plot]" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib (lnref[plot]) is not installed")
def test_train_png_is_written(tmp_path):
    path = tmp_path / "curve.png"
    result = invoke(*TRAIN_TINY, "--png", str(path))
    assert result.exit_code == 0, result.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's private mode


def test_stability_reduced_grid_prints_a_table():
    result = invoke(
        "stability",
        "--schemes",
        "post,pre",
        "--depths",
        "2",
        "--seeds",
        "1",
        "--steps",
        "4",
        "--warmup",
        "2",
        "--d-model",
        "8",
        "--batch",
        "4",
        "--workers",
        "1",
        "--eval-every",
        "2",
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 + 4 and lines[0].startswith("| depth")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--schemes", "post,nope"], "unknown scheme"),
        (["--depths", "6,x"], "comma-separated"),
        (["--warmup", "0"], "must be > 0"),
        (["--lr", "0"], "learning rate"),
        (["--task", "sorting"], "unknown task"),
    ],
)
def test_stability_bad_input_gives_one_line_and_exit_2(args, message):
    result = invoke("stability", "--steps", "4", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr
