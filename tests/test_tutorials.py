"""The tutorials of docs/tutorials/ run to the end (the site build runs them too, with the same
runner, scripts/docs/tutorials.py), and the second one fails when LayerNorm's backward is broken."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lnref.process import blas

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "scripts" / "docs"
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("[0-9]*.py"))


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


runner = load_tool("tutorials")

# Each tutorial runs in a process of its own, as the student's `python 01_the_tape.py` would:
# one registers a scheme, one imports PyTorch, all change the working directory.
SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tools!r})
import tutorials
{prelude}
cells = tutorials.run(Path({path!r}), Path.cwd())
print(sum(cell.kind == "code" for cell in cells), "code cells ran")
"""

DROP_THE_XHAT_TERM = """
from lnref.autograd.kernels import seam

def dropped_term(dy, x, gamma, mean, rstd):
    x_hat = (x - mean[:, None]) * rstd[:, None]
    g = dy * gamma
    return rstd[:, None] * (g - g.mean(axis=-1, keepdims=True)), (dy * x_hat).sum(axis=0), dy.sum(axis=0)

broken = seam.replaced("layer_norm_backward", dropped_term)  # held: a dropped context manager would undo it
broken.__enter__()
"""


def run_tutorial(path, prelude=""):
    script = SCRIPT.format(tools=str(TOOLS), path=str(path), prelude=prelude)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)


def test_the_five_tutorials_are_there_in_order():
    assert [runner.slug(path) for path in TUTORIALS] == [
        "the-tape",
        "layernorm-backward",
        "post-ln-warmup",
        "porting-to-pytorch",
        "your-own-placement",
    ]


@pytest.mark.parametrize("path", TUTORIALS, ids=[path.stem for path in TUTORIALS])
def test_tutorial_runs_to_the_end(path):
    if "import torch" in path.read_text() and importlib.util.find_spec("torch") is None:
        pytest.skip("this tutorial needs PyTorch")
    done = run_tutorial(path)
    assert done.returncode == 0, done.stderr[-4000:]
    code_cells = sum(cell.kind == "code" for cell in runner.parse(path.read_text()))
    assert f"{code_cells} code cells ran" in done.stdout


def test_the_layernorm_tutorial_fails_when_the_backward_drops_a_term():
    done = run_tutorial(TUTORIALS[1], prelude=DROP_THE_XHAT_TERM)
    assert done.returncode != 0
    assert "TutorialError: 02_layernorm_backward.py" in done.stderr
    assert 'assert check.status == "passed"' in done.stderr  # the gradient check, not an earlier cell


# ----- the runner -------------------------------------------------------------------------

SOURCE = """# %% [markdown]
# # A title
#
# Some *text*.

# %%
import numpy as np
print("hello")

# %% [markdown]
# More text.

# %%
np.save("array.npy", np.zeros(2))
open("figure.svg", "w").write("<svg/>")
"""


def test_parse_cuts_cells_at_percent_marks_and_uncomments_markdown():
    cells = runner.parse(SOURCE)
    assert [cell.kind for cell in cells] == ["markdown", "code", "markdown", "code"]
    assert cells[0].source == "# A title\n\nSome *text*."
    assert cells[1].source == 'import numpy as np\nprint("hello")'
    assert [cell.line for cell in cells] == [2, 7, 11, 14]


def test_run_captures_each_cells_output_and_the_images_it_writes(tmp_path):
    script = tmp_path / "01_example.py"
    script.write_text(SOURCE)
    workdir = tmp_path / "work"
    workdir.mkdir()
    cells = runner.run(script, workdir)
    assert cells[1].output == "hello\n" and cells[1].images == []
    assert cells[3].images == [Path("figure.svg")]  # the .npy is written but is no image


def test_run_restores_the_working_directory_and_the_blas_threads(tmp_path):
    script = tmp_path / "01_example.py"
    script.write_text(SOURCE)
    before = (Path.cwd(), blas.threads())
    runner.run(script, tmp_path)
    assert (Path.cwd(), blas.threads()) == before


def test_a_cell_that_raises_is_named_with_its_file_and_line(tmp_path):
    script = tmp_path / "02_broken.py"
    script.write_text("# %%\nx = 1\n\n# %%\nassert x == 2, 'x is not 2'\n")
    with pytest.raises(runner.TutorialError, match=r"02_broken.py: cell 2 \(line 5\) raised[\s\S]*x is not 2"):
        runner.run(script, tmp_path)


def test_render_puts_the_title_first_then_code_output_and_images(tmp_path):
    script = tmp_path / "01_example.py"
    script.write_text(SOURCE)
    work = tmp_path / "work"
    work.mkdir()
    page = runner.render(script, runner.run(script, work), "example-")
    assert page.startswith("# A title\n")
    assert '```text title="output"\nhello\n```' in page
    assert "![figure.svg](example-figure.svg)" in page
    assert "[`01_example.py`](01_example.py)" in page  # the script itself, to download
