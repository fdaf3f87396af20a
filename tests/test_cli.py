"""The ``lnref`` command line as a whole: its commands, and what ``lnref --help`` imports.

Each command is tested with what it runs (test_gradcheck, test_golden, test_profile,
test_claims, test_train); here only what holds for all of them.
"""

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from lnref.cli import main

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"schemes", "gradcheck", "export", "export-suite", "compare", "profile", "prove", "train", "stability"}
HEAVY = ("numpy", "numba", "lnref.autograd", "lnref.model", "lnref.gradcheck", "lnref.train", "lnref.profile")


def test_every_command_is_listed_under_its_name():
    assert set(main.commands) == COMMANDS
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = result.output.split("Commands:")[1].split()
    assert COMMANDS <= set(listed)


def test_help_imports_neither_numpy_nor_numba_nor_the_engine():
    code = (
        "import sys\n"
        "from lnref.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        f"print(*[name for name in sys.modules if name.startswith({HEAVY!r})])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Commands:" in done.stdout
    assert done.stdout.splitlines()[-1].split() == []


def test_a_usage_error_is_one_line_and_exit_2():
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error:")
