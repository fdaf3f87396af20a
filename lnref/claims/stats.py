"""Statistics shared by every claim: mean and standard error over seeds, least-squares lines
with the standard error of their slope, and the pre-registered verdict rule.

The verdict rule (the same for every check, fixed before any measurement; proofs/README.md):
a check predicts that a measured value lies in an interval [lo, hi]. With m the measured
mean and se its standard error over seeds (0 for a deterministic quantity),

    holds        lo <= m <= hi, and the measurement resolves the interval (2 se <= hi - lo)
    fails        m lies more than 2 se outside [lo, hi]
    unresolved   anything else: m outside by less than 2 se, or se too large to tell
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OUTCOMES = ("holds", "fails", "unresolved")


def mean_se(samples, axis=0):
    """(mean, standard error) over ``axis``: se = std(ddof=1)/sqrt(n); NaN for one sample."""
    samples = np.asarray(samples, dtype=np.float64)
    count = samples.shape[axis]
    mean = samples.mean(axis=axis)
    if count < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, samples.std(axis=axis, ddof=1) / math.sqrt(count)


@dataclass(frozen=True)
class Line:
    """y = intercept + slope * x fitted by least squares, with the standard errors of both."""

    slope: float
    slope_se: float
    intercept: float
    intercept_se: float

    def __call__(self, x):
        return self.intercept + self.slope * np.asarray(x, dtype=np.float64)


def fit_line(x, y):
    """Ordinary least squares of y on x, with the textbook standard errors (residual variance
    over n - 2 degrees of freedom; zero when the points lie on the line, NaN for two points)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size or x.size < 2:
        raise ValueError(f"fit_line needs two or more (x, y) pairs, got {x.size} and {y.size}")
    design = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = x.size - 2
    if dof <= 0:
        return Line(float(coef[1]), float("nan"), float(coef[0]), float("nan"))
    residual = y - design @ coef
    variance = float(residual @ residual) / dof
    cov = variance * np.linalg.inv(design.T @ design)
    return Line(float(coef[1]), float(math.sqrt(cov[1, 1])), float(coef[0]), float(math.sqrt(cov[0, 0])))


def fit_loglog(x, y):
    """The exponent k of y ~ C x^k: the least-squares line of log y on log x."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("fit_loglog needs positive x and y")
    return fit_line(np.log(x), np.log(y))


def slope_over_seeds(x, per_seed_y, log_x=False, log_y=False):
    """Fit one line per seed (rows of ``per_seed_y``) and return (mean slope, its standard
    error over seeds): the spread between independent initializations, which a single fit's
    residuals would not show."""
    x = np.asarray(x, dtype=np.float64)
    rows = np.atleast_2d(np.asarray(per_seed_y, dtype=np.float64))
    xs = np.log(x) if log_x else x
    slopes = [fit_line(xs, np.log(row) if log_y else row).slope for row in rows]
    mean, se = mean_se(slopes)
    return float(mean), float(se)


def judge(value, se, lo, hi):
    """The verdict rule of the module docstring: 'holds', 'fails' or 'unresolved'."""
    if not (lo <= hi):
        raise ValueError(f"judge: empty interval [{lo}, {hi}]")
    value = float(value)
    se = 0.0 if se is None or not math.isfinite(se) else abs(float(se))
    if not math.isfinite(value):
        return "unresolved"
    if lo <= value <= hi:
        return "holds" if 2 * se <= hi - lo else "unresolved"
    distance = lo - value if value < lo else value - hi
    return "fails" if distance > 2 * se else "unresolved"
