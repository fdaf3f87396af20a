"""``lnref schemes``: the LN placements lnref implements, with their equations and papers."""

from __future__ import annotations

import click

from lnref import SCHEMES


@click.command()
def schemes():
    """List the schemes with their one-line equations and papers."""
    from lnref.schemes import get_scheme

    width = max(map(len, SCHEMES))
    for name in SCHEMES:
        module = get_scheme(name)
        click.echo(f"{name:{width}s} {module.SUMMARY}")
        click.echo(f"{'':{width}s} {module.PAPER}")
