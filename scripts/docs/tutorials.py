"""Run a tutorial and render it as a page: the tutorials are Jupytext percent scripts.

A tutorial is a plain Python script in ``docs/tutorials/`` (``python 01_the_tape.py`` runs it;
Jupytext opens it as a notebook), cut into cells by ``# %%`` lines: ``# %% [markdown]`` cells
are Markdown written as comments, the others code. :func:`run` executes the code cells in
order, in one namespace, in a working directory of its own, capturing what each cell prints
and the images (PNG, SVG) it writes there. :func:`render` makes the page: the Markdown, each
code cell followed by its output and its images. Nothing run is ever committed: the site
build and the test suite (``tests/test_tutorials.py``) run every tutorial again, and a cell
that raises fails both.

The tutorials' products are small: they run with one BLAS thread (``lnref.process.blas``), as
the ``lnref`` command's sweeps do, so that they stay fast on a busy machine; the count is
restored afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from lnref.process import blas

CELL_MARK = re.compile(r"^# %%(.*)$")
IMAGES = (".png", ".svg")


class TutorialError(RuntimeError):
    """A tutorial's cell raised: the message names the file, the cell and its first line."""


@dataclass
class Cell:
    kind: str  # "markdown" or "code"
    source: str
    line: int  # where the cell's first line is in the script (1-based)
    output: str = ""
    images: list[Path] = field(default_factory=list)


def parse(text: str) -> list[Cell]:
    """The cells of a percent script (text before the first ``# %%`` is a code cell)."""
    cells: list[Cell] = []
    kind, start, lines = "code", 1, []
    for number, line in enumerate(text.splitlines(), start=1):
        mark = CELL_MARK.match(line)
        if mark is None:
            lines.append(line)
            continue
        cells.append(Cell(kind, "\n".join(lines).strip("\n"), start))
        kind, start, lines = ("markdown" if "[markdown]" in mark.group(1) else "code"), number + 1, []
    cells.append(Cell(kind, "\n".join(lines).strip("\n"), start))
    for cell in cells:
        if cell.kind == "markdown":
            cell.source = "\n".join(re.sub(r"^# ?", "", line) for line in cell.source.splitlines())
    return [cell for cell in cells if cell.source.strip()]


def title(path: Path) -> str:
    """The first Markdown heading of a tutorial."""
    for cell in parse(path.read_text()):
        if cell.kind == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def slug(path: Path) -> str:
    """The page name of a tutorial: its file name without the ordering number, with hyphens."""
    return re.sub(r"^\d+_", "", path.stem).replace("_", "-")


def run(path: Path, workdir: Path) -> list[Cell]:
    """Execute the tutorial's code cells in ``workdir``; returns the cells with their outputs."""
    path = Path(path).resolve()
    cells = parse(path.read_text())
    namespace: dict[str, object] = {"__name__": "__main__", "__file__": str(path)}
    previous, threads = Path.cwd(), blas.threads()
    os.chdir(workdir)
    blas.set_threads(1)
    try:
        for number, cell in enumerate(cells, start=1):
            if cell.kind != "code":
                continue
            before = _images(workdir)
            buffer = io.StringIO()
            code = compile("\n" * (cell.line - 1) + cell.source, str(path), "exec")
            try:
                with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                    exec(code, namespace)
            except BaseException as error:  # a failing cell fails the page, with its traceback
                trace = "".join(traceback.format_exception(error)[-6:])
                raise TutorialError(f"{path.name}: cell {number} (line {cell.line}) raised\n{trace}") from error
            cell.output = buffer.getvalue()
            after = _images(workdir)
            cell.images = sorted(name for name, stamp in after.items() if before.get(name) != stamp)
    finally:
        os.chdir(previous)
        blas.set_threads(threads)
        sys.stdout.flush()
    return cells


def render(path: Path, cells: list[Cell], image_prefix: str) -> str:
    """The page of a tutorial run by :func:`run`; images are referred to as ``image_prefix + name``."""
    lines = [
        '!!! note "Run it yourself"',
        f"    This page is the script [`{path.name}`]({path.name}), run when the site was built. Run it with",
        f"    `python {path.name}`, or open it as a notebook with Jupytext.",
        "",
    ]
    for cell in cells:
        if cell.kind == "markdown":
            lines += [*cell.source.splitlines(), ""]
            continue
        lines += ["```python", cell.source, "```", ""]
        if cell.output.strip():
            lines += ['```text title="output"', cell.output.rstrip(), "```", ""]
        lines += [f"![{name}]({image_prefix}{name})" for name in map(str, cell.images)] + [""]
    heading = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
    if heading is not None:  # the title first, then the note
        lines.insert(0, lines.pop(heading))
    return "\n".join(lines)


def _images(workdir: Path) -> dict[Path, tuple[float, int]]:
    return {
        path.relative_to(workdir): (path.stat().st_mtime, path.stat().st_size)
        for path in workdir.rglob("*")
        if path.suffix in IMAGES and path.is_file()
    }
