"""``lnref schemes`` and its JSON document: per scheme its name, equation, paper and options."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import lnref
from lnref.cli import main
from lnref.nn import ACTIVATIONS
from lnref.norms import NORM_KINDS
from lnref.schemes import SCHEMES, get_scheme


@pytest.fixture(scope="module")
def document():
    result = CliRunner().invoke(main, ["schemes", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def entry(document, name):
    return next(scheme for scheme in document["schemes"] if scheme["name"] == name)


def test_the_json_lists_every_scheme_in_order(document):
    assert [scheme["name"] for scheme in document["schemes"]] == list(SCHEMES)


@pytest.mark.parametrize("name", SCHEMES)
def test_each_scheme_comes_with_its_equation_and_paper(document, name):
    module = get_scheme(name)
    assert (entry(document, name)["equation"], entry(document, name)["paper"]) == (module.SUMMARY, module.PAPER)


def test_a_scheme_that_places_norms_takes_every_norm_kind(document):
    assert entry(document, "pre")["options"]["norm"] == list(NORM_KINDS)
    assert {"layernorm", "rmsnorm"} <= set(NORM_KINDS)


def test_a_scheme_that_places_no_norm_takes_no_norm_kind(document):
    assert entry(document, "rezero")["options"]["norm"] == []


def test_every_scheme_takes_every_activation_and_a_causal_or_decoder_stack(document):
    for scheme in document["schemes"]:
        options = scheme["options"]
        assert options["activation"] == list(ACTIVATIONS) == ["relu", "gelu", "gelu_tanh"]
        assert options["causal"] is True and options["cross_attention"] is True


@pytest.mark.parametrize("name", SCHEMES)
def test_every_option_listed_builds_the_scheme(document, name):
    options = entry(document, name)["options"]
    for norm in options["norm"] or ["layernorm"]:
        for activation in options["activation"]:
            flags = dict(causal=options["causal"], cross_attention=options["cross_attention"])
            model = lnref.build(name, 1, d_model=4, n_heads=2, d_ff=8, norm=norm, activation=activation, **flags)
            assert (model.config.norm, model.config.activation) == (norm, activation)


def test_the_text_listing_is_two_lines_a_scheme():
    result = CliRunner().invoke(main, ["schemes"])
    lines = result.stdout.partition("\naliases")[0].splitlines()  # the aliases follow: test_family2.py
    assert result.exit_code == 0 and len(lines) == 2 * len(SCHEMES)
    assert lines[0].split()[0] == SCHEMES[0] and get_scheme(SCHEMES[0]).PAPER in lines[1]


def test_the_json_lists_a_schemes_own_options_and_what_it_refuses():
    from lnref.cli.schemes import scheme_document
    from lnref.schemes import register_scheme
    from tests.schemes import gated

    register_scheme("test_gated_json", gated)
    document = scheme_document("test_gated_json")
    assert document["options"]["scheme_options"]["gate"]["default"] == 1.0
    assert document["options"]["scheme_options"]["final"]["choices"] == [False, True]
    assert document["options"]["qk_norm"] == ["none"] and "qk_norm" in document["refuses"]
