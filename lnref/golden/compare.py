"""Comparing another implementation's arrays with a golden file (the rule: see lnref.golden)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lnref.files import PathLike
from lnref.golden import hints
from lnref.golden.containers import read_arrays
from lnref.golden.format import GoldenError, first_names, is_weight_matrix, one_line
from lnref.golden.load import Golden, load_golden
from lnref.schemes import get_scheme

# Default rtol by dtype (for a file rounded to a low precision, by that precision): well above
# the round-off by which two correct implementations differ, well below what a real
# discrepancy moves (the measurements: docs/golden-format.md).
DEFAULT_RTOL = {"float64": 1e-10, "float32": 1e-3, "float16": 1e-2, "bfloat16": 1e-1}
DEFAULT_ATOL = 0.0
RULE = "pass iff max|a-e| <= atol + rtol * scale"


@dataclass
class TensorResult:
    """How one expected tensor compares; status is ok, FAIL, shape, dtype, nonfinite or missing."""

    name: str
    status: str
    shape: tuple[int, ...]
    dtype: str
    actual_shape: tuple[int, ...] | None = None
    actual_dtype: str | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    max_abs_expected: float | None = None
    scale: float | None = None
    worst_index: tuple[int, ...] | None = None  # where |a - e| is largest
    actual_at_worst: float | None = None
    expected_at_worst: float | None = None
    mismatched: float | None = None  # the fraction of elements beyond the tolerance

    @property
    def compared(self) -> bool:
        return self.status != "missing"


@dataclass
class Comparison:
    """Every expected tensor's result, what the failures suggest (``hints``: sentences, from
    ``lnref.golden.hints``), and the report as text or JSON."""

    expected_path: str
    actual_path: str
    rtol: float
    atol: float
    require_all: bool
    per_tensor: bool
    results: list[TensorResult]
    extra: list[str]
    hints: list[str] = field(default_factory=list)
    first_failing: str | None = None  # the tensor where the computation first diverges
    first_failing_note: str | None = None  # what that says

    @property
    def missing(self) -> list[str]:
        return [r.name for r in self.results if r.status == "missing"]

    @property
    def passed(self) -> int:
        return sum(r.status == "ok" for r in self.results)

    @property
    def failed(self) -> int:
        return sum(self._counts_as_failure(r) for r in self.results)

    def _counts_as_failure(self, result: TensorResult) -> bool:
        if result.status == "missing":
            return self.require_all
        return result.status != "ok"

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "expected": self.expected_path,
            "actual": self.actual_path,
            "rule": RULE,
            "scale": "tensor" if self.per_tensor else "group",
            "rtol": self.rtol,
            "atol": self.atol,
            "require_all": self.require_all,
            "tensors": [_finite_or_none(dataclasses.asdict(r)) for r in self.results if r.compared],
            "missing": self.missing,
            "extra": self.extra,
            "first_failing": self.first_failing,
            "first_failing_note": self.first_failing_note,
            "hints": self.hints,
            "passed": self.passed,
            "failed": self.failed,
            "ok": self.ok,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_text(self, failing_only: bool = False) -> str:
        """The report: a table of the compared tensors (``failing_only``: of those that did
        not pass, with a count of the rest), the missing and extra names, where the failures
        are, the hints, and the last line ``N passed, M failed``."""
        compared = [r for r in self.results if r.compared and not (failing_only and r.status == "ok")]
        width = max([len("name")] + [len(r.name) for r in compared])
        lines = [
            f"expected {self.expected_path}   actual {self.actual_path}",
            f"{RULE}, scale = max|e| over the {'tensor' if self.per_tensor else 'group'}   "
            f"rtol {self.rtol:g}   atol {self.atol:g}",
            f"{'name':{width}s}  {'shape':14s} {'max_abs_err':>11s} {'max_rel_err':>11s}  status",
        ]
        for r in compared:
            shape = _shape_text(r.shape)
            if r.actual_shape is not None and tuple(r.actual_shape) != tuple(r.shape):
                shape += f"!={_shape_text(r.actual_shape)}"
            status = r.status if r.status != "dtype" else f"dtype {r.actual_dtype}!={r.dtype}"
            lines.append(
                f"{r.name:{width}s}  {shape:14s} {_number(r.max_abs_error):>11s} "
                f"{_number(r.max_rel_error):>11s}  {status}"
            )
        if failing_only and self.passed:
            lines.append(f"({self.passed} tensors passed, not listed)")
        missing = self.missing
        if missing:
            verdict = "failures" if self.require_all else "not compared"
            lines.append(f"missing in ACTUAL ({verdict}): {len(missing)}: {first_names(missing, 8)}")
        if self.extra:
            lines.append(f"extra in ACTUAL (not compared): {len(self.extra)}: {first_names(self.extra, 8)}")
        lines.extend(self.where_text(first=not failing_only))
        lines.extend(f"hint: {hint}" for hint in self.hints if not failing_only)
        lines.append(f"{self.passed} passed, {self.failed} failed")
        return "\n".join(lines)

    def where_text(self, count: int = 8, first: bool = True) -> list[str]:
        """Lines saying where the first ``count`` failing tensors are worst, how much of each
        fails, and the first diverging tensor."""
        failing = [r for r in self.results if r.status == "FAIL"]
        lines = [
            f"{r.name}: worst at {list(r.worst_index or ())}: actual {r.actual_at_worst:.10g}, "
            f"expected {r.expected_at_worst:.10g}; {_percent(r.mismatched)} of its elements beyond the tolerance"
            for r in failing[:count]
        ]
        if len(failing) > count:
            lines.append(f"... and {len(failing) - count} more failing tensors")
        if first and self.first_failing is not None:
            lines.append(
                f"first failing: {self.first_failing}"
                + (f" ({self.first_failing_note})" if self.first_failing_note else "")
            )
        return lines


def read_name_map(path: PathLike) -> dict[str, str]:
    """A JSON object {actual name: expected name}."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            mapping = json.load(handle)
    except OSError as err:
        raise GoldenError(f"{path}: cannot read the name map ({err.strerror or err})") from None
    except ValueError as err:
        raise GoldenError(f"{path}: the name map is not valid JSON ({one_line(err)})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise GoldenError(f'{path}: the name map must be a JSON object of "actual name": "expected name" strings')
    return mapping


def group_of(name: str) -> str:
    """The group whose largest |e| scales a tensor's errors (see the package docstring)."""
    head, slash, tail = name.rpartition("/")
    return head + slash + tail.rpartition(".")[0] if "." in tail else name


def compare_files(
    expected_path: PathLike,
    actual_path: PathLike,
    rtol: float | None = None,
    atol: float = DEFAULT_ATOL,
    name_map: dict[str, str] | None = None,
    transpose_weights: bool = False,
    require_all: bool = False,
    per_tensor: bool = False,
) -> Comparison:
    """Compare every tensor of EXPECTED with the same-named tensor of ACTUAL.

    EXPECTED holding a config must be a valid golden file (validated by ``load_golden``);
    otherwise any file of finite floating arrays serves. ACTUAL is any file of named arrays,
    possibly a subset; the rest as :func:`compare_arrays`.
    """
    expected_path, actual_path = os.fspath(expected_path), os.fspath(actual_path)
    expected, config_entry = read_arrays(expected_path)
    golden = None
    if config_entry is not None:
        golden = load_golden(expected_path)
        expected = golden.arrays
    else:
        _check_plain_expected(expected_path, expected)
    actual, _ = read_arrays(actual_path)
    return compare_arrays(
        expected,
        actual,
        golden=golden,
        labels=(expected_path, actual_path),
        rtol=rtol,
        atol=atol,
        name_map=name_map,
        transpose_weights=transpose_weights,
        require_all=require_all,
        per_tensor=per_tensor,
    )


def compare_arrays(
    expected: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    golden: Golden | None = None,
    labels: tuple[str, str] = ("expected", "actual"),
    rtol: float | None = None,
    atol: float = DEFAULT_ATOL,
    name_map: dict[str, str] | None = None,
    transpose_weights: bool = False,
    require_all: bool = False,
    per_tensor: bool = False,
) -> Comparison:
    """Compare every expected tensor with the same-named actual one (both {name: array}).

    ``name_map`` renames ACTUAL's names to EXPECTED's, then ``transpose_weights`` transposes
    ACTUAL's 2-D weight matrices (a framework that stores (d_out, d_in)). ``rtol`` defaults by
    EXPECTED's dtype, or by the low precision a golden file's inputs were rounded to
    (DEFAULT_RTOL). Errors are measured on the scale of the tensor's group, or of the tensor
    alone with ``per_tensor``. With ``golden`` (the record the expected arrays are), a failed
    comparison names the first diverging tensor and looks for known causes (``hints``).
    """
    expected_label, actual_label = labels
    actual = _apply_name_map(actual_label, actual, name_map or {})
    if transpose_weights:
        actual = transposed_weights(actual)
    if not set(expected) & set(actual):
        raise GoldenError(
            f"{actual_label}: holds none of the names in {expected_label} "
            "(a name map given with --map renames ACTUAL's names)"
        )
    rounded_to = None if golden is None else golden.rounded_to
    if rtol is None:
        widest = "float32" if any(v.dtype == np.float32 for v in expected.values()) else "float64"
        rtol = DEFAULT_RTOL[rounded_to or widest]
    if rtol < 0 or atol < 0:
        raise GoldenError("rtol and atol must be >= 0")

    def recompare(
        reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray] | None = None
    ) -> list[TensorResult]:
        scales = _scales(reference, per_tensor)
        candidate = actual if candidate is None else candidate
        return [
            _compare_tensor(
                name, value, candidate.get(name), scales[name], rtol, atol, any_float=rounded_to is not None
            )
            for name, value in reference.items()
        ]

    results = recompare(expected)
    extra = [name for name in actual if name not in expected]
    comparison = Comparison(expected_label, actual_label, rtol, atol, require_all, per_tensor, results, extra)
    if golden is not None and not comparison.ok:
        comparison.first_failing, comparison.first_failing_note = first_failing(golden, results)
        comparison.hints = hints.diagnose(golden, results, actual, recompare)
    return comparison


