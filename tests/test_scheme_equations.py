"""The scheme pages' math: the plain-text equations of the scheme docstrings as TeX
(scripts/docs/equations.py)."""

import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

from lnref.schemes import SCHEMES, get_scheme

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("docs_equations", ROOT / "scripts" / "docs" / "equations.py")
equations = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = equations
spec.loader.exec_module(equations)


@pytest.mark.parametrize(
    "text, tex",
    [
        ("x <- LN_S(x + S(x))", r"x  \leftarrow  \operatorname{LN}_{S}(x + S(x))"),
        ("y  = LN_final(x_L)", r"y = \operatorname{LN}_{\mathrm{final}}(x_{L})"),
        ("alpha = (2N)^(1/4)", r"\alpha = (2N)^{1/4}"),
        ("x_{l+1} = sum_{k <= l+1} W_{l+1,k} n_k", r"x_{l+1} = \sum_{k  \le  l+1} W_{l+1,k} n_{k}"),
        ("ratio = sqrt(Var[x])", r"\text{ratio }= \sqrt{\operatorname{Var}[x]}"),
        ("layer l < floor(alpha L):", r"\text{layer }l < \lfloor \alpha L \rfloor:"),
        ("x <- x + LN_S_out(S(x))", r"x  \leftarrow  x + \operatorname{LN}_{S,\mathrm{out}}(S(x))"),
    ],
)
def test_a_line_becomes_tex(text, tex):
    assert equations.to_tex(text) == tex


def test_words_become_text_and_the_article_a_stays_a_word():
    assert equations.to_tex("x <- x + a    in a decoder") == r"x  \leftarrow  x + a \qquad \text{ in a decoder}"


def test_characters_special_to_tex_are_escaped():
    tex = equations.to_tex("y = x  the 50% case & more")
    assert tex == r"y = x \qquad \text{ the }50\text{\%} \text{ case }\text{\&} \text{ more}"


@pytest.mark.parametrize("name", SCHEMES)
def test_every_scheme_equation_gives_balanced_tex(name):
    scheme = get_scheme(name)
    lines = [scheme.SUMMARY] + [line for line in inspect.getdoc(scheme).splitlines() if line.startswith("    ")]
    for line in lines:
        tex = equations.to_tex(line)
        depth = 0
        for char, before in zip(tex, " " + tex):
            if before != "\\":
                depth += (char == "{") - (char == "}")
            assert depth >= 0, (line, tex)
        assert depth == 0, (line, tex)
