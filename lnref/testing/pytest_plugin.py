"""lnref's pytest plugin, registered under the entry point group ``pytest11`` as ``lnref``.

    def test_my_port(lnref_golden):
        record = lnref_golden("residual", 6, norm="rmsnorm")
        lnref.testing.assert_matches(my_port(record), record)

- the fixture ``lnref_golden``: :func:`lnref.testing.golden`, its records cached for the whole
  test run;
- the option ``--lnref-golden-dir DIR``: the records are read from a suite written by
  ``lnref export-suite -o DIR`` instead of computed (a run without lnref's engine at hand, or
  records pinned to the lnref that wrote them); a record the suite lacks fails its test.

Loading the plugin imports nothing of lnref: the fixture does, when a test asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lnref", "lnref golden records")
    group.addoption(
        "--lnref-golden-dir",
        metavar="DIR",
        default=None,
        help="read the lnref_golden fixture's records from a suite written by 'lnref export-suite -o DIR' "
        "instead of computing them",
    )


@pytest.fixture(scope="session")
def lnref_golden(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``golden(scheme, n_layers=2, **config)``: lnref's golden record of a configuration
    (:func:`lnref.testing.golden`), cached for the test run, or read from ``--lnref-golden-dir``."""
    directory = request.config.getoption("lnref_golden_dir")
    if directory is None:
        from lnref.testing import golden

        return golden
    from lnref.golden import GoldenError
    from lnref.testing.records import SuiteRecords

    try:
        return SuiteRecords(directory).golden
    except GoldenError as err:
        raise pytest.UsageError(f"--lnref-golden-dir: {err}") from None
