"""``lnref schemes``: the LN placements lnref implements, with their equations and papers.

``--json`` gives a script the same list without importing lnref: per scheme its name,
equation, paper and the options it takes, keyed as ``lnref.build``'s arguments, so that a
script can pass them on. :func:`scheme_document` builds one scheme's entry; an option a
scheme takes is one more key of its ``options``.
"""

from __future__ import annotations

import json
from typing import Any

import click

from lnref import SCHEMES

# The scheme protocol's declarations of norms (lnref/schemes/__init__.py): a scheme that
# declares none, like ReZero, places no norm, and --norm changes nothing in it.
NORM_DECLARATIONS = ("NORMS", "LAYER_NORMS", "HEAD_NORMS", "STACK_NORMS")


def scheme_document(name: str) -> dict[str, Any]:
    """What ``lnref schemes --json`` says of the scheme ``name``."""
    from lnref.nn import ACTIVATIONS
    from lnref.norms import NORM_KINDS
    from lnref.schemes import get_scheme

    module = get_scheme(name)
    places_norms = any(getattr(module, declaration, ()) for declaration in NORM_DECLARATIONS)
    return {
        "name": name,
        "equation": module.SUMMARY,
        "paper": module.PAPER,
        "options": {
            "norm": list(NORM_KINDS) if places_norms else [],
            "activation": list(ACTIVATIONS),
            "causal": True,
            "cross_attention": True,
        },
    }


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout, with each scheme's options.")
def schemes(as_json):
    """List the schemes with their one-line equations and papers."""
    if as_json:
        click.echo(json.dumps({"schemes": [scheme_document(name) for name in SCHEMES]}, indent=1))
        return
    from lnref.schemes import get_scheme

    for name in SCHEMES:
        module = get_scheme(name)
        click.echo(f"{name:9s} {module.SUMMARY}")
        click.echo(f"{'':9s} {module.PAPER}")
