"""Training a scheme's stack as a small language model, a divergence detector and the stability grid.

One run (``train``):

    lm = LanguageModel(build(scheme, layers, causal=True), ...)     seeded by ``seed``
         (a translation task: TranslationModel(build(scheme, encoder_layers=N, decoder_layers=M)))
    for t = 1 .. steps:
        batch = task.batch(data_rng, batch)                        data stream seeded by ``seed``
        loss_t, g = lm.value_and_grad(*batch)                      (tokens, targets) or (source, inputs, targets)
        stop as *diverged* if loss_t or |g| is not finite, or loss_t > k * loss_1
        g = clip(g) when --clip is given
        optimizer.step(params, g, schedule(t))
    every ``eval_every`` steps and at the end: loss and accuracy on a fixed held-out batch

The divergence factor k is 3 by default. At initialization the loss sits near log(V), the
loss of a uniform guess, and a working run only goes down from there. A loss three times
above its first value means the optimizer has pushed the model far from anything it had
learned. A diverged run is a result, not an error: it returns normally with
``diverged: true``, the step and the reason. The trainer never retries or skips a step.

Outcomes (``Summary.outcome``), decided from numbers fixed before any run:
    diverged      the detector fired
    no progress   the final held-out loss is above 0.9 x the task's context-free baseline (the
                  best loss a model can reach without reading the context)
    trained       otherwise

Determinism: the model's initialization, the training batches and the held-out batch come
from separate seeded NumPy generators. The held-out batch depends on the task only, so every
run of a grid is scored on the same sequences. The engine's kernels have a fixed summation
order. The same configuration therefore gives the same bits on the same machine.

The stability grid runs every (scheme, depth, warm-up, seed) with all else equal and
tabulates the outcomes (``grid_configs``, ``run_grid``, ``summarize_grid``, ``format_grid``).
Each run is a task of the sweep machinery (``lnref.sweep``, kind ``stability``): its
configuration is ``TrainConfig.to_dict()``, so ``lnref stability`` can share the runs out
over processes or a Dask cluster, record each as it finishes and resume. See
``docs/stability.md``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from lnref.building import build
from lnref.lm import LanguageModel, TranslationModel
from lnref.model import ConfigError
from lnref.optim import OPTIMIZERS, SCHEDULES, Schedule, clip_by_global_norm, global_norm
from lnref.sweep import driver
from lnref.sweep.backends import open_backend
from lnref.sweep.kinds import Kind
from lnref.sweep.progress import Progress
from lnref.sweep.task import Task, grid
from lnref.tasks import SEQ2SEQ_TASKS, TASKS, get_task

DIVERGENCE_FACTOR = 3.0
NO_PROGRESS_FRACTION = 0.9
EVAL_SEED = 20240501  # the held-out batch depends on the task only, never on the run's seed
TAIL = 20  # final_train_loss averages the last TAIL training losses

DEFAULT_WARMUP = 100

GRID_SCHEMES = ("post", "pre", "b2t", "residual", "admin", "deepnorm")
GRID_DEPTHS = (6, 18)
ENCODER_DECODER_DEPTHS = ((6, 6), (18, 18))  # the grid of a translation task: (N, M) pairs
GRID_SEEDS = 3


def default_warmup(steps: int) -> int:
    """The warm-up of a run that names none: ``DEFAULT_WARMUP`` steps, or for a run shorter
    than that a tenth of its steps (at least one), so that a default never refuses a run."""
    return DEFAULT_WARMUP if steps >= DEFAULT_WARMUP else max(1, steps // 10)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run. Two equal configs give bit-identical runs."""

    scheme: str
    layers: int
    task: str
    lr: float
    warmup: int
    steps: int
    seed: int = 0
    d_model: int = 32
    heads: int = 2
    d_ff: int | None = None  # 4 d_model when None
    norm: str = "layernorm"
    activation: str = "relu"
    eps: float = 1e-5
    dtype: str = "float64"
    post_fraction: float = 0.25
    qk_norm: str = "none"
    options: dict = field(default_factory=dict)  # the scheme's own
    batch: int = 16
    seq: int | None = None  # the task's default when None
    schedule: str = "constant"
    optimizer: str = "adam"
    beta1: float = 0.9
    beta2: float = 0.98
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    clip: float | None = None
    eval_every: int = 50
    eval_batch: int = 64
    divergence_factor: float = DIVERGENCE_FACTOR
    encoder_layers: int = 0  # a translation task's encoder-decoder model: N and M (layers = N + M)
    decoder_layers: int = 0

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; valid tasks: {', '.join(TASKS)}")
        depths = (self.encoder_layers, self.decoder_layers)
        if self.task in SEQ2SEQ_TASKS:
            if min(depths) < 1 or self.layers != sum(depths):
                raise ConfigError(
                    f"task {self.task} trains an encoder-decoder model: give encoder_layers and decoder_layers "
                    f"(--encoder-layers, --decoder-layers), got {depths}"
                )
        elif any(depths):
            raise ConfigError(
                f"task {self.task} trains a language model of one stack; an encoder-decoder model "
                f"trains on {', '.join(SEQ2SEQ_TASKS)}"
            )
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be a finite number > 0, got {self.lr!r}")
        for name in ("steps", "batch", "eval_every", "eval_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, np.integer)) or self.warmup < 0:
            raise ConfigError(f"warm-up must be an integer >= 0, got {self.warmup!r}")
        if self.warmup > self.steps:
            raise ConfigError(f"warm-up ({self.warmup} steps) is longer than the run ({self.steps} steps)")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip norm must be a finite number > 0, got {self.clip!r}")
        if not (math.isfinite(self.divergence_factor) and self.divergence_factor > 1):
            raise ConfigError(f"divergence factor must be > 1, got {self.divergence_factor!r}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"Adam betas must be in [0, 1), got {self.beta1}, {self.beta2}")
        if not (math.isfinite(self.adam_eps) and self.adam_eps > 0):
            raise ConfigError(f"Adam eps must be finite and > 0, got {self.adam_eps!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight decay must be finite and >= 0, got {self.weight_decay!r}")
        if self.seq is not None and (isinstance(self.seq, bool) or self.seq < 1):
            raise ConfigError(f"seq must be an integer >= 1, got {self.seq!r}")

    def to_dict(self):
        return dataclasses.asdict(self)

    @property
    def depth(self):
        """The model's depth as the grids name it: 18, or "18-18" for an encoder-decoder model."""
        return depth_label(self.to_dict())


def depth_label(config):
    """18 for a run's config (a dict) of one stack, "18-18" for an encoder-decoder model's."""
    if config.get("encoder_layers"):
        return f"{config['encoder_layers']}-{config['decoder_layers']}"
    return config["layers"]


def depth_order(label):
    """A sort key of depth labels: 6 before 18, "6-6" before "18-18"."""
    return tuple(int(part) for part in str(label).split("-"))


@dataclass
class TrainResult:
    """A run's record: its config, the task, the per-step curve, the held-out evaluations and a summary."""

    config: TrainConfig
    task: dict
    n_params: int
    loss: list = field(default_factory=list)  # training loss of step t = 1..steps_run
    lr: list = field(default_factory=list)  # learning rate used at step t
    grad_norm: list = field(default_factory=list)  # global gradient norm before clipping
    evals: list = field(default_factory=list)  # {"step", "loss", "accuracy"}, step 0 = init
    diverged: bool = False
    diverged_at: int | None = None
    divergence_reason: str | None = None
    train_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def steps_run(self):
        return len(self.loss)

    def summary(self):
        finite_evals = [e for e in self.evals if e["loss"] is not None]
        final = self.evals[-1] if self.evals and not self.diverged else None
        baseline = self.task["baseline_loss"]
        if self.diverged:
            outcome = "diverged"
        elif final["loss"] > NO_PROGRESS_FRACTION * baseline:
            outcome = "no progress"
        else:
            outcome = "trained"
        tail = [x for x in self.loss[-TAIL:] if math.isfinite(x)]
        return {
            "outcome": outcome,
            "diverged": self.diverged,
            "diverged_at": self.diverged_at,
            "divergence_reason": self.divergence_reason,
            "initial_loss": _finite_or_none(self.loss[0]) if self.loss else None,
            "final_loss": None if final is None else final["loss"],
            "best_loss": min((e["loss"] for e in finite_evals), default=None),
            "final_accuracy": None if final is None else final["accuracy"],
            "best_accuracy": max((e["accuracy"] for e in finite_evals), default=None),
            "final_train_loss": float(np.mean(tail)) if tail else None,
            "baseline_loss": baseline,
            "steps_run": self.steps_run,
            "steps_per_second": self.steps_run / self.train_seconds if self.train_seconds > 0 else None,
            "seconds": self.total_seconds,
        }

    def to_dict(self):
        return {
            "config": self.config.to_dict(),
            "task": self.task,
            "n_params": self.n_params,
            "summary": self.summary(),
            "curve": {
                "loss": [_finite_or_none(x) for x in self.loss],
                "lr": self.lr,
                "grad_norm": [_finite_or_none(x) for x in self.grad_norm],
            },
            "evals": self.evals,
        }


def _finite_or_none(x):
    """JSON has no NaN or inf: a non-finite value is written as null."""
    return float(x) if math.isfinite(x) else None


def make_lm(config, task):
    """The language model (or, for a translation task, the translation model) a config
    describes (the stack seeded by ``config.seed``)."""
    d_ff = 4 * config.d_model if config.d_ff is None else config.d_ff
    if task.seq2seq:
        shape = {"encoder_layers": config.encoder_layers, "decoder_layers": config.decoder_layers}
    else:
        shape = {"n_layers": config.layers, "causal": True}
    model = build(
        config.scheme,
        d_model=config.d_model,
        n_heads=config.heads,
        d_ff=d_ff,
        seed=config.seed,
        **shape,
        norm=config.norm,
        activation=config.activation,
        eps=config.eps,
        dtype=config.dtype,
        post_fraction=config.post_fraction,
        qk_norm=config.qk_norm,
        options=config.options,
    )
    if task.seq2seq:
        return TranslationModel(model, task.source_vocab, task.vocab_size, max(task.seq_len, task.source_len))
    return LanguageModel(model, task.vocab_size, task.seq_len)


def train(config: TrainConfig, progress=None, log_every=50):
    """Run ``config`` to the end or to divergence; return a ``TrainResult``.

    ``progress(message)`` receives a line every ``log_every`` steps and after each evaluation.
    """
    started = time.perf_counter()
    task = get_task(config.task, config.seq)
    lm = make_lm(config, task)
    schedule = Schedule(config.lr, config.warmup, config.steps, config.schedule)
    optimizer = OPTIMIZERS[config.optimizer](
        lm.params, betas=(config.beta1, config.beta2), eps=config.adam_eps, weight_decay=config.weight_decay
    )
    project = getattr(lm.model.scheme, "project", None)  # nGPT's unit-norm weights, after every step
    stacks = (lm.model.encoder, lm.model.decoder) if task.seq2seq else (lm.model,)
    data_rng = np.random.default_rng([config.seed, 10])
    eval_batch = task.eval_batch(np.random.default_rng(EVAL_SEED), config.eval_batch)
    result = TrainResult(config, task.describe(), lm.n_params())

    def evaluate(step):
        loss, acc = lm.evaluate(*eval_batch)
        result.evals.append({"step": step, "loss": loss, "accuracy": acc})
        if progress:
            progress(f"eval step {step}: held-out loss {loss:.4f}, accuracy {acc:.3f}")

    evaluate(0)
    train_time = 0.0
    for step in range(1, config.steps + 1):
        tick = time.perf_counter()
        batch = task.batch(data_rng, config.batch)
        try:
            loss, grads = lm.value_and_grad(*batch)
        except ValueError as err:
            # The primitives refuse NaN or inf inputs: an activation overflowed on the way.
            if "NaN or inf" not in str(err):
                raise
            loss, grads = math.nan, None
        norm = global_norm(grads) if grads is not None else math.nan
        result.loss.append(loss)
        result.lr.append(schedule(step))
        result.grad_norm.append(norm)
        reason = _divergence(loss, norm, result.loss[0], config.divergence_factor)
        if reason:
            train_time += time.perf_counter() - tick
            result.diverged, result.diverged_at, result.divergence_reason = True, step, reason
            if progress:
                progress(f"step {step}: diverged ({reason})")
            break
        if config.clip is not None:
            grads, _ = clip_by_global_norm(grads, config.clip)
        optimizer.step(lm.params, grads, schedule(step))
        if project is not None:
            for stack in stacks:  # each stack's parameters under its own names and config
                project(stack.params, stack.config)
        train_time += time.perf_counter() - tick
        if progress and (step % log_every == 0 or step == config.steps):
            progress(
                f"step {step}/{config.steps}: loss {loss:.4f}  lr {schedule(step):.2e}  "
                f"|g| {norm:.3g}  ({step / train_time:.1f} steps/s)"
            )
        if step % config.eval_every == 0 or step == config.steps:
            evaluate(step)
    result.train_seconds = train_time
    result.total_seconds = time.perf_counter() - started
    return result


def _divergence(loss, grad_norm, initial_loss, factor):
    """Why this step counts as divergence, or None."""
    if not math.isfinite(loss):
        return "non-finite loss (or an activation overflowed to inf)"
    if not math.isfinite(grad_norm):
        return "non-finite gradient"
    if loss > factor * initial_loss:
        return f"loss {loss:.4g} > {factor:g} x initial loss {initial_loss:.4g}"
    return None


# ----- the stability grid ---------------------------------------------------------------


def grid_configs(schemes=GRID_SCHEMES, depths=GRID_DEPTHS, warmups=(0, 100), seeds=range(GRID_SEEDS), **common):
    """One TrainConfig per (scheme, depth, warm-up, seed), everything else from ``common``; a
    depth is a number of layers, or an (N, M) pair of an encoder-decoder model's."""
    return [
        TrainConfig(scheme=s, warmup=w, seed=seed, **_depth_settings(d), **common)
        for d in depths
        for w in warmups
        for s in schemes
        for seed in seeds
    ]


def _depth_settings(depth):
    if isinstance(depth, tuple):
        return {"layers": sum(depth), "encoder_layers": depth[0], "decoder_layers": depth[1]}
    return {"layers": depth}


def task_config(config):
    """A run's configuration as a sweep task holds it: ``config.to_dict()`` with every float
    setting a float (lr=1 and lr=1.0 are one run, so they must be one key), and without the
    encoder-decoder depths of a run of one stack (its key as it was before they existed)."""
    values = config.to_dict()
    for spec in dataclasses.fields(TrainConfig):
        value = values[spec.name]
        if "float" in str(spec.type) and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            values[spec.name] = float(value)
    if not config.encoder_layers:
        del values["encoder_layers"], values["decoder_layers"]
    return values


def grid_tasks(configs):
    """The sweep tasks of ``configs``, in their order (a configuration given twice runs once)."""
    return grid("stability", [task_config(config) for config in configs])


def run_grid_task(config):
    """One run of the grid, as the sweep's workers run it: the ``TrainResult`` as a dict."""
    return train(TrainConfig(**config)).to_dict()


def _run_label(config):
    return f"{config['scheme']} L={depth_label(config)} warmup={config['warmup']} seed={config['seed']}"


def _run_outcome(result):
    summary = result["summary"]
    if summary["diverged"]:
        return f"diverged at step {summary['diverged_at']}"
    return f"held-out loss {summary['final_loss']:.3f}, accuracy {summary['final_accuracy']:.3f}"


STABILITY_KIND = Kind("stability", run_grid_task, _run_label, _run_outcome)


def run_grid(configs, workers=1, progress=None):
    """Train every config; results (as dicts) in the order of ``configs``.

    With ``workers`` > 1 the runs are shared out among that many processes (the sweep's
    ``local`` backend), otherwise they run here. Each run is deterministic on its own, so the
    results do not depend on the number of workers. ``progress(line)`` receives a line per
    finished run. A run that raises makes this raise RuntimeError with its error, once
    every run has finished.
    """
    configs = list(configs)
    tasks = grid_tasks(configs)
    reporter = Progress("stability", progress) if progress else None
    if reporter:
        reporter.start(len(tasks), 0)
    with open_backend("local" if workers > 1 else "serial", workers) as backend:
        outcome = driver.run(tasks, backend.executor, window=backend.window, progress=reporter)
    if outcome.failed:
        first = outcome.failed[0]
        raise RuntimeError(
            f"{len(outcome.failed)} of {len(tasks)} runs failed; {_run_label(first['config'])}: {first['error']}"
        )
    by_key = {record["key"]: record["result"] for record in outcome.records}
    return [by_key[Task("stability", task_config(config)).key] for config in configs]


def summarize_grid(results):
    """One row per (depth, warm-up, scheme) cell, aggregated over seeds, in first-seen order.

    Final and best losses are means over the runs that did not diverge, with their
    min-max range, since a diverged run has no final loss.
    """
    cells = {}
    for result in results:
        config = result["config"]
        key = (depth_label(config), config["warmup"], config["scheme"])
        cells.setdefault(key, []).append(result)
    rows = []
    for (layers, warmup, scheme), runs in cells.items():
        summaries = [r["summary"] for r in runs]
        finished = [s for s in summaries if not s["diverged"]]
        finals = [s["final_loss"] for s in finished]
        accuracies = [s["final_accuracy"] for s in finished]
        rows.append(
            {
                "layers": layers,
                "warmup": warmup,
                "scheme": scheme,
                "runs": len(runs),
                "diverged": sum(s["diverged"] for s in summaries),
                "diverged_at": [s["diverged_at"] for s in summaries if s["diverged"]],
                "no_progress": sum(s["outcome"] == "no progress" for s in summaries),
                "trained": sum(s["outcome"] == "trained" for s in summaries),
                "final_loss_mean": float(np.mean(finals)) if finals else None,
                "final_loss_min": min(finals, default=None),
                "final_loss_max": max(finals, default=None),
                "final_accuracy_mean": float(np.mean(accuracies)) if accuracies else None,
                "best_loss_mean": float(np.mean([s["best_loss"] for s in summaries])),
                "baseline_loss": summaries[0]["baseline_loss"],
                "seeds": [r["config"]["seed"] for r in runs],
            }
        )
    return rows


def format_grid(rows):
    """The grid as a Markdown table (the same text ``lnref stability`` prints)."""
    lines = [
        "| depth | warm-up | scheme | diverged | no progress | trained | final loss, mean (min-max) "
        "| final accuracy | best loss |",
        "|---:|---:|:---|---:|---:|---:|:---|---:|---:|",
    ]
    for row in rows:
        if row["final_loss_mean"] is None:
            final, accuracy = "-", "-"
        else:
            final = f"{row['final_loss_mean']:.3f} ({row['final_loss_min']:.3f}-{row['final_loss_max']:.3f})"
            accuracy = f"{row['final_accuracy_mean']:.3f}"
        diverged = f"{row['diverged']}/{row['runs']}"
        if row["diverged_at"]:
            diverged += f" (step {', '.join(str(s) for s in row['diverged_at'])})"
        lines.append(
            f"| {row['layers']} | {row['warmup']} | {row['scheme']} | {diverged} | "
            f"{row['no_progress']}/{row['runs']} | {row['trained']}/{row['runs']} | {final} | "
            f"{accuracy} | {row['best_loss_mean']:.3f} |"
        )
    return "\n".join(lines)


# ----- figures (matplotlib: the ``lnref[plot]`` extra) -------------------------------------
