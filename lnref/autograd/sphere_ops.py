"""A step on the unit sphere as one primitive: the normalized interpolation from one direction
towards another at a learned rate per feature (nGPT's update of its stream), forward beside
its VJP over a kernel twin (``kernels/sphere.py``).

A primitive like those of ``ops.py``, which re-exports it (``ops.normalized_lerp``); it lives
here to keep each file short.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lnref.autograd import kernels
from lnref.autograd.checks import kernel_error
from lnref.autograd.primitive import defprimitive


def _normalized_lerp_fwd(a: Any, b: Any, rate: Any, *, rate_scale: float = 1.0) -> tuple[Any, Any]:
    """||  ||a|| + |c t| (||b|| - ||a||)  ||  over the last axis, ||.|| the L2 normalization
    x / ||x|| (``ops.l2_normalize``), t = ``rate`` (d,) and c = ``rate_scale`` a constant:
    a step from the direction of ``a`` (..., d) towards that of ``b`` (..., d), each feature at
    its own non-negative rate |c t|, back onto the sphere. A zero row of ``a`` or ``b``, or a
    step that lands on 0, has no direction and is refused with a ValueError.

    VJP, with u = ||a||, v = ||b||, w = |c t|, m = u + w (v - u), y = m / |m|:
        dm = (dy - y <y, dy>) / |m|
        dt = c sign(c t) * (sum over rows of dm * (v - u))
        du = dm - w dm,   dv = w dm
        da = (du - u <u, du>) / |a|,   db = (dv - v <v, dv>) / |b|
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim < 1 or b.shape != a.shape:
        raise ValueError(f"normalized_lerp: a and b must be of one shape (..., d), got {a.shape} and {b.shape}")
    try:
        rows_a, rows_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, a.shape[-1])
        y, norms = kernels.normalized_lerp_forward(rows_a, rows_b, rate, rate_scale)
    except (TypeError, ValueError) as error:
        raise kernel_error("normalized_lerp", error, a, b, rate) from None
    return y.reshape(a.shape), (rows_a, rows_b, rate, rate_scale, norms)


def _normalized_lerp_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    da, db, drate = kernels.normalized_lerp_backward(dout.reshape(residuals[0].shape), *residuals)
    return da.reshape(dout.shape), db.reshape(dout.shape), drate


normalized_lerp = defprimitive("normalized_lerp", _normalized_lerp_fwd, _normalized_lerp_vjp)
