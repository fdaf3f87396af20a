"""lnref.testing: golden records in memory, assert_matches, check_gradient, the hypothesis
strategies, and the pytest plugin (run in a pytest of its own)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import lnref
from lnref.golden import export_golden, load_golden
from lnref.golden.suite import export_suite
from lnref.testing import assert_matches, check_gradient, golden
from lnref.testing.strategies import configs

CHECKOUT = Path(__file__).resolve().parents[1]


def outputs(record):
    return {n: v for n, v in record.arrays.items() if n in ("y", "loss") or n.startswith(("grads/", "hidden/"))}


# ----- golden records -----------------------------------------------------------------------


def test_a_record_is_computed_once_per_process_whatever_way_its_configuration_is_spelled():
    assert golden("pre", 2) is golden("pre", n_layers=2, d_model=16, norm="layernorm", seq=8)


def test_a_records_arrays_are_read_only():
    with pytest.raises(ValueError, match="read-only"):
        golden("post", 1).y[0, 0, 0] = 1.0


def test_a_record_holds_what_the_golden_file_of_its_configuration_holds_bit_for_bit(tmp_path):
    model = lnref.build("residual", 2, norm="rmsnorm")
    export_golden(model, tmp_path / "g.npz", point="generic")
    stored, record = load_golden(tmp_path / "g.npz"), golden("residual", 2, norm="rmsnorm")
    assert stored.arrays.keys() == record.arrays.keys()
    assert all(np.array_equal(stored.arrays[n], record.arrays[n]) for n in stored.arrays)


def test_a_record_is_at_a_generic_point_unless_asked_for_the_initialization():
    generic, init = golden("pre", 1), golden("pre", 1, point="init")
    assert np.all(init.params["layers.0.ln_attn.gamma"] == 1)
    assert not np.any(generic.params["layers.0.ln_attn.gamma"] == 1)
    assert (generic.point, init.point) == ("generic", "init")


def test_a_configuration_lnref_does_not_build_is_one_clear_error():
    with pytest.raises(lnref.ConfigError, match="unknown norm 'batchnorm'"):
        golden("pre", 1, norm="batchnorm")


# ----- assert_matches ---------------------------------------------------------------------------


def test_the_records_own_arrays_match_it_and_the_comparison_is_returned():
    record = golden("dlcl", 2)
    comparison = assert_matches(outputs(record), record)
    assert comparison.failed == 0 and comparison.passed == len(outputs(record))


def test_a_gradient_off_by_1e_9_of_itself_fails_naming_that_tensor_only():
    record = golden("pre", 2)
    actual = outputs(record) | {"grads/layers.1.ffn.w1": record.grads["layers.1.ffn.w1"] * (1 + 1e-9)}
    with pytest.raises(AssertionError) as failed:
        assert_matches(actual, record)
    message = str(failed.value)
    assert message.splitlines()[0] == f"1 of {len(actual)} tensors differ from golden('pre', 2)"
    assert "first failing: grads/layers.1.ffn.w1 (the forward agrees" in message


def test_a_golden_files_path_serves_as_expected_and_a_subset_of_names_as_actual(tmp_path):
    export_golden(lnref.build("post", 2), tmp_path / "g.npz")
    stored = load_golden(tmp_path / "g.npz")
    comparison = assert_matches({"y": stored.y, "grads/input": stored.grads["input"]}, tmp_path / "g.npz")
    assert comparison.passed == 2


def test_weights_stored_transposed_pass_with_transpose_weights_and_are_told_so_without():
    record = golden("post", 1)
    actual = outputs(record)
    actual |= {n: v.T for n, v in actual.items() if n.endswith(("wq", "wk", "wv", "wo", "w1", "w2"))}
    assert assert_matches(actual, record, transpose_weights=True).failed == 0
    with pytest.raises(AssertionError, match="weight matrices agree once transposed"):
        assert_matches(actual, record)


def test_a_name_map_renames_the_ports_names():
    record = golden("post", 1)
    assert assert_matches({"out": record.y}, record, name_map={"out": "y"}).passed == 1


def test_a_port_without_a_final_norm_is_told_so():
    record = golden("sandwich", 2)
    model = lnref.build("sandwich", 2)
    model.load(dict(record.params))
    last = record.hidden[-1]["x"]
    with pytest.raises(AssertionError, match="matches this model without its final norm"):
        assert_matches({"y": last, **{f"hidden/{l}/x": s["x"] for l, s in enumerate(record.hidden)}}, record)


# ----- check_gradient ---------------------------------------------------------------------------


def test_check_gradient_passes_a_right_gradient_and_fails_a_wrong_one_by_a_factor_of_1_plus_1e_5():
    x = np.random.default_rng(0).standard_normal(5)
    assert len(check_gradient(lambda x: np.sum(np.sin(x)), np.cos, x)) == 3
    with pytest.raises(AssertionError, match="failed"):
        check_gradient(lambda x: np.sum(np.sin(x)), lambda x: np.cos(x) * (1 + 1e-5), x)


def test_check_gradient_calls_a_vanishing_derivative_unresolved_not_passed():
    with pytest.raises(AssertionError, match="unresolved"):
        check_gradient(lambda x: np.sum(x**3), lambda x: 3 * x**2, np.zeros(4))


def test_check_gradient_says_when_the_claimed_gradient_has_the_wrong_shape():
    with pytest.raises(AssertionError, match=r"argument 0: grad_f gives shape \(4,\), the argument has \(5,\)"):
        check_gradient(np.sum, lambda x: np.ones(4), np.ones(5))


# ----- strategies -------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(max_layers=2))
def test_every_drawn_configuration_is_one_lnref_builds(config):
    model = lnref.build(**config)
    assert model.config.scheme == config["scheme"] and model.config.n_layers == config["n_layers"]


# ----- the pytest plugin ---------------------------------------------------------------------


def pytest_with_the_plugin(directory, *arguments):
    """A pytest of its own on ``directory``, with lnref's plugin named (not found by entry point,
    so that the checkout's plugin is the one tested whether or not lnref is installed)."""
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "lnref.testing.pytest_plugin", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*command, *arguments, str(directory)], capture_output=True, text=True, env=env, cwd=directory
    )


