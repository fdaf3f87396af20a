"""``lnref schemes``: the LN placements lnref implements, with their equations and papers.

``--json`` gives a script the same list without importing lnref: per scheme its name,
equation, paper and the options it takes, keyed as ``lnref.build``'s arguments, so that a
script can pass them on. :func:`scheme_document` builds one scheme's entry; an option a
scheme takes is one more key of its ``options``. The aliases follow the schemes: names for a
scheme with settings preset, each with its base scheme, those settings and what it is.
"""

from __future__ import annotations

import json
from typing import Any

import click

from lnref import SCHEMES
from lnref.schemes import ALIASES


def scheme_document(name: str) -> dict[str, Any]:
    """What ``lnref schemes --json`` says of the scheme ``name``."""
    from lnref.nn import ACTIVATIONS
    from lnref.norms import NORM_KINDS
    from lnref.qk_norms import QK_NORMS
    from lnref.schemes import get_scheme, options_of, places_norms, refusals_of

    module = get_scheme(name)
    refused = refusals_of(module)
    own = {
        option: {
            "default": spec.default,
            "choices": None if spec.choices is None else list(spec.choices),
            "help": spec.help,
        }
        for option, spec in options_of(module).items()
    }
    return {
        "name": name,
        "equation": module.SUMMARY,
        "paper": module.PAPER,
        "options": {
            "norm": list(NORM_KINDS) if places_norms(module) and "norm" not in refused else [],
            "activation": list(ACTIVATIONS),
            "qk_norm": ["none"] if "qk_norm" in refused else list(QK_NORMS),
            "causal": True,
            "cross_attention": True,
            "scheme_options": own,
        },
        "refuses": refused,
    }


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout, with each scheme's options.")
def schemes(as_json):
    """List the schemes with their one-line equations and papers."""
    if as_json:
        document = {"schemes": [scheme_document(name) for name in SCHEMES], "aliases": alias_documents()}
        click.echo(json.dumps(document, indent=1, default=str))
        return
    from lnref.schemes import get_scheme

    width = max(map(len, SCHEMES))
    for name in SCHEMES:
        module = get_scheme(name)
        click.echo(f"{name:{width}s} {module.SUMMARY}")
        click.echo(f"{'':{width}s} {module.PAPER}")
    click.echo("\naliases (a scheme with settings preset; --scheme takes them):")
    for entry in alias_documents():
        settings = "".join(f" {key}={value}" for key, value in entry["settings"].items())
        click.echo(f"{entry['name']:{width}s} = {entry['base']}{settings}: {entry['what']}")
        click.echo(f"{'':{width}s} {entry['paper']}")


def alias_documents() -> list[dict[str, Any]]:
    """What ``lnref schemes --json`` says of each alias."""
    return [
        {"name": name, "base": alias.base, "settings": alias.settings, "what": alias.what, "paper": alias.paper}
        for name, alias in ALIASES.items()
    ]
