"""``check_gradient``: the checker's noise-aware finite differences (``lnref.finite_diff``) for a
function and a claimed gradient of one's own, such as a port's hand-written LayerNorm backward."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from lnref.finite_diff import central_difference, step_and_rtol

if TYPE_CHECKING:
    from lnref.gradcheck.report import Check


def check_gradient(
    f: Callable[..., Any],
    grad_f: Callable[..., Any],
    *arrays: Any,
    directions: int = 3,
    seed: int = 0,
    step: float | None = None,
    rtol: float | None = None,
    atol: float = 0.0,
) -> list[Check]:
    """Assert that ``grad_f(*arrays)`` is the gradient of the scalar ``f(*arrays)``.

    ``grad_f`` returns one array per argument (one array alone for one argument), each of its
    argument's shape. Each is checked along ``directions`` seeded unit directions v: the
    claimed <grad, v> against the fourth-order central difference of t -> f(arrays + t v),
    whose noise is estimated from the same evaluations. A comparison passes when
    |claimed - numeric| <= atol + rtol |numeric| + 10 noise, and is unresolved (not passed)
    when both lie under 10 noise. The step and rtol default by dtype: float64 1e-3 and 1e-7,
    float32 3e-2 and 1e-2. To check a vector-Jacobian product ``vjp(dy, *arrays)`` of a
    function g, fix a cotangent: ``f = lambda *a: np.sum(g(*a) * dy)``,
    ``grad_f = lambda *a: vjp(dy, *a)``. Raises AssertionError naming every argument whose
    check failed or stayed unresolved; returns the comparisons otherwise.
    """
    from lnref.gradcheck.report import compare

    arrays = tuple(np.asarray(a) for a in arrays)
    if not arrays:
        raise ValueError("check_gradient: give at least one array to differentiate at")
    if any(a.dtype.kind != "f" for a in arrays):
        raise ValueError("check_gradient: the arrays must be floating point")
    claimed = grad_f(*arrays)
    claimed = (claimed,) if len(arrays) == 1 and not isinstance(claimed, (tuple, list)) else tuple(claimed)
    if len(claimed) != len(arrays):
        raise AssertionError(f"grad_f returned {len(claimed)} gradients for {len(arrays)} arguments")
    problems = []
    for i, (array, gradient) in enumerate(zip(arrays, claimed)):
        gradient = np.asarray(gradient)
        if gradient.shape != array.shape:
            problems.append(f"argument {i}: grad_f gives shape {gradient.shape}, the argument has {array.shape}")
    if problems:
        raise AssertionError("\n".join(problems))
    h, rtol = step_and_rtol(arrays[0].dtype, step, rtol)
    f0 = _scalar(f, arrays)
    floor = np.finfo(arrays[0].dtype).eps * abs(f0)
    rng = np.random.default_rng(seed)
    checks = []
    for i, (array, gradient) in enumerate(zip(arrays, claimed)):
        for k in range(directions):
            v = rng.standard_normal(array.shape)
            v = (v / max(float(np.linalg.norm(v)), 1e-300)).astype(array.dtype)

            def moved(t: float, i: int = i, v: np.ndarray = v) -> float:
                return _scalar(f, tuple(a + t * v if j == i else a for j, a in enumerate(arrays)))

            numeric, sigma = central_difference(moved, h, f0)
            analytic = float(np.sum(np.asarray(gradient, dtype=np.float64) * v))
            sigma = max(float(sigma), floor)
            checks.append(
                compare(f"argument {i}", "function", f"direction {k}", analytic, numeric, sigma, h, rtol, atol)
            )
    bad = [c for c in checks if c.status != "passed"]
    if bad:
        lines = [f"{len(bad)} of {len(checks)} directional checks did not pass (step {h:g}, rtol {rtol:g})"]
        lines += [
            f"{c.tensor} {c.probe}: {c.status}: claimed {c.analytic:.12g}, numeric {c.numeric:.12g}, "
            f"tolerance {c.tolerance:.3g} (noise {c.noise:.3g})"
            for c in bad
        ]
        if all(c.status == "unresolved" for c in bad):
            lines.append("unresolved: the derivative is under the noise of f; check at a point where it is not ~0")
        raise AssertionError("\n".join(lines))
    return checks


def _scalar(f: Callable[..., Any], arrays: tuple[np.ndarray, ...]) -> float:
    value = np.asarray(f(*arrays))
    if value.size != 1:
        raise ValueError(f"check_gradient: f must return a scalar, got shape {value.shape}")
    return float(value.reshape(()))
