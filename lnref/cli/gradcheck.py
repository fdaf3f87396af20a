"""``lnref gradcheck``: every gradient of a model against finite differences (``lnref.gradcheck``).

Two forms. One model (``--scheme post --layers 48``): the checker's report. A sweep, when
``--scheme``, ``--layers`` or ``--norm`` lists several values (``--scheme all``, ``--layers
6,12,48``, ``--norm layernorm,rmsnorm``) or a sweep's records are asked for (``--out``,
``--from``, ``--backend``): every scheme x norm x depth checked as a run of the sweep
(``lnref.sweep.gradcheck``), recorded and resumable, one row per model.

Exit codes: 0 every check passed, 1 a check failed, 2 usage or input error.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from lnref import SCHEMES
from lnref.cli.options import (
    COUNT,
    EXIT_FAILED,
    EXIT_OK,
    FiniteFloat,
    LazyChoice,
    SchemeName,
    compile_if_cold,
    encoder_decoder_depths,
    fail,
    input_errors,
    model_from_options,
    warn_float32,
)
from lnref.cli.profile import model_options_except
from lnref.cli.sweep import SweepRequest, execute, load, sweep_options

NORMS = LazyChoice("lnref.norms:NORM_KINDS")


class OneOrList(click.ParamType):
    """One value, checked as ``single`` checks it (so the one-model form reads and rejects it
    exactly as before), or a comma list of them (a tuple), or ``all`` when ``every`` is given
    (the values, or a choice whose values are read when ``all`` is)."""

    def __init__(self, single: click.ParamType, every: tuple[Any, ...] | click.Choice | None = None) -> None:
        self.single, self.every = single, every
        self.name = single.name

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str | None:
        # click 8.2 passes the context, older releases do not
        metavar = self.single.get_metavar(param, ctx) if ctx is not None else self.single.get_metavar(param)
        return f"{metavar or self.name.upper()}[,...]" + ("|all" if self.every else "")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str) or ("," not in value and value != "all"):
            return self.single.convert(value, param, ctx)
        if value == "all" and self.every:
            return tuple(self.every.choices if isinstance(self.every, click.Choice) else self.every)
        parts = [part.strip() for part in value.split(",")]
        if not all(parts):
            self.fail(f"{value!r} has an empty entry", param, ctx)
        return tuple(dict.fromkeys(self.single.convert(part, param, ctx) for part in parts))


@click.command()
@click.option(
    "--scheme",
    type=OneOrList(SchemeName(), every=SCHEMES),
    default=None,
    help="LN placement; a comma list or 'all' makes a sweep. Required unless --from.",
)
@click.option(
    "--layers",
    type=OneOrList(COUNT),
    default="6",
    show_default=True,
    help="Number of layers; a comma list (6,12,48) makes a sweep.",
)
@model_options_except("scheme", "layers", "norm")
@click.option(
    "--norm",
    type=OneOrList(NORMS, every=NORMS),
    default="layernorm",
    show_default=True,
    help="A comma list or 'all' makes a sweep.",
)
@click.option(
    "--mode",
    type=click.Choice(["directional", "blockwise", "entries", "full"]),
    default="directional",
    show_default=True,
    help="directional: one random direction per tensor; blockwise: each layer on its own; "
    "entries: sampled elements per tensor; full: every element, layer by layer.",
)
@click.option(
    "--at",
    "point",
    type=click.Choice(["generic", "init"]),
    default="generic",
    show_default=True,
    help="Check at jittered parameters (generic) or at the exact initialization.",
)
@click.option(
    "--entries",
    "entries_per_tensor",
    type=COUNT,
    default=4,
    show_default=True,
    help="Entries mode: elements sampled per tensor.",
)
@click.option(
    "--workers",
    type=COUNT,
    default=None,
    help="Forked worker processes sharing the checks out (not blockwise mode) [default: the CPUs "
    "available; 1 for directional and entries checks of small models].",
)
@click.option("--rtol", type=FiniteFloat(), default=None, help="Relative tolerance (default by dtype).")
@click.option("--atol", type=FiniteFloat(), default=0.0, show_default=True, help="Absolute tolerance.")
@click.option(
    "--with-head",
    is_flag=True,
    help="Wrap the stack as a causal language model (token and position embeddings, output "
    "projection, cross-entropy), or an encoder-decoder model as a translation model, and check "
    "those gradients too.",
)
@click.option("--vocab", type=COUNT, default=16, show_default=True, help="Vocabulary size with --with-head.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option(
    "--plain",
    is_flag=True,
    help="Check the function itself: stop-gradient values move with the "
    "point (by default they are held there, the function whose derivative the tape computes).",
)
@click.option("--verbose", is_flag=True, help="A row for every layer (by default runs of alike layers share one).")
@sweep_options(workers=False)
def gradcheck(
    mode, point, entries_per_tensor, workers, rtol, atol, with_head, vocab, as_json, verbose, plain, **options
):
    """Check every gradient of a model against finite differences.

    Lists in --scheme, --layers or --norm make a sweep over every combination: each model
    is a run, shared out (--backend, --workers), recorded (--out) and resumable; --from
    renders its records again.
    """
    sweep_form = _is_sweep(options)
    request = SweepRequest.pop(options)
    request.workers = workers
    if request.from_path is not None:
        _sweep_output(load("gradcheck", request.from_path), as_json)
    if options["scheme"] is None:
        fail("Missing option '--scheme'.")
    if not sweep_form:
        _check_one_model(
            mode, point, entries_per_tensor, workers, rtol, atol, with_head, vocab, as_json, verbose, plain, options
        )
    warn_float32(options["dtype"])
    if rtol is not None and rtol < 0 or atol < 0:
        fail("--rtol and --atol must be >= 0")
    from lnref.sweep.gradcheck import MODEL_KEYS, check_tasks, left_out

    schemes, depths, norms = (_as_list(options[name]) for name in ("scheme", "layers", "norm"))
    with input_errors():
        pair = encoder_decoder_depths(options["encoder_layers"], options["decoder_layers"])
    if pair:
        depths = (pair,)
    model = {key: options["heads" if key == "n_heads" else key] for key in MODEL_KEYS}
    model.update(pair)
    check = {
        "mode": mode,
        "point": point,
        "batch": options["batch"],
        "seq": options["seq"],
        "entries": entries_per_tensor,
        "rtol": rtol,
        "atol": atol,
        "with_head": with_head,
        "vocab": vocab,
        "memory_len": options["source_len"],
    }
    with input_errors():
        refused = left_out(list(schemes), list(norms), model)
        if len(refused) == len(schemes) * len(norms):
            raise ValueError(next(iter(refused.values())))
        for norm in norms:  # a bad configuration fails here, in one line, before any run
            taking = [scheme for scheme in schemes if (scheme, norm) not in refused]
            if taking:
                first = {**options, "scheme": taking[0], "norm": norm}
                first["layers"] = options["layers"] if pair else depths[0]
                model_from_options(**first)
                compile_if_cold(first)
        tasks = check_tasks(list(schemes), list(norms), list(depths), model, check)
    for (scheme, norm), why in refused.items():
        click.echo(f"note: {scheme} with {norm} left out: {why}", err=True)
    _sweep_output(execute("gradcheck", tasks, request), as_json)


def _is_sweep(options: dict[str, Any]) -> bool:
    lists = any(isinstance(options[name], tuple) for name in ("scheme", "layers", "norm"))
    context = click.get_current_context()
    records = any(
        context.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
        for name in ("backend", "out", "from_path", "scheduler", "scheduler_file", "resume")
    )
    return lists or records


def _as_list(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,)


def _sweep_output(records: list[dict[str, Any]], as_json: bool) -> None:
    from lnref.sweep.gradcheck import format_table

    if as_json:
        reports = [record["result"] for record in records]
        click.echo(json.dumps({"ok": all(r["ok"] for r in reports), "reports": reports}, indent=1))
    else:
        click.echo(format_table(records))
    sys.exit(EXIT_OK if all(record["result"]["ok"] for record in records) else EXIT_FAILED)


def _check_one_model(
    mode, point, entries_per_tensor, workers, rtol, atol, with_head, vocab, as_json, verbose, plain, options
):
    """The one-model form: the checker's report of one model."""
    warn_float32(options["dtype"])
    if rtol is not None and rtol < 0 or atol < 0:
        fail("--rtol and --atol must be >= 0")
    progress = None if as_json else _stderr_progress
    with input_errors():
        compile_if_cold(options)
        from lnref import gradcheck as checker  # the module

        if with_head:
            from lnref.lm import with_head as wrapped

            encoder_decoder = options["encoder_layers"] is not None or options["decoder_layers"] is not None
            model = model_from_options(**{**options, "causal": not encoder_decoder})
            lm = wrapped(model, vocab, options["seq"])
            report = checker.gradcheck_lm(
                lm,
                mode=mode,
                point=point,
                batch=options["batch"],
                seq=options["seq"],
                entries=entries_per_tensor,
                rtol=rtol,
                atol=atol,
                progress=progress,
            )
        else:
            model = model_from_options(**options)
            report = checker.gradcheck(
                model,
                mode=mode,
                point=point,
                batch=options["batch"],
                seq=options["seq"],
                memory_len=options["source_len"],
                entries=entries_per_tensor,
                rtol=rtol,
                atol=atol,
                progress=progress,
                workers=workers,
                hold_stop_gradients=not plain,
            )
    click.echo(report.to_json() if as_json else report.to_text(verbose=verbose))
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


def _stderr_progress(message):
    click.echo(message, err=True)
