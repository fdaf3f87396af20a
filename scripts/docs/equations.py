"""The plain-text equations of the scheme modules' docstrings, as TeX for the site's math.

A scheme's docstring writes its equations the way the code reads (``x <- LN_S(x + S(x))``,
``alpha = (2N)^(1/4)``, ``sum_{j<i} Var[S_j]``); :func:`to_tex` turns one such line into TeX:
Greek names become letters, ``LN``, ``Var`` and other longer names upright operators,
``sqrt(...)`` a root, ``floor(...)`` floor brackets, ``^(...)`` a superscript, a subscript word
(``LN_final``) upright, ``x_hat`` a hat, ``<-`` an arrow, ``*`` a dot, and runs of English words
(``for each sublayer``) text. A gap of two or more spaces, the docstrings' way of setting a
comment apart, becomes a wide space. Anything it does not know is kept, escaped: the result
is always valid TeX, so that a new scheme's page renders whatever its docstring holds.
"""

from __future__ import annotations

import re

GREEK = {
    name: "\\" + name
    for name in (
        "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi pi rho sigma tau phi chi psi omega"
    ).split()
}
GREEK.update({"eps": r"\varepsilon", "Gamma": r"\Gamma", "Delta": r"\Delta", "Sigma": r"\Sigma", "Omega": r"\Omega"})
GREEK["lambda"] = r"\lambda"
# Lower-case words read as operators in an equation (anything else lower-case and longer than
# one letter is prose).
OPERATOR_WORDS = {"exp", "log", "mean", "max", "min", "softmax", "tanh", "diag", "sign", "cos", "sin"}
RELATIONS = {"<-": r"\leftarrow", "->": r"\to", "+=": r"\mathrel{+}=", "<=": r"\le", ">=": r"\ge", "!=": r"\ne"}
TOKEN = re.compile(
    r"""(?P<gap>\s{2,})
      | (?P<space>\s)
      | (?P<relation><-|->|\+=|<=|>=|!=)
      | (?P<norm>\|\|)
      | (?P<hyphenated>[A-Za-z]+(?:-[A-Za-z]+)+)
      | (?P<name>[A-Za-z][A-Za-z0-9]*)(?P<sub>(?:_(?:\{[^{}]*\}|[A-Za-z0-9]+))*)
      | (?P<number>\d+(?:\.\d+)?)
      | (?P<other>.)""",
    re.VERBOSE,
)
TEXT_SPECIALS = {c: "\\" + c for c in "#$%&_{}"}
TEXT_SPECIALS.update({"\\": r"\textbackslash{}", "^": r"\^{}", "~": r"\~{}"})


def to_tex(line: str) -> str:
    """One plain-text equation line as TeX (math mode, no delimiters)."""
    tokens = [("name" if m.group("name") else str(m.lastgroup), m) for m in TOKEN.finditer(line.strip())]
    return _translate(tokens)


def _is_prose(kind: str, match: re.Match[str]) -> bool:
    if kind == "hyphenated":
        return True
    if kind != "name" or match.group("sub"):
        return False
    word = match.group("name")
    return len(word) > 1 and word.islower() and word not in GREEK and word not in OPERATOR_WORDS | {"sqrt", "floor"}


def _translate(tokens: list[tuple[str, re.Match[str]]]) -> str:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        kind, match = tokens[i]
        if _starts_prose(tokens, i):
            end = _prose_end(tokens, i)
            text = "".join(m.group(0) for _, m in tokens[i:end])
            after_space = i > 0 and tokens[i - 1][0] in ("space", "gap")
            out.append(r"\text{" + (" " if after_space else "") + _escape_text(text) + "}")
            i = end
            continue
        if kind == "gap" and i + 1 < len(tokens) and (tokens[i + 1][0] == "relation" or _next_is(tokens, i + 1, "=")):
            out.append(" ")  # spaces that line up the relations of consecutive lines
            i += 1
            continue
        if kind == "name" and match.group("name") in ("sqrt", "floor") and _next_is(tokens, i + 1, "("):
            close = _matching(tokens, i + 1)
            inner = _translate(tokens[i + 2 : close])
            out.append(r"\sqrt{" + inner + "}" if match.group("name") == "sqrt" else r"\lfloor " + inner + r" \rfloor")
            i = close + 1
            continue
        if kind == "other" and match.group(0) == "^":
            i = _superscript(tokens, i + 1, out)
            continue
        out.append(_atom(kind, match))
        i += 1
    return "".join(out).strip()


