"""The JAX port's checks, run in a process of their own (tests/porting/test_jax_port.py spawns
it): JAX starts threads when it loads, and lnref's workers fork, which a process holding
threads must not do. Each function returns plain values for the test to assert on."""

from __future__ import annotations

import os

import numpy as np


def suite_failures() -> tuple[int, list[str]]:
    """(cases, failing): every case of the conformance suite, its record computed in memory."""
    from lnref.golden import compare_arrays
    from lnref.golden.suite import suite_cases
    from lnref.ports import jax as port
    from lnref.testing import golden

    failing = []
    cases = suite_cases()
    for case in cases:
        record = golden(case.scheme, case.n_layers, **case.config)
        actual = port.run(record.config.to_dict(), dict(record.params), record.x, record.dy, record.memory)
        comparison = compare_arrays(dict(record.arrays), actual, golden=record)
        if not comparison.ok or comparison.passed != len(actual):
            failing.append(f"{case.name}: {comparison.failed} failed, first {comparison.first_failing}")
    return len(cases), failing


def compare_dir(directory: str, scheme: str) -> tuple[int, list[str], int]:
    """(exit code, output lines, cases) of ``lnref compare DIR ACTUAL_DIR`` on the port's files of
    one scheme's suite at 1 and 2 layers, written as a port in another language writes them."""
    from click.testing import CliRunner

    from lnref.cli import main
    from lnref.golden.suite import export_suite, read_suite
    from lnref.ports import jax as port

    suite, actual = os.path.join(directory, "suite"), os.path.join(directory, "actual")
    export_suite(suite, schemes=(scheme,), layers=(1, 2))
    os.mkdir(actual)
    cases = read_suite(suite)
    for case in cases:
        np.savez(os.path.join(actual, case.file), **port.evaluate(os.path.join(suite, case.file)))
    result = CliRunner().invoke(main, ["compare", suite, actual])
    return result.exit_code, result.stdout.splitlines(), len(cases)


def check_port_cases(scheme: str, **config: object) -> int:
    """The number of cases lnref.testing.check_port passed."""
    from lnref.ports import jax as port
    from lnref.testing import check_port

    return len(check_port(port.run, scheme, **config))


def check_port_failure(scheme: str, overrides: dict[str, object]) -> str | None:
    """check_port's message for the port told ``overrides`` in place of the record's config."""
    from lnref.ports import jax as port
    from lnref.testing import check_port

    def run(config, *arrays):
        return port.run({**config, **overrides}, *arrays)

    try:
        check_port(run, scheme, layers=(2,))
    except AssertionError as failure:
        return str(failure)
    return None
