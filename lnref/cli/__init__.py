"""The ``lnref`` command line: thin click commands that parse, call one function, print.

One module per command or family of commands (``schemes``, ``gradcheck``, ``golden``,
``profile``, ``prove``, ``train``), the options they share in ``options``. Exit codes: 0 ok,
1 a check failed, 2 usage or input error.

Listing the commands, as ``lnref --help`` does, imports every command module, so those import
only click and each other's light parts; the heavy imports (NumPy, the kernels, Numba) happen
inside the commands when they run. That is what keeps ``lnref --help`` instant.
"""

from __future__ import annotations

import sys

import click

from lnref import __version__
from lnref.cli import golden, gradcheck, profile, prove, schemes, train
from lnref.cli.options import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from lnref.process import blas
from lnref.process.allocator import keep_freed_memory


class OneLineErrors(click.Group):
    """A click group whose usage errors are one line on stderr (exit 2), never a banner."""

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
def main() -> None:
    """lnref: LayerNorm placements in Transformers, with checked gradients.

    Exit codes: 0 ok, 1 a check failed, 2 usage or input error.
    """
    # The command owns its process: memory a pass frees is kept for the next (lnref.process.allocator),
    # and OpenBLAS's idle workers sleep rather than hold the cores (lnref.process.blas; NumPy is not
    # loaded yet: the commands import it).
    keep_freed_memory()
    blas.let_idle_workers_sleep()


main.add_command(schemes.schemes)
main.add_command(gradcheck.gradcheck)
main.add_command(golden.export)
main.add_command(golden.export_suite)
main.add_command(golden.compare)
main.add_command(profile.profile)
main.add_command(prove.prove)
main.add_command(train.train)
main.add_command(train.stability)
