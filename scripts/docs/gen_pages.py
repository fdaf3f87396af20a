"""The pages generated when the site is built (mkdocs-gen-files runs this script).

    schemes/     a page per scheme of ``lnref.schemes`` (scheme_pages.py)
    tutorials/   every docs/tutorials/*.py run, and rendered with its output (tutorials.py)
    proofs/      the files of proofs/, each claim with its measured row of proofs/README.md
    api/         a page per module of lnref, from its docstrings (mkdocstrings)
    cli.md       every command, from its click definition: usage, help and options
    contributing.md   CONTRIBUTING.md, its links made relative to the site

A page that cannot be made (a tutorial cell that raises, a scheme that does not build) stops
the build with its error.
"""

from __future__ import annotations

import inspect
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mkdocs_gen_files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import scheme_pages  # noqa: E402  (a sibling of this script, found through the path above)
import tutorials  # noqa: E402

from lnref.process import blas  # noqa: E402

# Modules with a page of their own elsewhere: the commands (the CLI reference) and the schemes.
API_SKIPPED = re.compile(r"^lnref\.(cli|schemes\.[a-z0-9_]+)(\.|$)|\.__main__$")


def write(path: str, content: str | bytes) -> None:
    mode = "wb" if isinstance(content, bytes) else "w"
    with mkdocs_gen_files.open(path, mode) as file:
        file.write(content)


def timed(label: str, make: Callable[[], object]) -> None:
    start = time.perf_counter()
    make()
    print(f"gen_pages: {label} in {time.perf_counter() - start:.1f} s", file=sys.stderr)


def tutorial_pages() -> None:
    sources = sorted((ROOT / "docs" / "tutorials").glob("[0-9]*.py"))
    nav = ["* [Overview](index.md)"]
    rows = []
    for source in sources:
        name = tutorials.slug(source)
        with tempfile.TemporaryDirectory() as workdir:
            start = time.perf_counter()
            cells = tutorials.run(source, Path(workdir))
            seconds = time.perf_counter() - start
            for cell in cells:
                for image in cell.images:
                    write(f"tutorials/{name}-{image}", (Path(workdir) / image).read_bytes())
        write(f"tutorials/{name}.md", tutorials.render(source, cells, f"{name}-"))
        print(f"gen_pages: tutorial {source.name} ran in {seconds:.1f} s", file=sys.stderr)
        nav.append(f"* [{tutorials.title(source)}]({name}.md)")
        first = next((c.source for c in cells if c.kind == "markdown"), "")
        summary = next((p for p in first.split("\n\n") if p.strip() and not p.startswith("#")), "")
        rows.append(f"## [{tutorials.title(source)}]({name}.md)\n\n{summary}\n")
    write("tutorials/SUMMARY.md", "\n".join(nav) + "\n")
    write("tutorials/index.md", _tutorials_index(rows))


def _tutorials_index(rows: list[str]) -> str:
    head = (
        "# Tutorials\n\n"
        "Each tutorial is a Python script in `docs/tutorials/`, cut into cells the way Jupytext reads\n"
        "them (`# %%`). The pages below were made by running the scripts when this site was built, and\n"
        "the test suite runs them too (`tests/test_tutorials.py`): what they print is what lnref does\n"
        "today. Each runs in well under a minute on two cores.\n\n"
    )
    return head + "\n".join(rows)


def proof_pages() -> None:
    readme = (ROOT / "proofs" / "README.md").read_text()
    measured = {}
    for row in readme.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]]
        link = re.match(r"\[`([^`]+)`\]\(([^)]+)\)", cells[0]) if len(cells) == 4 else None
        if link:
            measured[link.group(2)] = (cells[2], cells[3].replace("\\|", "|"))
    write("proofs/index.md", readme)
    nav = ["* [Overview](index.md)"]
    order = list(measured)  # the index's order, then any file it does not list yet

    def rank(path: Path) -> tuple[int, str]:
        return (order.index(path.name) if path.name in order else len(order), path.name)

    for path in sorted((ROOT / "proofs").glob("*.md"), key=rank):
        if path.name == "README.md":
            continue
        text = path.read_text()
        if path.name in measured:
            verdict, figures = measured[path.name]
            note = (
                f'!!! abstract "Measured: {verdict}"\n    {figures}\n\n'
                "    (`lnref prove --all --markdown`, the full sweep; the index of the claims lists them all.)\n"
            )
            heading_end = text.index("\n") + 1 if text.startswith("# ") else 0
            text = text[:heading_end] + "\n" + note + text[heading_end:]
        write(f"proofs/{path.name}", text)
        heading = re.search(r"^# (.*)$", text, re.M)
        title = re.sub(r"[$`]", "", heading.group(1)) if heading else path.stem  # no math in the menu
        nav.append(f"* [{title}]({path.name})")
    write("proofs/SUMMARY.md", "\n".join(nav) + "\n")


def api_pages() -> None:
    modules = []
    for path in sorted((ROOT / "lnref").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not API_SKIPPED.search(name):
            modules.append(name)
    groups: dict[str, list[str]] = {}
    for name in sorted(modules):
        write(f"api/{name}.md", f"# `{name}`\n\n::: {name}\n    options:\n      show_root_heading: false\n")
        groups.setdefault(".".join(name.split(".")[:2]), []).append(name)
    nav = []
    for package, names in groups.items():
        if len(names) == 1:
            nav.append(f"* [{package}]({package}.md)")
        else:
            nav += [f"* {package}", *(f"    * [{name}]({name}.md)" for name in names)]
    write("api/SUMMARY.md", "\n".join(nav) + "\n")


def cli_page() -> None:
    import click

    from lnref.cli import main

    root = click.Context(main, info_name="lnref")
    lines = [
        "# Command line",
        "",
        "Every command of `lnref`, generated from its click definition when this site was built: the",
        "same usage, help and options as `lnref COMMAND --help`.",
        "",
        _paragraphs(main.help or ""),
        "",
    ]
    for name, command in sorted(main.commands.items()):
        context = click.Context(command, info_name=name, parent=root)
        records = [record for param in command.get_params(context) if (record := param.get_help_record(context))]
        lines += [f"## `lnref {name}`", "", "```text", command.get_usage(context), "```", ""]
        lines += [_paragraphs(command.help or ""), "", "| option | meaning |", "| --- | --- |"]
        lines += [f"| `{option}` | {_text(meaning, in_table=True)} |" for option, meaning in records]
        lines.append("")
    write("cli.md", "\n".join(lines))


def _paragraphs(text: str) -> str:
    """A command's help as Markdown paragraphs (click's \\b blocks kept as they are written)."""
    parts = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        if paragraph.startswith("\b\n"):
            parts.append("```text\n" + paragraph[2:] + "\n```")
        else:
            parts.append(_text(paragraph.replace("\n", " ")))
    return "\n\n".join(parts)


def _text(text: str, in_table: bool = False) -> str:
    """Plain text as Markdown that shows it as written: no emphasis, no HTML (in a table, no
    cell break either)."""
    text = re.sub(r"([\\*_`\[\]])", r"\\\1", text).replace("<", "&lt;")
    return text.replace("|", "\\|") if in_table else text


def contributing_page() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    write("contributing.md", re.sub(r"\]\(docs/", "](", text))


# The build's products are small (the profiles, the tutorials): BLAS threads would only contend.
blas.set_threads(1)
timed("contributing", contributing_page)
timed("command line", cli_page)
timed("proofs", proof_pages)
timed("API pages", api_pages)
timed("scheme pages", lambda: scheme_pages.generate(write))
timed("tutorials", tutorial_pages)
