"""The PyTorch port against the whole conformance suite, as a port in another language is
checked: each case's file read, the port's arrays written under the case's name, then
``lnref compare DIR ACTUAL_DIR``."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch runs the interop tests)")

import torch_port  # noqa: E402  (imports torch)

from lnref.cli import main  # noqa: E402
from lnref.golden.suite import export_suite, read_suite  # noqa: E402

pytestmark = pytest.mark.torch

# The port has no QK-norm switch: the suite's QK-norm cases are the ones it cannot run.
UNCOVERED = "qk_norm"


def test_the_torch_port_passes_every_case_of_the_conformance_suite_it_covers(tmp_path):
    suite, actual = tmp_path / "suite", tmp_path / "actual"
    export_suite(suite)
    actual.mkdir()
    cases = read_suite(suite)
    covered = [case for case in cases if UNCOVERED not in case.config]
    for case in covered:
        np.savez(actual / case.file, **torch_port.evaluate(os.path.join(suite, case.file)))
    result = CliRunner().invoke(main, ["compare", str(suite), str(actual)])
    lines = result.stdout.splitlines()
    missing = [line.split()[1] for line in lines if line.startswith("missing")]
    assert sorted(missing) == sorted(case.name for case in cases if case not in covered)
    assert [line for line in lines[1:-1] if not line.startswith(("ok", "missing"))] == []
    assert lines[-1] == f"{len(covered)} passed, {len(cases) - len(covered)} failed"
