"""The normalization primitives: LayerNorm and RMSNorm, the statistics-free DyT and Derf,
ScaleNorm and L2 normalization, each forward beside its VJP over a kernel twin.

They are primitives like those of ``ops.py``, which re-exports them (``ops.layer_norm``); they
live here to keep each file short. The norm kinds of ``lnref/norms.py`` apply them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lnref.autograd import kernels
from lnref.autograd.checks import (
    check_eps,
    check_float,
    kernel_error,
)
from lnref.autograd.primitive import defprimitive

Residuals = Any
Cotangents = tuple[Any, ...]

# ----- normalization ------------------------------------------------------------------


def _rows(op: str, x: Any) -> np.ndarray:
    """x (..., d) as a (rows, d) view (a copy only if x is not contiguous)."""
    if np.ndim(x) < 1:
        raise ValueError(f"{op}: x must have at least one axis, got shape {np.shape(x)}")
    return np.reshape(x, (-1, np.shape(x)[-1]))


def _layer_norm_fwd(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, eps: float = 1e-5) -> tuple[Any, Any]:
    """LayerNorm over the last axis: y = gamma * (x - mu) / sigma + beta, sigma = sqrt(var + eps).

    Backward, with x_hat = (x - mu) / sigma and g = dy * gamma (means over the last axis):
        dx     = (1/sigma) (g - mean(g) - x_hat * mean(g * x_hat))
        dgamma = sum over rows of dy * x_hat,     dbeta = sum over rows of dy
    The two subtracted means are the projections out of the constant direction (the mean
    was removed) and out of x_hat itself (the scale was removed).
    """
    if not 0 < eps < math.inf:  # (False for NaN too)
        check_eps("layer_norm", eps, x)
    rows = x.reshape(-1, x.shape[-1]) if type(x) is np.ndarray and x.ndim else _rows("layer_norm", x)
    try:
        y, mu, rstd = kernels.layer_norm_forward(rows, gamma, beta, eps)
    except (TypeError, ValueError) as error:
        raise kernel_error("layer_norm", error, x, gamma, beta) from None
    return y.reshape(x.shape), (rows, gamma, mu, rstd)


def _layer_norm_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    rows, gamma, mu, rstd = residuals
    dx, dgamma, dbeta = kernels.layer_norm_backward(
        dout.reshape(rows.shape), rows, gamma, mu, rstd, residuals_checked=True
    )
    return dx.reshape(dout.shape), dgamma, dbeta


layer_norm = defprimitive("layer_norm", _layer_norm_fwd, _layer_norm_vjp)


def _rms_norm_fwd(x: np.ndarray, gamma: np.ndarray, *, eps: float = 1e-5) -> tuple[Any, Any]:
    """RMSNorm: y = gamma * x / r, r = sqrt(mean(x^2) + eps).

    Backward, with x_hat = x / r and g = dy * gamma:
        dx = (1/r) (g - x_hat * mean(g * x_hat)),   dgamma = sum over rows of dy * x_hat
    (LayerNorm's backward without the mean-removal term.)
    """
    check_eps("rms_norm", eps, x)
    rows = _rows("rms_norm", x)
    try:
        y, rrms = kernels.rms_norm_forward(rows, gamma, eps)
    except (TypeError, ValueError) as error:
        raise kernel_error("rms_norm", error, x, gamma) from None
    return y.reshape(np.shape(x)), (rows, gamma, rrms)


def _rms_norm_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    rows, gamma, rrms = residuals
    dx, dgamma = kernels.rms_norm_backward(dout.reshape(rows.shape), rows, gamma, rrms, residuals_checked=True)
    return dx.reshape(dout.shape), dgamma


rms_norm = defprimitive("rms_norm", _rms_norm_fwd, _rms_norm_vjp)


# ----- norms without statistics, and L2 normalization ---------------------------------


def _dyt_fwd(x: np.ndarray, alpha: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> tuple[Any, Any]:
    """DyT (Zhu et al. 2025) over the last axis: y = gamma * tanh(alpha x) + beta, alpha a scalar.

    Backward, with t = tanh(alpha x) and g = dy * gamma:
        dx = alpha g (1 - t^2),      dalpha = sum over every element of g (1 - t^2) x
        dgamma = sum over rows of dy * t,   dbeta = sum over rows of dy
    """
    rows = _rows("dyt", x)
    try:
        y = kernels.dyt_forward(rows, alpha, gamma, beta)
    except (TypeError, ValueError) as error:
        raise kernel_error("dyt", error, x, alpha, gamma, beta) from None
    return y.reshape(np.shape(x)), (rows, alpha, gamma)


def _dyt_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    rows, alpha, gamma = residuals
    dx, dalpha, dgamma, dbeta = kernels.dyt_backward(dout.reshape(rows.shape), rows, alpha, gamma)
    return dx.reshape(dout.shape), dalpha, dgamma, dbeta


dyt = defprimitive("dyt", _dyt_fwd, _dyt_vjp)


def _derf_fwd(
    x: np.ndarray, alpha: np.ndarray, shift: np.ndarray, gamma: np.ndarray, beta: np.ndarray
) -> tuple[Any, Any]:
    """Derf (Chen et al. 2025) over the last axis: y = gamma * erf(alpha x + s) + beta, alpha
    and s scalars.

    Backward, with z = alpha x + s, g = dy * gamma and erf'(z) = 2/sqrt(pi) exp(-z^2) (the
    exact derivative, whatever evaluates erf):
        dx = alpha g erf'(z),   dalpha = sum of g erf'(z) x,   ds = sum of g erf'(z)
        dgamma = sum over rows of dy * erf(z),   dbeta = sum over rows of dy
    """
    rows = _rows("derf", x)
    try:
        y = kernels.derf_forward(rows, alpha, shift, gamma, beta)
    except (TypeError, ValueError) as error:
        raise kernel_error("derf", error, x, alpha, shift, gamma, beta) from None
    return y.reshape(np.shape(x)), (rows, alpha, shift, gamma)


def _derf_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    rows, alpha, shift, gamma = residuals
    dx, dalpha, dshift, dgamma, dbeta = kernels.derf_backward(dout.reshape(rows.shape), rows, alpha, shift, gamma)
    return dx.reshape(dout.shape), dalpha, dshift, dgamma, dbeta


derf = defprimitive("derf", _derf_fwd, _derf_vjp)


def _scale_norm_fwd(x: np.ndarray, g: np.ndarray, *, eps: float = 1e-5) -> tuple[Any, Any]:
    """ScaleNorm (Nguyen and Salazar 2019) over the last axis: y = g x / max(||x||, eps), g a
    scalar.

    Backward, with r = max(||x||, eps), x_hat = x / r and p = <dy, x_hat>:
        dx = (g/r) (dy - x_hat p) on the sphere (||x|| >= eps), (g/r) dy where the clamp
        holds r at eps (there the map is linear);   dg = sum over rows of p
    """
    check_eps("scale_norm", eps, x)
    rows = _rows("scale_norm", x)
    try:
        y, norm = kernels.scale_norm_forward(rows, g, eps)
    except (TypeError, ValueError) as error:
        raise kernel_error("scale_norm", error, x, g) from None
    return y.reshape(np.shape(x)), (rows, g, norm, eps)


def _scale_norm_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    rows, g, norm, eps = residuals
    dx, dg = kernels.scale_norm_backward(dout.reshape(rows.shape), rows, g, norm, eps)
    return dx.reshape(dout.shape), dg


scale_norm = defprimitive("scale_norm", _scale_norm_fwd, _scale_norm_vjp)


def _l2_normalize_fwd(x: np.ndarray) -> tuple[Any, Any]:
    """x / ||x|| over the last axis. The zero vector has no direction: a row whose norm is 0
    (or underflows to 0) is refused with a ValueError, never divided by an eps.

    Backward, with y = x / ||x||: dx = (dy - y <y, dy>) / ||x||, dy with its radial part
    removed (ScaleNorm's kernels at g = 1, whose clamp no accepted row reaches).
    """
    rows = _rows("l2_normalize", x)
    check_float("l2_normalize", rows)
    one, tiny = np.ones((), rows.dtype), float(np.finfo(rows.dtype).tiny)
    try:
        y, norm = kernels.scale_norm_forward(rows, one, tiny)
    except (TypeError, ValueError) as error:
        raise kernel_error("l2_normalize", error, x) from None
    if not (norm >= tiny).all():
        raise ValueError(
            f"l2_normalize: a vector of norm 0 has no direction ({int((norm < tiny).sum())} of the "
            f"{len(norm)} rows of x of shape {np.shape(x)})"
        )
    return y.reshape(np.shape(x)), (rows, one, norm, tiny)


def _l2_normalize_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    rows, one, norm, tiny = residuals
    dx, _ = kernels.scale_norm_backward(dout.reshape(rows.shape), rows, one, norm, tiny)
    return (dx.reshape(dout.shape),)


l2_normalize = defprimitive("l2_normalize", _l2_normalize_fwd, _l2_normalize_vjp)
