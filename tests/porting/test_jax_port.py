"""lnref.ports.jax, the pure-JAX port, against lnref: the whole conformance suite through
``lnref compare DIR ACTUAL_DIR`` (as a port in another language would be checked), a matrix
through lnref.testing.check_port, and negative controls: the port told another eps or another
scheme fails."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("jax", reason="JAX is not installed (pip install 'lnref[jax]' runs the JAX port's tests)")

from lnref.cli import main  # noqa: E402
from lnref.golden.suite import export_suite, read_suite  # noqa: E402
from lnref.ports import jax as port  # noqa: E402
from lnref.testing import check_port  # noqa: E402

pytestmark = pytest.mark.jax


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    directory = tmp_path_factory.mktemp("suite")
    export_suite(directory)
    return directory


def write_port_outputs(suite, actual, **overrides):
    """What a port does with a suite: each case's file read, its arrays written under the case's name."""
    for case in read_suite(suite):
        np.savez(os.path.join(actual, case.file), **port.evaluate(os.path.join(suite, case.file), **overrides))


def test_the_jax_port_passes_the_whole_conformance_suite(suite, tmp_path):
    write_port_outputs(suite, tmp_path)
    result = CliRunner().invoke(main, ["compare", str(suite), str(tmp_path)])
    cases = len(read_suite(suite))
    assert result.exit_code == 0, "\n".join(line for line in result.stdout.splitlines() if not line.startswith("ok"))
    assert result.stdout.splitlines()[-1] == f"{cases} passed, 0 failed"


def test_the_jax_port_passes_check_port_over_norms_and_decoders():
    cases = check_port(port.run, "residual", norm=["layernorm", "rmsnorm"], cross_attention=[False, True])
    assert len(cases) == 12


@pytest.mark.parametrize("overrides", [{"eps": 1e-6}, {"scheme": "b2t"}], ids=["eps 1e-6", "post read as b2t"])
def test_the_suite_fails_the_jax_port_told_another_eps_or_scheme(tmp_path, overrides):
    suite = tmp_path / "suite"
    export_suite(suite, schemes=("post",), layers=(2,))
    actual = tmp_path / "actual"
    actual.mkdir()
    write_port_outputs(suite, actual, **overrides)
    result = CliRunner().invoke(main, ["compare", str(suite), str(actual)])
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1].endswith(" failed") and "0 passed" in result.stdout.splitlines()[-1]