def transposed_weights(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with the 2-D weight matrices transposed (parameters and gradients alike)."""
    return {name: (value.T if value.ndim == 2 and is_weight_matrix(name) else value) for name, value in arrays.items()}


def first_failing(golden: Golden, results: list[TensorResult]) -> tuple[str | None, str | None]:
    """(name, note): the tensor where ACTUAL first diverges, the forward in layer order (the
    hidden states, then y and the loss), else the gradients in the order the backward pass
    computes them; and what that says about where the port differs."""
    failing = {r.name for r in results if r.status not in ("ok", "missing")}
    forward = [r.name for r in results if r.name.startswith("hidden/")] + ["y", "loss"]
    given = {r.name for r in results if r.status != "missing"}
    summary = get_scheme(golden.config.scheme).SUMMARY
    for name in forward:
        if name not in failing:
            continue
        earlier = [n for n in forward[: forward.index(name)] if n.startswith("hidden/")]
        agree = bool(earlier) and all(n in given for n in earlier)
        if name.startswith("hidden/"):
            layer = int(name.split("/")[1])
            if layer == 0:
                return name, f"the state entering layer 0: the stack's embedding stage differs ({summary})"
            where = f"a state entering layer {layer}, the output of layer {layer - 1}"
            if not agree:
                return name, f"{where}; the states before it were not all given"
            return name, f"{where}; every state before it agrees, so layer {layer - 1} itself differs from {summary}"
        if not earlier or not agree:
            return name, "no hidden states given: give hidden/<l>/<stream> to find the first diverging layer"
        return name, f"every hidden state agrees, so the readout after the last layer differs from {summary}"
    for name in [r.name for r in reversed(results) if r.name.startswith("grads/")]:
        if name in failing and name not in ("grads/input", "grads/memory"):
            return name, "the forward agrees; the first gradient that differs in the order the backward computes them"
    for name in ("grads/input", "grads/memory"):
        if name in failing:
            return name, "the forward and every parameter gradient given agree"
    return None, None


def _scales(expected: dict[str, np.ndarray], per_tensor: bool) -> dict[str, float]:
    own = {name: float(np.max(np.abs(value))) if value.size else 0.0 for name, value in expected.items()}
    if per_tensor:
        return own
    group_max: dict[str, float] = {}
    for name, value in own.items():
        group = group_of(name)
        group_max[group] = max(group_max.get(group, 0.0), value)
    return {name: group_max[group_of(name)] for name in expected}


def _check_plain_expected(path: str, arrays: dict[str, np.ndarray]) -> None:
    if not arrays:
        raise GoldenError(f"{path}: holds no arrays")
    for name, value in arrays.items():
        if value.dtype not in (np.float32, np.float64):
            raise GoldenError(f"{path}: {name} has dtype {value.dtype}; expected arrays must be float32 or float64")
        if not np.isfinite(value).all():
            raise GoldenError(f"{path}: {name} contains NaN or inf")


def _apply_name_map(path: str, arrays: dict[str, np.ndarray], name_map: dict[str, str]) -> dict[str, np.ndarray]:
    renamed: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        target = name_map.get(name, name)
        if target in renamed:
            raise GoldenError(f"{path}: two arrays map to the expected name {target!r}")
        renamed[target] = value
    return renamed


def _compare_tensor(
    name: str,
    expected: np.ndarray,
    actual: np.ndarray | None,
    scale: float,
    rtol: float,
    atol: float,
    any_float: bool = False,
) -> TensorResult:
    result = TensorResult(name, "missing", tuple(expected.shape), str(expected.dtype))
    if actual is None:
        return result
    result.actual_shape, result.actual_dtype = tuple(actual.shape), str(actual.dtype)
    numeric = actual.dtype.kind in "fiu"
    if actual.shape != expected.shape or not numeric:
        result.status = "shape" if actual.shape != expected.shape else "dtype"
        return result
    e = expected.astype(np.float64)
    a = actual.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        errors = np.abs(a - e)
        abs_error = float(np.max(errors)) if e.size else 0.0
        beyond = ~(errors <= atol + rtol * scale)
    tiny = float(np.finfo(expected.dtype).tiny)
    result.max_abs_error = abs_error
    result.max_rel_error = abs_error / max(scale, tiny)
    result.max_abs_expected = float(np.max(np.abs(e))) if e.size else 0.0
    result.scale = scale
    if e.size:
        worst = np.unravel_index(int(np.argmax(np.where(np.isnan(errors), np.inf, errors))), e.shape)
        result.worst_index = tuple(int(i) for i in worst)
        result.actual_at_worst, result.expected_at_worst = float(a[worst]), float(e[worst])
        result.mismatched = float(np.mean(beyond))
    same_dtype = actual.dtype == expected.dtype or (any_float and actual.dtype.kind == "f")
    if not np.isfinite(actual).all():
        result.status = "nonfinite"
    elif not same_dtype:
        result.status = "dtype"
    elif abs_error <= atol + rtol * scale:
        result.status = "ok"
    else:
        result.status = "FAIL"
    return result


def _percent(fraction: float | None) -> str:
    if fraction is None:
        return "-"
    return f"{100 * fraction:.3g}%" if fraction >= 1e-3 else f"{100 * fraction:.2g}%"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite errors become null (the status says nonfinite)."""
    return {
        key: (None if isinstance(value, float) and not math.isfinite(value) else value) for key, value in record.items()
    }
