"""A Griffe extension for the API pages: lnref's docstrings, read as Markdown.

lnref's docstrings are prose with reStructuredText touches: roles (``:func:`backprop```,
``:class:`~lnref.claims.core.Claim```) and a ``::`` before an indented example. Markdown knows
neither; this turns a role into code (its last dotted part under ``~``) and ``::`` into ``:``.
The indented block after it is already a code block in Markdown. Indexing written in prose
(``hidden[l][stream]``) becomes code too, where Markdown would read a reference link.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")
LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.M)
INDEXING = re.compile(r"(?<![\w`])(\w+(?:\[[^\]\s`]+\]){2,})")
CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`)")


def markdown_docstring(text: str) -> str:
    text = ROLE.sub(lambda m: "`" + (m.group(2).rpartition(".")[2] if m.group(1) else m.group(2)) + "`", text)
    lines = [line if line.startswith("    ") else _index_as_code(line) for line in text.split("\n")]
    return LITERAL_BLOCK.sub(":", "\n".join(lines))


def _index_as_code(line: str) -> str:
    parts = CODE_SPAN.split(line)
    return "".join(part if i % 2 else INDEXING.sub(r"`\1`", part) for i, part in enumerate(parts))


class RestructuredTextToMarkdown(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
