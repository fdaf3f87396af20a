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
from lnref.golden.load import load_golden

# Default rtol by dtype: well above the round-off by which two correct implementations differ,
# well below what a real discrepancy moves (the measurements: docs/golden-format.md).
DEFAULT_RTOL = {"float64": 1e-10, "float32": 1e-3}
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
            "hints": self.hints,
            "passed": self.passed,
            "failed": self.failed,
            "ok": self.ok,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_text(self) -> str:
        compared = [r for r in self.results if r.compared]
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
        missing = self.missing
        if missing:
            verdict = "failures" if self.require_all else "not compared"
            lines.append(f"missing in ACTUAL ({verdict}): {len(missing)}: {first_names(missing, 8)}")
        if self.extra:
            lines.append(f"extra in ACTUAL (not compared): {len(self.extra)}: {first_names(self.extra, 8)}")
        lines.extend(f"hint: {hint}" for hint in self.hints)
        lines.append(f"{self.passed} passed, {self.failed} failed")
        return "\n".join(lines)


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
    possibly a subset; ``name_map`` renames ACTUAL's names to EXPECTED's, then
    ``transpose_weights`` transposes ACTUAL's 2-D weight matrices (a framework that stores
    (d_out, d_in)). ``rtol`` defaults by EXPECTED's dtype (DEFAULT_RTOL). Errors are
    measured on the scale of the tensor's group, or of the tensor alone with ``per_tensor``.
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
    actual = _apply_name_map(actual_path, actual, name_map or {})
    if transpose_weights:
        actual = {
            name: (value.T if value.ndim == 2 and is_weight_matrix(name) else value) for name, value in actual.items()
        }
    if not set(expected) & set(actual):
        raise GoldenError(
            f"{actual_path}: holds none of the names in {expected_path} "
            "(a name map given with --map renames ACTUAL's names)"
        )
    if rtol is None:
        widest = "float32" if any(v.dtype == np.float32 for v in expected.values()) else "float64"
        rtol = DEFAULT_RTOL[widest]
    if rtol < 0 or atol < 0:
        raise GoldenError("rtol and atol must be >= 0")

    def compare_with(reference: dict[str, np.ndarray]) -> list[TensorResult]:
        scales = _scales(reference, per_tensor)
        return [
            _compare_tensor(name, value, actual.get(name), scales[name], rtol, atol)
            for name, value in reference.items()
        ]

    results = compare_with(expected)
    extra = [name for name in actual if name not in expected]
    found = [] if golden is None else [hints.gelu_flavour(golden, results, compare_with)]
    said = [hint for hint in found if hint is not None]
    return Comparison(expected_path, actual_path, rtol, atol, require_all, per_tensor, results, extra, said)


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
    name: str, expected: np.ndarray, actual: np.ndarray | None, scale: float, rtol: float, atol: float
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
        abs_error = float(np.max(np.abs(a - e))) if e.size else 0.0
    tiny = float(np.finfo(expected.dtype).tiny)
    result.max_abs_error = abs_error
    result.max_rel_error = abs_error / max(scale, tiny)
    result.max_abs_expected = float(np.max(np.abs(e))) if e.size else 0.0
    result.scale = scale
    if not np.isfinite(actual).all():
        result.status = "nonfinite"
    elif actual.dtype != expected.dtype:
        result.status = "dtype"
    elif abs_error <= atol + rtol * scale:
        result.status = "ok"
    else:
        result.status = "FAIL"
    return result


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite errors become null (the status says nonfinite)."""
    return {
        key: (None if isinstance(value, float) and not math.isfinite(value) else value) for key, value in record.items()
    }