def _starts_prose(tokens: list[tuple[str, re.Match[str]]], i: int) -> bool:
    kind, match = tokens[i]
    if _is_prose(kind, match):
        return True
    # "a" between two prose words is the article, not a variable
    if kind == "name" and match.group(0) in ("a", "an") and 0 < i < len(tokens) - 2:
        before = [t for t in tokens[:i] if t[0] not in ("space", "gap")]
        after = [t for t in tokens[i + 1 :] if t[0] not in ("space", "gap")]
        return bool(before and after and _is_prose(*before[-1]) and _is_prose(*after[0]))
    return False


def _prose_end(tokens: list[tuple[str, re.Match[str]]], i: int) -> int:
    """The end of a run of prose words, with the spaces and punctuation between them."""
    end = i + 1
    j = end
    while j < len(tokens):
        kind, match = tokens[j]
        if kind == "space" or (kind == "other" and match.group(0) in ",.;:'"):
            j += 1
            continue
        if _starts_prose(tokens, j):
            end = j = j + 1
            continue
        break
    # keep trailing punctuation and one space with the words
    while end < len(tokens) and (
        tokens[end][0] == "space" or (tokens[end][0] == "other" and tokens[end][1].group(0) in ",.;:")
    ):
        end += 1
    return end


def _next_is(tokens: list[tuple[str, re.Match[str]]], i: int, char: str) -> bool:
    return i < len(tokens) and tokens[i][1].group(0) == char


def _matching(tokens: list[tuple[str, re.Match[str]]], open_index: int) -> int:
    """The index of the parenthesis closing the one at ``open_index`` (the last token if none)."""
    depth = 0
    for j in range(open_index, len(tokens)):
        char = tokens[j][1].group(0)
        depth += char == "("
        depth -= char == ")"
        if depth == 0:
            return j
    return len(tokens)


def _superscript(tokens: list[tuple[str, re.Match[str]]], i: int, out: list[str]) -> int:
    """Translate what follows a ``^``: a parenthesized group or a run up to a space or a comma."""
    if _next_is(tokens, i, "("):
        close = _matching(tokens, i)
        out.append("^{" + _translate(tokens[i + 1 : close]) + "}")
        return close + 1
    end = i
    while end < len(tokens) and tokens[end][0] not in ("space", "gap") and tokens[end][1].group(0) not in ",;)":
        end += 1
    out.append("^{" + _translate(tokens[i:end]) + "}")
    return end


def _atom(kind: str, match: re.Match[str]) -> str:
    text = match.group(0)
    if kind == "gap":
        return r" \qquad "
    if kind == "space":
        return " "
    if kind == "relation":
        return " " + RELATIONS[text] + " "
    if kind == "norm":
        return r"\|"
    if kind == "number":
        return text
    if kind == "name":
        return _name(match.group("name"), match.group("sub") or None)
    if text == "*":
        return r" \cdot "
    if text == "~":
        return r" \sim "
    if text == ";":
        return r";\quad "
    if text in "{}":
        return "\\" + text
    if text in "#$%&_\\":
        return r"\text{" + _escape_text(text) + "}"
    return text


def _name(base: str, sub: str | None) -> str:
    """A name and its subscripts: ``LN_S_out`` is LN with the subscript "S, out"."""
    parts = re.findall(r"_(\{[^{}]*\}|[A-Za-z0-9]+)", sub or "")
    if parts == ["hat"]:
        return r"\hat{" + _name(base, None) + "}"
    if base in GREEK:
        head = GREEK[base]
    elif base == "sum":
        head = r"\sum"
    elif len(base) > 1:
        head = r"\operatorname{" + base + "}"
    else:
        head = base
    if not parts:
        return head
    return head + "_{" + ",".join(_subscript(part) for part in parts) + "}"


def _subscript(part: str) -> str:
    if part.startswith("{"):
        return to_tex(part[1:-1])
    if part.isalpha() and len(part) > 1 and part not in GREEK:
        return r"\mathrm{" + part + "}"
    return _name(part, None) if part.isalpha() else part


def _escape_text(text: str) -> str:
    return "".join(TEXT_SPECIALS.get(char, char) for char in text)
