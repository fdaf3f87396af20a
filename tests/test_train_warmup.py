"""The warm-up a run gets when none is asked for: a default never refuses the command typed.

``--warmup`` unset gives 100 steps, or a tenth of a shorter run (at least one), and says so
on stderr when it shortened; a ``--warmup`` given and longer than the run is still refused.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lnref.cli import main
from lnref.train import DEFAULT_WARMUP, default_warmup

SMALL = ["--d-model", "8", "--batch", "4", "--eval-every", "5"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("steps, warmup", [(400, 100), (100, 100), (99, 9), (20, 2), (10, 1), (5, 1), (1, 1)])
def test_the_default_warmup_is_100_steps_or_a_tenth_of_a_shorter_run(steps, warmup):
    assert DEFAULT_WARMUP == 100 and default_warmup(steps) == warmup


def test_the_command_of_the_issue_trains_with_a_warmup_shortened_to_fit():
    result = invoke("train", "--scheme", "pre", "--layers", "2", "--task", "reverse", "--steps", "20", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["config"]["warmup"] == 2


def test_a_shortened_default_warmup_is_reported_on_stderr_in_one_line():
    result = invoke("train", "--scheme", "pre", "--layers", "1", "--steps", "20", *SMALL)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: warm-up")]
    assert result.exit_code == 0, result.stderr
    assert notes == [
        "note: warm-up 2 steps for the 20-step run: the default 100 is longer than the run, "
        "so a tenth of it (at least 1); --warmup sets it"
    ]


def test_a_default_warmup_that_fits_is_kept_silently():
    result = invoke("train", "--scheme", "pre", "--layers", "1", "--steps", "100", "--json", *SMALL)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["config"]["warmup"] == 100
    assert "note: warm-up" not in result.stderr


def test_an_explicit_warmup_longer_than_the_run_is_refused_in_one_line():
    result = invoke("train", "--scheme", "pre", "--layers", "1", "--steps", "20", "--warmup", "30", *SMALL)
    assert result.exit_code == 2
    assert result.stderr == "error: warm-up (30 steps) is longer than the run (20 steps)\n"


def test_the_stability_grid_of_a_short_run_takes_a_shortened_warmup_arm():
    result = invoke(
        "stability",
        *("--schemes", "pre", "--depths", "1", "--seeds", "1", "--steps", "20", "--backend", "serial", "--json"),
        *SMALL,
    )
    assert result.exit_code == 0, result.stderr
    assert {run["config"]["warmup"] for run in json.loads(result.stdout)["runs"]} == {0, 2}
    assert "note: warm-up 2 steps for the 20-step run" in result.stderr


def test_an_explicit_stability_warmup_longer_than_the_run_is_refused_in_one_line():
    result = invoke("stability", "--schemes", "pre", "--depths", "1", "--steps", "20", "--warmup", "30")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "warm-up (30 steps) is longer than the run (20 steps)" in result.stderr
