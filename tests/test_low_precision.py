"""Golden files rounded to a low precision: lnref export --dtype float16|bfloat16 stores inputs
and parameters rounded to it, every output computed in float64 from them; the file says so,
the reader checks it, and the comparison takes that precision's tolerance."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from lnref.cli import main
from lnref.golden import GoldenError, compare_files, from_golden, load_golden
from lnref.golden.precision import representable, round_to

needs_ml_dtypes = pytest.mark.skipif(
    importlib.util.find_spec("ml_dtypes") is None, reason="bfloat16 needs lnref[lowp] (ml_dtypes)"
)
PRECISIONS = ["float16", pytest.param("bfloat16", marks=needs_ml_dtypes)]


def export(tmp_path, dtype, *extra):
    path = tmp_path / f"{dtype}.npz"
    result = CliRunner().invoke(
        main, ["export", "--scheme", "residual", "--layers", "2", "--dtype", dtype, "-o", str(path), *extra]
    )
    assert result.exit_code == 0, result.output
    return path, result


@pytest.mark.parametrize("dtype", PRECISIONS)
def test_the_file_holds_inputs_and_parameters_of_that_precision_and_float64_outputs(tmp_path, dtype):
    path, result = export(tmp_path, dtype)
    golden = load_golden(path)
    assert (golden.rounded_to, golden.config.dtype) == (dtype, "float64")
    assert f"float64 from inputs rounded to {dtype}" in result.stdout
    for name in ("x", "dy", *(f"params/{n}" for n in golden.params)):
        assert representable(golden.arrays[name], dtype), name
    assert not representable(golden.y, dtype)


@pytest.mark.parametrize("dtype", PRECISIONS)
def test_the_outputs_are_what_lnref_computes_from_the_rounded_values_bit_for_bit(tmp_path, dtype):
    path, _ = export(tmp_path, dtype)
    from_golden(path)  # raises unless every stored array is reproduced


def test_a_file_whose_input_is_not_of_its_precision_is_refused(tmp_path):
    path, _ = export(tmp_path, "float16")
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["x"] = arrays["x"] + 1e-9
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(GoldenError, match="x holds values that are not float16"):
        load_golden(tmp_path / "bad.npz")


@pytest.mark.parametrize("dtype, rtol", [("float16", 1e-2), pytest.param("bfloat16", 1e-1, marks=needs_ml_dtypes)])
def test_the_comparison_takes_the_precisions_tolerance_and_any_float_dtype(tmp_path, dtype, rtol):
    path, _ = export(tmp_path, dtype)
    golden = load_golden(path)
    low = np.float16 if dtype == "float16" else np.float32
    np.savez(tmp_path / "port.npz", y=golden.y.astype(low))
    report = compare_files(path, tmp_path / "port.npz")
    assert report.rtol == rtol and report.ok


def test_an_output_off_by_twice_the_tolerance_fails(tmp_path):
    path, _ = export(tmp_path, "float16")
    golden = load_golden(path)
    np.savez(tmp_path / "port.npz", y=golden.y + 2e-2 * np.max(np.abs(golden.y)))
    assert not compare_files(path, tmp_path / "port.npz").ok


def test_bfloat16_without_ml_dtypes_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    result = CliRunner().invoke(
        main, ["export", "--scheme", "pre", "--dtype", "bfloat16", "-o", str(tmp_path / "g.npz")]
    )
    assert result.exit_code == 2 and "lnref[lowp]" in result.stderr
    assert not (tmp_path / "g.npz").exists()


def test_rounding_gives_the_nearest_value_of_the_precision():
    assert round_to(np.array([1 + 2**-12]), "float16")[0] == 1.0
    assert round_to(np.array([1 + 3 * 2**-11]), "float16")[0] == 1 + 2 * 2**-10


def test_a_rounded_document_needs_a_float64_model(tmp_path):
    path, _ = export(tmp_path, "float16")
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    document = json.loads(arrays["config"].tobytes())
    document["model"]["dtype"] = "float32"
    arrays = {n: (v.astype(np.float32) if n != "config" else v) for n, v in arrays.items()}
    arrays["config"] = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(GoldenError, match="need a float64 model"):
        load_golden(tmp_path / "bad.npz")
