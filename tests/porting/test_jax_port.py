"""lnref.ports.jax, the pure-JAX port, against lnref: every case of the conformance suite (its
records computed in memory, as lnref.testing computes them), one scheme's cases through
``lnref export-suite`` and ``lnref compare DIR ACTUAL_DIR`` as a port in another language is
checked, a matrix through lnref.testing.check_port, and negative controls: the port told
another eps or another scheme fails."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("jax", reason="JAX is not installed (pip install 'lnref[jax]' runs the JAX port's tests)")

from lnref.cli import main  # noqa: E402
from lnref.golden import compare_arrays  # noqa: E402
from lnref.golden.suite import export_suite, read_suite, suite_cases  # noqa: E402
from lnref.ports import jax as port  # noqa: E402
from lnref.testing import check_port, golden  # noqa: E402

pytestmark = pytest.mark.jax


def write_port_outputs(suite, actual, **overrides):
    """What a port does with a suite: each case's file read, its arrays written under the case's name."""
    for case in read_suite(suite):
        np.savez(os.path.join(actual, case.file), **port.evaluate(os.path.join(suite, case.file), **overrides))


def test_the_jax_port_passes_every_case_of_the_conformance_suite():
    failing = []
    for case in suite_cases():
        record = golden(case.scheme, case.n_layers, **case.config)
        actual = port.run(record.config.to_dict(), dict(record.params), record.x, record.dy, record.memory)
        comparison = compare_arrays(dict(record.arrays), actual, golden=record)
        if not comparison.ok or comparison.passed != len(actual):
            failing.append(f"{case.name}: {comparison.failed} failed, first {comparison.first_failing}")
    assert failing == []


def test_the_jax_ports_files_pass_lnref_compare_dir_actual_dir(tmp_path):
    suite, actual = tmp_path / "suite", tmp_path / "actual"
    export_suite(suite, schemes=("residual",), layers=(1, 2))
    actual.mkdir()
    write_port_outputs(suite, actual)
    result = CliRunner().invoke(main, ["compare", str(suite), str(actual)])
    cases = len(read_suite(suite))
    assert result.exit_code == 0, result.stdout
    assert result.stdout.splitlines()[-1] == f"{cases} passed, 0 failed"


def test_the_jax_port_passes_check_port_over_norms_and_decoders():
    cases = check_port(port.run, "residual", norm=["layernorm", "rmsnorm"], cross_attention=[False, True])
    assert len(cases) == 12


@pytest.mark.parametrize(
    "overrides, first",
    [({"eps": 1e-6}, "hidden/1/x"), ({"scheme": "b2t"}, "hidden/1/x"), ({"activation": "gelu"}, "hidden/1/x")],
    ids=["eps 1e-6", "post read as b2t", "relu read as gelu"],
)
def test_check_port_fails_the_jax_port_told_another_eps_scheme_or_activation(overrides, first):
    def run(config, *arrays):
        return port.run({**config, **overrides}, *arrays)

    with pytest.raises(AssertionError, match=f"first failing: {first}"):
        check_port(run, "post", layers=(2,))
