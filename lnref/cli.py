"""The ``lnref`` command line: thin click commands that parse, call one function, print.

Exit codes: 0 ok, 1 a check failed, 2 usage or input error. Heavy imports (NumPy kernels,
Numba) happen inside the commands, so ``lnref --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys

import click

from lnref import SCHEMES, __version__
from lnref.process import blas
from lnref.process.allocator import keep_freed_memory

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class FiniteFloat(click.ParamType):
    """A float that must be finite (click's FLOAT accepts 'nan' and 'inf')."""

    name = "float"

    def __init__(self, positive=False):
        self.positive = positive

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.positive and number <= 0:
            self.fail(f"{value!r} must be > 0", param, ctx)
        return number


FINITE = FiniteFloat()
POSITIVE = FiniteFloat(positive=True)
COUNT = click.IntRange(min=1)


def fail(message: str):
    """One clear line on stderr and exit code 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@contextlib.contextmanager
def input_errors():
    """Turn bad input found past click's parsing into one line and exit code 2."""
    try:
        yield
    except (ValueError, OSError, KeyError) as err:
        fail(str(err) if not isinstance(err, KeyError) else f"missing {err}")


def model_options(function):
    """The options that describe a model, shared by every command that builds one."""
    options = [
        click.option("--scheme", type=click.Choice(SCHEMES), required=True, help="LN placement."),
        click.option("--layers", type=COUNT, default=6, show_default=True, help="Number of layers."),
        click.option("--d-model", type=COUNT, default=16, show_default=True),
        click.option("--heads", type=COUNT, default=2, show_default=True),
        click.option("--d-ff", type=COUNT, default=64, show_default=True),
        click.option("--seq", type=COUNT, default=8, show_default=True, help="Sequence length."),
        click.option("--batch", type=COUNT, default=2, show_default=True),
        click.option("--norm", type=click.Choice(["layernorm", "rmsnorm"]), default="layernorm", show_default=True),
        click.option("--activation", type=click.Choice(["relu", "gelu"]), default="relu", show_default=True),
        click.option("--causal", is_flag=True, help="Causal mask in self-attention."),
        click.option("--cross-attention", is_flag=True, help="Decoder stack: cross-attention to a fixed memory."),
        click.option("--eps", type=POSITIVE, default=1e-5, show_default=True, help="Norm epsilon."),
        click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--post-fraction", type=FINITE, default=0.25, show_default=True,
                     help="Mix-LN: share of Post-LN layers."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def model_from_options(scheme, layers, d_model, heads, d_ff, norm, activation, causal,
                       cross_attention, eps, dtype, seed, post_fraction, **_):
    from lnref.model import build

    return build(scheme, layers, d_model, heads, d_ff, norm=norm, activation=activation, causal=causal,
                 cross_attention=cross_attention, eps=eps, dtype=dtype, seed=seed,
                 post_fraction=post_fraction)


def compile_if_cold(options):
    """On a first run (the kernels this model runs first are neither compiled nor cached for
    its dtype and norm): one line on stderr, then those kernels compiled, on two cores where
    there are two."""
    from lnref.autograd.kernels.warmup import compile_cache_is_cold, compile_first_run_kernels

    if compile_cache_is_cold(options["dtype"], options["norm"]):
        click.echo("note: compiling kernels (first run only; cached afterwards)", err=True)
        compile_first_run_kernels(options["dtype"], options["norm"])


def warn_float32(dtype):
    if dtype == "float32":
        click.echo("note: float32 requested; finite differences are far less precise than in "
                   "float64 (the default), tolerances are loosened accordingly", err=True)


class OneLineErrors(click.Group):
    """A click group whose usage errors are one line on stderr (exit 2), never a banner,
    and whose ``lazy_commands`` ({name: "module:attribute"}) are imported on first use."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = {}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx, name):
        if name in self.lazy_commands and name not in self.commands:
            module, _, attribute = self.lazy_commands[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as err:
            if not standalone_mode:
                raise
            no_args = type(err).__name__ == "NoArgsIsHelpError"  # bare `lnref`: show the help
            click.echo(err.format_message() if no_args else f"error: {err.format_message()}", err=True)
            sys.exit(EXIT_USAGE if isinstance(err, click.UsageError) else err.exit_code)
        except click.Abort:
            if not standalone_mode:
                raise
            click.echo("error: aborted", err=True)
            sys.exit(EXIT_FAILED)
        if standalone_mode:
            sys.exit(result if isinstance(result, int) else EXIT_OK)
        return result


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lnref")
def main():
    """lnref: LayerNorm placements in Transformers, with checked gradients.

    Exit codes: 0 ok, 1 a check failed, 2 usage or input error.
    """
    # The command owns its process: memory a pass frees is kept for the next (lnref.process.allocator),
    # and OpenBLAS's idle workers sleep rather than hold the cores (lnref.process.blas; NumPy is not
    # loaded yet: the commands import it).
    keep_freed_memory()
    blas.let_idle_workers_sleep()


@main.command()
def schemes():
    """List the schemes with their one-line equations and papers."""
    from lnref.schemes import get_scheme

    for name in SCHEMES:
        module = get_scheme(name)
        click.echo(f"{name:9s} {module.SUMMARY}")
        click.echo(f"{'':9s} {module.PAPER}")


@main.command()
@model_options
@click.option("--mode", type=click.Choice(["directional", "blockwise", "entries", "full"]),
              default="directional", show_default=True,
              help="directional: one random direction per tensor; blockwise: each layer on its own; "
                   "entries: sampled elements per tensor; full: every element, layer by layer.")
@click.option("--at", "point", type=click.Choice(["generic", "init"]), default="generic", show_default=True,
              help="Check at jittered parameters (generic) or at the exact initialization.")
@click.option("--entries", "entries_per_tensor", type=COUNT, default=4, show_default=True,
              help="Entries mode: elements sampled per tensor.")
@click.option("--workers", type=COUNT, default=None,
              help="Forked worker processes sharing the checks out (not blockwise mode) [default: the CPUs "
                   "available; 1 for directional and entries checks of small models].")
@click.option("--rtol", type=FiniteFloat(), default=None, help="Relative tolerance (default by dtype).")
@click.option("--atol", type=FiniteFloat(), default=0.0, show_default=True, help="Absolute tolerance.")
@click.option("--with-head", is_flag=True,
              help="Wrap the stack as a causal language model (token and position embeddings, output "
                   "projection, cross-entropy) and check those gradients too.")
@click.option("--vocab", type=COUNT, default=16, show_default=True, help="Vocabulary size with --with-head.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def gradcheck(mode, point, entries_per_tensor, workers, rtol, atol, with_head, vocab, as_json, **options):
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
            report = checker.gradcheck_lm(lm, mode=mode, point=point, batch=options["batch"], seq=options["seq"],
                                          entries=entries_per_tensor, rtol=rtol, atol=atol, progress=progress)
        else:
            model = model_from_options(**options)
            report = checker.gradcheck(model, mode=mode, point=point, batch=options["batch"], seq=options["seq"],
                                       entries=entries_per_tensor, rtol=rtol, atol=atol, progress=progress,
                                       workers=workers)
    click.echo(report.to_json() if as_json else report.to_text())
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


def _stderr_progress(message):
    click.echo(message, err=True)


# ----- commands in their own modules, imported only when used or listed -----
# (Importing them here would make each of them import this module half-built.)

main.lazy_commands.update({
    "export": "lnref.cli_golden:export",
    "compare": "lnref.cli_golden:compare",
    "profile": "lnref.cli_profile:profile",
    "prove": "lnref.cli_prove:prove",
    "train": "lnref.cli_train:train",
    "stability": "lnref.cli_train:stability",
})