PORT_TEST = textwrap.dedent(
    """
    import numpy as np
    from lnref.testing import assert_matches, golden

    def test_the_fixture_gives_the_record_lnref_computes(lnref_golden):
        record = lnref_golden("pre", 1, d_model=8, d_ff=16, batch=2, seq=4)
        computed = golden("pre", 1, d_model=8, d_ff=16, batch=2, seq=4)
        assert all(np.array_equal(record.arrays[n], computed.arrays[n]) for n in computed.arrays)
        assert_matches({"y": computed.y}, record)
        assert record.path.endswith(".npz") == ({from_suite})
    """
)


def test_the_fixture_computes_records_without_the_option(tmp_path):
    (tmp_path / "test_port.py").write_text(PORT_TEST.replace("{from_suite}", "False"))
    done = pytest_with_the_plugin(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_fixture_reads_records_from_a_suite_with_lnref_golden_dir(tmp_path):
    export_suite(tmp_path / "suite", schemes=("pre",), layers=(1,))
    (tmp_path / "test_port.py").write_text(PORT_TEST.replace("{from_suite}", "True"))
    done = pytest_with_the_plugin(tmp_path, "--lnref-golden-dir", str(tmp_path / "suite"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_record_the_suite_lacks_fails_its_test_naming_the_case(tmp_path):
    export_suite(tmp_path / "suite", schemes=("pre",), layers=(1,))
    (tmp_path / "test_port.py").write_text("def test_deep(lnref_golden):\n    lnref_golden('pre', 48)\n")
    done = pytest_with_the_plugin(tmp_path, "--lnref-golden-dir", str(tmp_path / "suite"))
    assert done.returncode == 1
    assert "has no case golden('pre', 48)" in done.stdout


def test_a_directory_that_is_not_a_suite_is_a_usage_error(tmp_path):
    (tmp_path / "test_port.py").write_text("def test_any(lnref_golden):\n    pass\n")
    done = pytest_with_the_plugin(tmp_path, "--lnref-golden-dir", str(tmp_path))
    assert done.returncode != 0 and "no manifest.json" in done.stdout + done.stderr


def test_the_plugin_is_registered_under_pytest11():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"lnref": "lnref.testing.pytest_plugin"}


def test_importing_lnref_testing_loads_neither_the_engine_nor_a_framework():
    heavy = ("numba", "torch", "jax", "hypothesis", "pytest", "lnref.model")
    code = f"import sys, lnref.testing; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(CHECKOUT)}
    )
    assert done.stdout.strip() == "[]", done.stderr


# ----- check_init ------------------------------------------------------------------------------


def lnref_initialization(scheme_of=None, seed_offset=1000):
    """A sampler drawing lnref's own initialization with seeds lnref's reference draws never use
    (of another scheme with ``scheme_of``)."""

    def sample(config, seed):
        config = {**config, "seed": seed + seed_offset}
        if scheme_of is not None:
            config |= {"scheme": scheme_of, "options": {}}
        return lnref.Model(lnref.Config(**config)).params

    return sample


@pytest.mark.parametrize("scheme", ["admin", "deepnorm", "tfixup", "dslm", "dlcl", "rezero", "subln"])
def test_lnrefs_own_initialization_with_other_seeds_passes_check_init(scheme):
    from lnref.testing import check_init

    results = check_init(lnref_initialization(), scheme, 2)
    assert results and all(r.status == "ok" for r in results)


def test_check_init_flags_admins_profiled_omega_replaced_by_ones():
    from lnref.testing import check_init

    def ones_for_omega(config, seed):
        params = lnref_initialization()(config, seed)
        return {n: (np.ones_like(v) if ".omega_" in n else v) for n, v in params.items()}

    with pytest.raises(AssertionError) as failed:
        check_init(ones_for_omega, "admin", 2)
    off = {line.split(":")[0] for line in str(failed.value).splitlines()[1:]}
    assert off == {f"layers.{l}.omega_{b}" for l in range(2) for b in ("attn", "ffn")} - {"layers.0.omega_attn"}


def test_check_init_names_missing_and_extra_tensors():
    from lnref.testing import check_init

    def renamed(config, seed):
        params = dict(lnref_initialization()(config, seed))
        params["final_norm.gamma"] = params.pop("final_ln.gamma")
        return params

    with pytest.raises(AssertionError, match=r"final_ln\.gamma: missing(.|\n)*final_norm\.gamma: extra"):
        check_init(renamed, "pre", 1)
