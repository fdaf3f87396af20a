"""lnref.ports.jax, the pure-JAX port, against lnref: every case of the conformance suite (its
records computed in memory, as lnref.testing computes them), one scheme's cases through
``lnref export-suite`` and ``lnref compare DIR ACTUAL_DIR`` as a port in another language is
checked, a matrix through lnref.testing.check_port, and negative controls: the port told
another eps, scheme or activation fails. JAX runs in a spawned process (jax_checks.py): it
holds threads, and the rest of the test run forks."""

from __future__ import annotations

import importlib.util
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import jax_checks
import pytest

pytestmark = [
    pytest.mark.jax,
    pytest.mark.skipif(
        importlib.util.find_spec("jax") is None,
        reason="JAX is not installed (pip install 'lnref[jax]' runs the JAX port's tests)",
    ),
]


@pytest.fixture(scope="module")
def in_jax_process():
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield lambda function, *args, **kwargs: executor.submit(function, *args, **kwargs).result()


def test_the_jax_port_passes_every_case_of_the_conformance_suite(in_jax_process):
    cases, failing = in_jax_process(jax_checks.suite_failures)
    assert failing == [] and cases > 700


def test_the_jax_ports_files_pass_lnref_compare_dir_actual_dir(in_jax_process, tmp_path):
    exit_code, lines, cases = in_jax_process(jax_checks.compare_dir, str(tmp_path), "residual")
    assert exit_code == 0, "\n".join(lines)
    assert lines[-1] == f"{cases} passed, 0 failed"


def test_the_jax_port_passes_check_port_over_norms_and_decoders(in_jax_process):
    cases = in_jax_process(
        jax_checks.check_port_cases, "residual", norm=["layernorm", "rmsnorm"], cross_attention=[False, True]
    )
    assert cases == 12


@pytest.mark.parametrize(
    "scheme, options",
    [("hyper", [{"n": 1}, {"n": 3, "dynamic": True}]), ("mhc", [{"n": 2}, {"n": 3, "sinkhorn_iterations": 3}])],
    ids=["hyper", "mhc"],
)
def test_the_jax_port_passes_check_port_over_the_number_of_copies(in_jax_process, scheme, options):
    """The suite varies the options that have choices; the number of copies has none."""
    assert in_jax_process(jax_checks.check_port_cases, scheme, options=options) == 6


@pytest.mark.parametrize(
    "overrides",
    [{"eps": 1e-6}, {"scheme": "b2t"}, {"activation": "gelu"}],
    ids=["eps 1e-6", "post as b2t", "relu as gelu"],
)
def test_check_port_fails_the_jax_port_told_another_eps_scheme_or_activation(in_jax_process, overrides):
    message = in_jax_process(jax_checks.check_port_failure, "post", overrides)
    assert message is not None and "first failing: hidden/1/x" in message


@pytest.mark.parametrize(
    "scheme, overrides",
    [("gpas", {"scheme": "pre"}), ("gemma2", {"norm": "rmsnorm"}), ("mhc", {"options": {"sinkhorn_iterations": 1}})],
    ids=["gpas as pre-ln", "gemma's norm as rmsnorm", "one sinkhorn round for twenty"],
)
def test_check_port_fails_the_jax_port_told_another_piece_of_the_second_part(in_jax_process, scheme, overrides):
    message = in_jax_process(jax_checks.check_port_failure, scheme, overrides)
    assert message is not None and "first failing: hidden/1/" in message
