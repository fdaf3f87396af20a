"""``assert_matches``: a port's arrays against a golden record, as an assertion of one's own test.

The rule is ``lnref compare``'s (docs/golden-format.md): a tensor passes when
max|a - e| <= atol + rtol * scale, scale the largest |e| of its group (names equal up to the
last "."); rtol by the record's dtype (float64 1e-10, float32 1e-3) or by the low precision its
inputs were rounded to. A failure raises AssertionError with the comparison table, where each
failing tensor is worst and how much of it fails, the first diverging tensor in layer order,
and the hints of ``lnref.golden.hints`` (another eps, untransposed weights, a final norm
missing, doubled or inside the loop, the other GELU flavour).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from lnref.golden.compare import Comparison, compare_arrays
from lnref.golden.load import Golden, load_golden


def assert_matches(
    actual: Mapping[str, Any],
    expected: Golden | str | os.PathLike[str],
    *,
    name_map: Mapping[str, str] | None = None,
    transpose_weights: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
) -> Comparison:
    """Assert that ``actual`` agrees with the golden record ``expected``; returns the comparison.

    ``actual`` maps names to arrays (NumPy, PyTorch tensors, JAX arrays, numbers): any subset
    of the record's names, ``y``, ``loss``, ``grads/<param>``, ``grads/input``,
    ``hidden/<layer>/<stream>`` (give the hidden states to be told the first diverging layer).
    ``expected`` is a record (:func:`lnref.testing.golden`) or a golden file's path.
    ``name_map`` renames actual names to the record's; ``transpose_weights`` transposes the 2-D
    weight matrices of ``actual`` (a framework storing (d_out, d_in)).
    """
    record = expected if isinstance(expected, Golden) else load_golden(expected)
    arrays = {(name_map or {}).get(name, name): as_numpy(value) for name, value in actual.items()}
    # The inputs and parameters are compared only when the port gives them back.
    compared = {name: value for name, value in record.arrays.items() if _is_output(name) or name in arrays}
    comparison = compare_arrays(
        compared,
        arrays,
        golden=record,
        labels=(record.path, "the port"),
        rtol=rtol,
        atol=0.0 if atol is None else atol,
        transpose_weights=transpose_weights,
    )
    if not comparison.ok:
        raise AssertionError(failure_message(comparison))
    return comparison


def failure_message(comparison: Comparison) -> str:
    """The first diverging tensor, the hints, then the report of the tensors that failed."""
    failed = comparison.failed
    lines = [f"{failed} of {failed + comparison.passed} tensors differ from {comparison.expected_path}"]
    if comparison.first_failing is not None:
        lines.append(f"first failing: {comparison.first_failing} ({comparison.first_failing_note})")
    lines.extend(f"hint: {hint}" for hint in comparison.hints)
    lines.append(comparison.to_text(failing_only=True))
    return "\n".join(lines)


def _is_output(name: str) -> bool:
    return name in ("y", "loss") or name.startswith(("grads/", "hidden/"))


def as_numpy(value: Any) -> np.ndarray:
    """A NumPy array of ``value``: a PyTorch tensor (detached, moved to the CPU, half types
    widened), a JAX array, an ml_dtypes array (bfloat16 widened to float32) or a number."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
    array = np.asarray(value)
    if array.dtype.kind not in "biufc":  # ml_dtypes' bfloat16 and the like
        array = array.astype(np.float32)
    return array
