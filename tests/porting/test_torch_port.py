"""lnref.ports.torch, the PyTorch port, against lnref: every case of the conformance suite (its
records computed in memory, as lnref.testing computes them), one scheme's cases through
``lnref export-suite`` and ``lnref compare DIR ACTUAL_DIR`` as a port in another language is
checked, and a matrix through lnref.testing.check_port. (tests/interop holds its deeper
agreement tests and negative controls: 48 layers, every option, the float32 tolerance.)"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lnref[torch]' runs the porting tests)")

from lnref.cli import main  # noqa: E402
from lnref.golden import compare_arrays  # noqa: E402
from lnref.golden.suite import export_suite, read_suite, suite_cases  # noqa: E402
from lnref.ports import torch as port  # noqa: E402
from lnref.testing import check_port, golden  # noqa: E402

pytestmark = pytest.mark.torch


def test_the_torch_port_passes_every_case_of_the_conformance_suite():
    failing = []
    cases = suite_cases()
    for case in cases:
        record = golden(case.scheme, case.n_layers, **case.config)
        actual = port.run(record.config.to_dict(), dict(record.params), record.x, record.dy, record.memory)
        comparison = compare_arrays(dict(record.arrays), actual, golden=record)
        if not comparison.ok or comparison.passed != len(actual):
            failing.append(f"{case.name}: {comparison.failed} failed, first {comparison.first_failing}")
    assert failing == [] and len(cases) > 700


def test_the_torch_ports_files_pass_lnref_compare_dir_actual_dir(tmp_path):
    suite, actual = tmp_path / "suite", tmp_path / "actual"
    export_suite(suite, schemes=("dlcl",), layers=(1, 2))
    actual.mkdir()
    cases = read_suite(suite)
    for case in cases:
        np.savez(actual / case.file, **port.evaluate(os.path.join(suite, case.file)))
    result = CliRunner().invoke(main, ["compare", str(suite), str(actual)])
    assert result.exit_code == 0, result.stdout
    assert result.stdout.splitlines()[-1] == f"{len(cases)} passed, 0 failed"


def test_the_torch_port_passes_check_port_over_options_and_decoders():
    cases = check_port(
        port.run, "normformer", options=[{"head_scale": "fairseq"}, {"resid_scale": True}], causal=[False, True]
    )
    assert len(cases) == 12


@pytest.mark.parametrize(
    "overrides", [{"norm": "dyt"}, {"qk_norm": "none"}], ids=["derf read as dyt", "qk-norm dropped"]
)
def test_check_port_fails_the_torch_port_told_another_norm_kind_or_no_qk_norm(overrides):
    def run(config, *arrays):
        return port.run({**config, **overrides}, *arrays)

    with pytest.raises(AssertionError, match="first failing: hidden/1/x"):
        check_port(run, "pre", layers=(2,), norm="derf", qk_norm="head")
