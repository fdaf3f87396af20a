"""The conformance suite: lnref export-suite writes every scheme x norm kind x option at each
depth with a manifest; lnref compare DIR ACTUAL_DIR compares a port's files case by case."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from lnref.cli import main
from lnref.golden.suite import suite_cases, variants
from lnref.testing import golden


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    directory = tmp_path_factory.mktemp("suite") / "suite"
    result = run("export-suite", "-o", directory, "--scheme", "pre,residual,rezero", "--layers", "1,2")
    assert result.exit_code == 0, result.output
    return directory


def test_the_suite_holds_a_file_per_case_and_a_manifest_naming_them(suite):
    manifest = json.loads((suite / "manifest.json").read_text())
    files = sorted(case["file"] for case in manifest["cases"])
    assert sorted(os.listdir(suite)) == sorted([*files, "manifest.json"])
    assert len(files) == len(suite_cases(("pre", "residual", "rezero"), (1, 2)))


def test_export_suite_counts_aliases_apart_from_schemes(tmp_path):
    result = run("export-suite", "-o", tmp_path / "s", "--scheme", "rezero,gemma2", "--layers", "1")
    assert result.exit_code == 0, result.output
    assert "of 1 scheme and 1 alias," in result.output


def test_each_scheme_varies_one_thing_at_a_time_leaving_out_what_it_refuses():
    pre = variants("pre")
    assert pre[""] == {} and pre["-rmsnorm"] == {"norm": "rmsnorm"}
    assert pre["-decoder"] == {"causal": True, "cross_attention": True} and "-qk_head" in pre
    assert "-rmsnorm" not in variants("rezero")  # ReZero places no norm


def test_a_case_file_holds_the_record_lnref_testing_computes_for_it(suite):
    from lnref.golden import load_golden

    stored = load_golden(suite / "residual-L2-decoder.npz")
    record = golden("residual", 2, d_model=8, d_ff=16, seq=4, causal=True, cross_attention=True)
    assert all(np.array_equal(stored.arrays[n], record.arrays[n]) for n in record.arrays)


def test_compare_dir_with_itself_passes_every_case_with_a_line_each(suite):
    result = run("compare", suite, suite)
    lines = result.stdout.splitlines()
    cases = len(json.loads((suite / "manifest.json").read_text())["cases"])
    assert result.exit_code == 0
    assert len([line for line in lines if line.startswith("ok ")]) == cases
    assert lines[-1] == f"{cases} passed, 0 failed"


def test_compare_dir_fails_a_perturbed_case_and_a_missing_one_and_passes_the_rest(suite, tmp_path):
    actual = tmp_path / "actual"
    shutil.copytree(suite, actual)
    (actual / "pre-L1.npz").unlink()
    with np.load(suite / "residual-L2.npz") as data:
        arrays = {name: data[name] for name in data.files if name != "config"}
    arrays["hidden/2/x_d"] = arrays["hidden/2/x_d"] * (1 + 1e-8)
    np.savez(actual / "residual-L2.npz", **arrays)
    result = run("compare", suite, actual)
    lines = result.stdout.splitlines()
    cases = len(json.loads((suite / "manifest.json").read_text())["cases"])
    assert result.exit_code == 1
    assert any(line.startswith("missing") and "pre-L1 " in line for line in lines)
    assert any(
        line.startswith("FAIL") and "residual-L2 " in line and "first failing: hidden/2/x_d" in line for line in lines
    )
    assert lines[-1] == f"{cases - 2} passed, 2 failed"


def test_compare_dir_with_json_gives_every_case(suite):
    report = json.loads(run("compare", suite, suite, "--json").stdout)
    assert report["ok"] and report["failed"] == 0 and len(report["cases"]) == report["passed"]


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["export-suite", "-o", "{tmp}/s", "--scheme", "nosuch"], ["unknown scheme 'nosuch'"]),
        (["export-suite", "-o", "{tmp}/s", "--layers", "0"], ["every depth must be >= 1"]),
        (["compare", "{tmp}", "{tmp}"], ["no manifest.json"]),
        (["compare", "{suite}", "{tmp}/absent"], ["not a directory"]),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(suite, tmp_path, arguments, words):
    result = run(*[a.format(tmp=tmp_path, suite=suite) for a in arguments])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), result.stderr
