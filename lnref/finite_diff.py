"""Finite differences that know their own noise: the rule every gradient check of lnref applies.

For a smooth f(t), the fourth-order central difference

    D(h) = [8 (f(h) - f(-h)) - (f(2h) - f(-2h))] / (12 h)

has truncation error O(h^4). Rounding makes each f(t) noisy with some standard deviation
sigma; D inherits sigma * sqrt(130) / (12 h). sigma is estimated from the same five values: the
fourth difference f(2h) - 4 f(h) + 6 f(0) - 4 f(-h) + f(-2h) is pure noise for a smooth f (its
smooth part is O(h^4 f'''')), with standard deviation sqrt(70) sigma. A comparison passes when

    |analytic - numeric| <= atol + rtol * |numeric| + 10 * noise,

and is *unresolved* (never passed) when both values lie under 10 * noise: a vanishing
derivative cannot be told from a wrong one there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

STENCIL = (-2.0, -1.0, 0.0, 1.0, 2.0)  # in units of the step h
NOISE_FACTOR = 10.0  # a difference this many noise standard deviations away is not noise
STATUSES = ("passed", "failed", "unresolved")
DEFAULTS = {  # dtype -> (step h along a unit direction, rtol)
    "float64": (1e-3, 1e-7),
    "float32": (3e-2, 1e-2),
}


def step_and_rtol(dtype: Any, step: float | None = None, rtol: float | None = None) -> tuple[float, float]:
    """``step`` and ``rtol``, each defaulting to the dtype's (:data:`DEFAULTS`)."""
    default_step, default_rtol = DEFAULTS[str(np.dtype(dtype))]
    return (default_step if step is None else step), (default_rtol if rtol is None else rtol)


def difference_from_values(values: Sequence[Any], h: float) -> tuple[Any, Any]:
    """(D, sigma) from f at the STENCIL points -2h, -h, 0, h, 2h (numbers or arrays)."""
    fm2, fm1, f0, f1, f2 = values
    derivative = (8.0 * (f1 - fm1) - (f2 - fm2)) / (12.0 * h)
    fourth = f2 - 4.0 * f1 + 6.0 * f0 - 4.0 * fm1 + fm2
    return derivative, abs(fourth) / math.sqrt(70.0)


def central_difference(f: Callable[[float], Any], h: float, f0: Any = None) -> tuple[Any, Any]:
    """(D, sigma): the fourth-order central difference of ``f`` at 0 and the estimated noise
    of f (``f0``, f(0), is evaluated unless given)."""
    values = [f0 if t == 0.0 and f0 is not None else f(t * h) for t in STENCIL]
    return difference_from_values(values, h)


def judge(analytic: Any, numeric: Any, sigma: Any, h: float, rtol: float, atol: float) -> tuple[Any, Any, Any]:
    """(noise, tolerance, status) for analytic/numeric pairs, numbers or arrays; ``status``
    holds indices into STATUSES. Failed beyond atol + rtol |numeric| + 10 noise (or not
    finite), unresolved when both values lie under 10 noise, else passed."""
    analytic, numeric = np.asarray(analytic, dtype=float), np.asarray(numeric, dtype=float)
    noise = np.asarray(sigma, dtype=float) * math.sqrt(130.0) / (12.0 * h)
    floor = NOISE_FACTOR * noise
    tolerance = atol + rtol * np.abs(numeric) + floor
    with np.errstate(invalid="ignore"):
        failed = ~(np.isfinite(analytic) & np.isfinite(numeric)) | ~(np.abs(analytic - numeric) <= tolerance)
        unresolved = ~failed & (np.maximum(np.abs(analytic), np.abs(numeric)) <= floor)
    status = np.where(
        failed, STATUSES.index("failed"), np.where(unresolved, STATUSES.index("unresolved"), STATUSES.index("passed"))
    )
    return noise, tolerance, status
