"""``lnref train`` and ``lnref stability``: train a scheme as a small language model, and the
warm-up x depth x scheme grid of docs/stability.md.

Exit codes: 0 when the run (or grid) ran, diverged or not, since divergence is a result;
2 for bad input (one line on stderr).
"""

from __future__ import annotations

import json
import os
import sys

import click

from lnref import SCHEMES
from lnref.cli.options import (
    COUNT,
    EXIT_OK,
    encoder_decoder_depths,
    fail,
    input_errors,
    model_options,
    probe_forward,
)
from lnref.cli.sweep import SweepRequest, echo, execute, load, sweep_options

TASK_NAMES = ("reverse", "recall", "chars", "mirror")  # lnref.tasks.TASKS, named here to keep --help light
SEQ2SEQ_TASK_NAMES = ("mirror",)  # lnref.tasks.SEQ2SEQ_TASKS
DEFAULT_LR = 1e-3
DEFAULT_STEPS = 400
DEFAULT_WARMUP = 100  # lnref.train.DEFAULT_WARMUP, named here to keep --help light
WARMUP_DEFAULT_HELP = f"{DEFAULT_WARMUP}, or a tenth of --steps for a shorter run"
TRAIN_DEFAULTS = {"d_model": 32, "d_ff": None, "batch": 16, "seq": None}
TRAIN_HELP = {
    "seq": "Sequence length (default: the task's, 16 or 32).",
    "d_ff": "FFN width (default: 4 x d-model).",
    "causal": "Ignored: language-model training always uses a causal mask.",
    "cross_attention": "Not supported for training (decoder-only language model).",
    "encoder_layers": "With --decoder-layers and a translation task (mirror): the encoder's layers.",
    "decoder_layers": "With --encoder-layers: the decoder's layers.",
    "source_len": "Not used: a translation task's source is as long as its target (--seq).",
}


def _train_model_options(function):
    """The shared model options, with training's own defaults (wider model, real batches)."""
    function = model_options(function)
    for param in function.__click_params__:
        if param.name in TRAIN_DEFAULTS:
            param.default = TRAIN_DEFAULTS[param.name]
            param.show_default = param.default is not None
        if param.name in TRAIN_HELP:
            param.help = TRAIN_HELP[param.name]
    return function


