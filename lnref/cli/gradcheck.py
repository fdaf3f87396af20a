"""``lnref gradcheck``: every gradient of a model against finite differences (``lnref.gradcheck``).

Exit codes: 0 every check passed, 1 a check failed, 2 usage or input error.
"""

from __future__ import annotations

import sys

import click

from lnref.cli.options import (
    COUNT,
    EXIT_FAILED,
    EXIT_OK,
    FiniteFloat,
    compile_if_cold,
    fail,
    input_errors,
    model_from_options,
    model_options,
    warn_float32,
)


@click.command()
@model_options
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
    "projection, cross-entropy) and check those gradients too.",
)
@click.option("--vocab", type=COUNT, default=16, show_default=True, help="Vocabulary size with --with-head.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--verbose", is_flag=True, help="A row for every layer (by default runs of alike layers share one).")
def gradcheck(mode, point, entries_per_tensor, workers, rtol, atol, with_head, vocab, as_json, verbose, **options):
    """Check every gradient of a model against finite differences."""
    warn_float32(options["dtype"])
    if rtol is not None and rtol < 0 or atol < 0:
        fail("--rtol and --atol must be >= 0")
    progress = None if as_json else _stderr_progress
    with input_errors():
        compile_if_cold(options)
        from lnref import gradcheck as checker  # the module

        if with_head:
            from lnref.lm import LanguageModel

            lm = LanguageModel(model_from_options(**{**options, "causal": True}), vocab, options["seq"])
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
                entries=entries_per_tensor,
                rtol=rtol,
                atol=atol,
                progress=progress,
                workers=workers,
            )
    click.echo(report.to_json() if as_json else report.to_text(verbose=verbose))
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


def _stderr_progress(message):
    click.echo(message, err=True)
