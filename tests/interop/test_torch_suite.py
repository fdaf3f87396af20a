"""The PyTorch port against the conformance suite: every case it covers (the records computed in
memory, as lnref.testing computes them), and one scheme's cases as a port in another language
is checked: each case's file read, the port's arrays written under the case's name, then
``lnref compare DIR ACTUAL_DIR``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch runs the interop tests)")

import torch_port  # noqa: E402  (imports torch)

from lnref.cli import main  # noqa: E402
from lnref.golden import compare_arrays  # noqa: E402
from lnref.golden.suite import export_suite, read_suite, suite_cases  # noqa: E402
from lnref.testing import golden  # noqa: E402

pytestmark = pytest.mark.torch

# The port's eleven schemes and two norm kinds, with no QK-norm switch and no scheme options:
# the suite's other cases are the ones it cannot run.
NORMS = ("layernorm", "rmsnorm")


def covered(case):
    config = case.config
    scheme = hasattr(torch_port.Transformer, f"scheme_{case.scheme}")
    return scheme and config.get("norm", "layernorm") in NORMS and "qk_norm" not in config and "options" not in config


def test_the_torch_port_passes_every_case_of_the_conformance_suite_it_covers(tmp_path):
    failing, uncovered = [], []
    for case in suite_cases():
        if not covered(case):
            uncovered.append(case.name)
            continue
        record = golden(case.scheme, case.n_layers, **case.config)
        path = tmp_path / "case.npz"
        np.savez(path, config=np.frombuffer(json.dumps(document_of(record)).encode(), dtype=np.uint8), **record.arrays)
        actual = torch_port.evaluate(path)
        comparison = compare_arrays(dict(record.arrays), actual, golden=record)
        if not comparison.ok or comparison.passed != len(actual):
            failing.append(f"{case.name}: {comparison.failed} failed, first {comparison.first_failing}")
    assert failing == []
    assert len(suite_cases()) - len(uncovered) >= 11 * 3 * 5  # its schemes' base, norm, causal, decoder, GELU cases


def document_of(record):
    """The config document a golden file of ``record`` holds (what the port reads)."""
    return {"format_version": 4, "model": record.config.to_dict()}


def test_the_torch_ports_files_pass_lnref_compare_dir_actual_dir(tmp_path):
    suite, actual = tmp_path / "suite", tmp_path / "actual"
    export_suite(suite, schemes=("dlcl",), layers=(1, 2))
    actual.mkdir()
    cases = [case for case in read_suite(suite) if covered(case)]
    for case in cases:
        np.savez(actual / case.file, **torch_port.evaluate(os.path.join(suite, case.file)))
    result = CliRunner().invoke(main, ["compare", str(suite), str(actual)])
    lines = result.stdout.splitlines()
    assert [line for line in lines[1:-1] if not line.startswith(("ok", "missing"))] == []
    assert lines[-1] == f"{len(cases)} passed, {len(read_suite(suite)) - len(cases)} failed"