def _training_options(function):
    """Options shared by ``train`` and ``stability``. Numbers are checked by TrainConfig,
    so a bad value gets one line and exit code 2."""
    options = [
        click.option(
            "--task",
            default="reverse",
            show_default=True,
            help=f"One of {', '.join(TASK_NAMES)} ({', '.join(SEQ2SEQ_TASK_NAMES)}: an encoder-decoder model's).",
        ),
        click.option("--lr", type=float, default=DEFAULT_LR, show_default=True, help="Peak learning rate."),
        click.option("--steps", type=int, default=DEFAULT_STEPS, show_default=True, help="Optimizer steps."),
        click.option(
            "--schedule",
            type=click.Choice(["constant", "inverse_sqrt", "cosine"]),
            default="constant",
            show_default=True,
            help="After the linear warm-up.",
        ),
        click.option("--optimizer", type=click.Choice(["adam", "adamw"]), default="adam", show_default=True),
        click.option(
            "--weight-decay",
            type=float,
            default=0.0,
            show_default=True,
            help="L2 (adam) or decoupled (adamw); matrices only.",
        ),
        click.option("--clip", type=float, default=None, help="Clip the global gradient norm to this value."),
        click.option(
            "--eval-every", type=int, default=50, show_default=True, help="Steps between held-out evaluations."
        ),
        click.option(
            "--divergence-factor",
            type=float,
            default=3.0,
            show_default=True,
            help="Diverged when the loss exceeds this multiple of the first step's loss.",
        ),
        click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout."),
        click.option(
            "--png",
            "png",
            type=click.Path(dir_okay=False),
            default=None,
            help="Write the loss curves to this PNG (needs lnref[plot]).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _check_png(path):
    """Before any training: matplotlib present and the destination directory writable."""
    if path is None:
        return
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        fail("--png needs matplotlib: pip install 'lnref[plot]'")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        fail(f"--png: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        fail(f"--png: directory {directory} is not writable")


def _progress(message):
    click.echo(message, err=True)


@click.command()
@_train_model_options
@click.option(
    "--warmup", type=int, default=None, show_default=WARMUP_DEFAULT_HELP, help="Linear warm-up steps (0: none)."
)
@_training_options
def train(
    task,
    lr,
    warmup,
    steps,
    schedule,
    optimizer,
    weight_decay,
    clip,
    eval_every,
    divergence_factor,
    as_json,
    png,
    **options,
):
    """Train one scheme's stack as a language model on a shipped task.

    Progress goes to stderr; a summary (or, with --json, the whole record with the loss
    curve) to stdout. A run that diverges is reported as diverged, with exit code 0.
    """
    if options["cross_attention"]:
        fail("train: --cross-attention is not supported (the language model is decoder-only)")
    if options["source_len"] is not None:
        fail("train: --source-len is not used: a translation task's source is as long as its target (--seq)")
    _check_png(png)
    from lnref.process.workers import one_blas_thread_unless_chosen

    one_blas_thread_unless_chosen()
    with input_errors():
        from lnref.train import TrainConfig, default_warmup
        from lnref.train import train as run_training
        from lnref.train_charts import plot_run

        chosen = warmup is None
        if chosen:
            warmup = default_warmup(steps)
        depths = encoder_decoder_depths(options["encoder_layers"], options["decoder_layers"])
        config = TrainConfig(
            scheme=options["scheme"],
            layers=sum(depths.values()) if depths else options["layers"],
            **depths,
            task=task,
            lr=lr,
            warmup=warmup,
            steps=steps,
            seed=options["seed"],
            d_model=options["d_model"],
            heads=options["heads"],
            d_ff=options["d_ff"],
            norm=options["norm"],
            activation=options["activation"],
            eps=options["eps"],
            dtype=options["dtype"],
            post_fraction=options["post_fraction"],
            qk_norm=options["qk_norm"],
            options=options["options"],
            batch=options["batch"],
            seq=options["seq"],
            schedule=schedule,
            optimizer=optimizer,
            weight_decay=weight_decay,
            clip=clip,
            eval_every=eval_every,
            divergence_factor=divergence_factor,
        )
        from lnref.tasks import get_task
        from lnref.train import make_lm

        chosen_task = get_task(task, options["seq"])  # a bad --seq for the task fails here, before any training
        probe_forward(make_lm(config, chosen_task).model)
    if chosen:
        _note_shortened_warmup(warmup, steps)
    # Outside input_errors: past validation, an exception is a bug and keeps its traceback.
    result = run_training(config, progress=_progress).to_dict()
    if png:
        plot_run(result, png)
        _progress(f"wrote {png}")
    click.echo(json.dumps(result) if as_json else _summary_text(result))
    sys.exit(EXIT_OK)


def _note_shortened_warmup(warmup, steps):
    """One line on stderr when the default warm-up was shortened to fit the run."""
    if warmup != DEFAULT_WARMUP:
        _progress(
            f"note: warm-up {warmup} step{'s' if warmup != 1 else ''} for the {steps}-step run: the default "
            f"{DEFAULT_WARMUP} is longer than the run, so a tenth of it (at least 1); --warmup sets it"
        )


def _summary_text(result):
    config, summary = result["config"], result["summary"]

    def number(value, digits=4):
        return "-" if value is None else f"{value:.{digits}f}"

    diverged = "no"
    if summary["diverged"]:
        diverged = f"yes, at step {summary['diverged_at']} ({summary['divergence_reason']})"
    layers = f"{config['layers']} layers"
    if config.get("encoder_layers"):
        layers = f"{config['encoder_layers']} encoder and {config['decoder_layers']} decoder layers"
    lines = [
        f"scheme {config['scheme']}, {layers}, d_model {config['d_model']}, "
        f"{result['n_params']} parameters; task {config['task']} ({result['task']['description']})",
        f"lr {config['lr']:g}, warm-up {config['warmup']}, {config['schedule']}, {config['optimizer']}, "
        f"batch {config['batch']}, seed {config['seed']}",
        f"outcome:        {summary['outcome']}",
        f"diverged:       {diverged}",
        f"initial loss:   {number(summary['initial_loss'])}   (context-free baseline {summary['baseline_loss']:.4f})",
        f"final loss:     {number(summary['final_loss'])}   (held-out; training, last steps: "
        f"{number(summary['final_train_loss'])})",
        f"best loss:      {number(summary['best_loss'])}",
        f"accuracy:       {number(summary['final_accuracy'], 3)} final, {number(summary['best_accuracy'], 3)} best",
        f"speed:          {number(summary['steps_per_second'], 1)} steps/s, {summary['steps_run']} steps, "
        f"{summary['seconds']:.1f} s in all",
    ]
    return "\n".join(lines)


def _depths(text, encoder_decoder):
    """--depths as a list of numbers of layers, or of (N, M) pairs for a translation task."""
    if text is None:
        text = "6-6,18-18" if encoder_decoder else "6,18"
    shape = "N-M pairs of encoder and decoder layers (6-6,18-18)" if encoder_decoder else "integers"
    try:
        parts = [tuple(int(n) for n in part.split("-")) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(f"--depths must be comma-separated {shape}, got {text!r}")
    if not parts:
        fail("--depths is empty")
    if any(len(part) != (2 if encoder_decoder else 1) for part in parts):
        why = "a translation task trains encoder-decoder models" if encoder_decoder else "this task trains one stack"
        fail(f"--depths must be comma-separated {shape} ({why}), got {text!r}")
    if min(min(part) for part in parts) < 1:
        fail(f"--depths must be >= 1, got {text}")
    return [part if encoder_decoder else part[0] for part in parts]


def _paired_depths(depths, encoder_layers, decoder_layers, task):
    """--depths as given, or --encoder-layers and --decoder-layers paired into its N-M form."""
    if encoder_layers is None and decoder_layers is None:
        return depths
    if encoder_layers is None or decoder_layers is None:
        fail("--encoder-layers and --decoder-layers go together: an encoder-decoder model needs both")
    if depths is not None:
        fail("give --depths or --encoder-layers with --decoder-layers, not both")
    if task not in SEQ2SEQ_TASK_NAMES:
        fail(f"task {task} trains one stack; encoder-decoder models train on {', '.join(SEQ2SEQ_TASK_NAMES)}")
    encoders, decoders = encoder_layers.split(","), decoder_layers.split(",")
    if len(encoders) != len(decoders):
        fail(f"--encoder-layers and --decoder-layers pair up in order: got {len(encoders)} and {len(decoders)} values")
    return ",".join(f"{n.strip()}-{m.strip()}" for n, m in zip(encoders, decoders))


@click.command()
@click.option(
    "--schemes", default="post,pre,b2t,residual,admin,deepnorm", show_default=True, help="Comma-separated schemes."
)
@click.option(
    "--depths",
    default=None,
    help="Comma-separated numbers of layers [default: 6,18]; for a translation task (mirror) "
    "encoder-decoder depths N-M [default: 6-6,18-18].",
)
@click.option(
    "--warmup",
    type=int,
    default=None,
    show_default=WARMUP_DEFAULT_HELP,
    help="The 'some warm-up' arm; the other arm has none.",
)
@click.option(
    "--encoder-layers",
    default=None,
    metavar="N[,N...]",
    help="With --decoder-layers, in place of --depths: the encoder-decoder models' encoder layers, "
    "paired in order with --decoder-layers (a translation task).",
)
@click.option("--decoder-layers", default=None, metavar="M[,M...]", help="With --encoder-layers: the decoder layers.")
@click.option("--seeds", type=COUNT, default=3, show_default=True, help="Seeds 0..N-1 per cell.")
@click.option("--d-model", type=COUNT, default=32, show_default=True)
@click.option("--heads", type=COUNT, default=2, show_default=True)
@click.option("--batch", type=COUNT, default=16, show_default=True)
@click.option("--seq", type=COUNT, default=None, help="Sequence length (default: the task's).")
@_training_options
@sweep_options
def stability(
    schemes,
    depths,
    encoder_layers,
    decoder_layers,
    warmup,
    seeds,
    d_model,
    heads,
    batch,
    seq,
    task,
    lr,
    steps,
    schedule,
    optimizer,
    weight_decay,
    clip,
    eval_every,
    divergence_factor,
    as_json,
    png,
    **sweep,
):
    """The stability grid: scheme x warm-up (none / --warmup) x depth x seeds.

    Prints a Markdown table of outcomes (or, with --json, every run with its curve) and
    optionally writes the loss curves to --png. Each run is recorded as it finishes (--out),
    and a second invocation resumes; --from renders records without running anything. See
    docs/stability.md.
    """
    request = SweepRequest.pop(sweep)
    if request.from_path is not None:
        _check_png(png)
        _stability_output([record["result"] for record in load("stability", request.from_path)], as_json, png)
    scheme_list = [s.strip() for s in schemes.split(",") if s.strip()]
    if not scheme_list:
        fail(f"no scheme given; valid schemes: {', '.join(SCHEMES)}")
    with input_errors():  # a scheme of one's own (a file, a module) is loaded and checked here
        from lnref.schemes import get_scheme

        for scheme in scheme_list:
            get_scheme(scheme)
    depth_list = _depths(_paired_depths(depths, encoder_layers, decoder_layers, task), task in SEQ2SEQ_TASK_NAMES)
    if warmup == 0:
        fail("--warmup is the 'some warm-up' arm and must be > 0 (the other arm has none)")
    _check_png(png)
    from lnref.process.workers import one_blas_thread_unless_chosen

    one_blas_thread_unless_chosen()  # for runs in this process (--backend serial)
    with input_errors():
        from lnref.tasks import get_task
        from lnref.train import default_warmup, grid_configs, grid_tasks, make_lm

        chosen = warmup is None
        if chosen:
            warmup = default_warmup(steps)

        configs = grid_configs(
            scheme_list,
            depth_list,
            (0, warmup),
            range(seeds),
            task=task,
            lr=lr,
            steps=steps,
            d_model=d_model,
            heads=heads,
            batch=batch,
            seq=seq,
            schedule=schedule,
            optimizer=optimizer,
            weight_decay=weight_decay,
            clip=clip,
            eval_every=eval_every,
            divergence_factor=divergence_factor,
        )
        chosen_task = get_task(task, seq)
        for scheme in scheme_list:  # a scheme of one's own whose layer is wrong fails here, not in every run
            probe_forward(make_lm(next(c for c in configs if c.scheme == scheme), chosen_task).model)
        tasks = grid_tasks(configs)
    if chosen:
        _note_shortened_warmup(warmup, steps)
    results = [record["result"] for record in execute("stability", tasks, request)]
    _stability_output(results, as_json, png)


def _stability_output(results, as_json, png):
    """The table (or JSON) and the figure of the grid's results, whether just run or read back."""
    from lnref.train import format_grid, summarize_grid
    from lnref.train_charts import plot_grid

    rows = summarize_grid(results)
    if png:
        plot_grid(results, png)
        echo(f"wrote {png}")
    if as_json:
        click.echo(json.dumps({"rows": rows, "runs": results}))
    else:
        click.echo(format_grid(rows))
    sys.exit(EXIT_OK)
