"""The primitives that mix streams: a weighted sum of same-shaped arrays (the learned
averages over layers of DLCL and DenseFormer, the width connections of hyper-connections),
m such sums of n streams and one more term at once (their depth connections), and the
Sinkhorn-Knopp rounds over square matrices that keep mHC's mixing doubly stochastic, each
forward beside its VJP over a kernel twin.

They are primitives like those of ``ops.py``, which re-exports them (``ops.weighted_sum``,
``ops.mix_streams``, ``ops.sinkhorn``); they live here to keep each file short.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lnref.autograd import kernels
from lnref.autograd.checks import check_float, kernel_error, plain_float_arrays, shapes, unbroadcast
from lnref.autograd.primitive import defprimitive

Residuals = Any
Cotangents = tuple[Any, ...]


def _sinkhorn_fwd(logits: Any, *, iterations: int) -> tuple[Any, Residuals]:
    """Sinkhorn-Knopp over the last two axes of ``logits`` (..., n, n): M_0 = exp(logits), then
    ``iterations`` rounds of dividing each row by its sum and then each column by its sum:

        R_k = M_{k-1} / rowsum(M_{k-1}),   M_k = R_k / colsum(R_k),   k = 1..K;   output M_K

    Backward: the derivative of those K rounds (not of the exact projection). Each division
    y = x / s by the sums s of x over a row (or a column) passes back
        dx = (dy - sum(dy * y)) / s        (the sum over that row, or column)
    through the rounds from K down to 1, and at last dlogits = dM_0 * M_0.
    """
    shape = np.shape(logits)
    if len(shape) < 2:
        raise ValueError(f"sinkhorn: logits must be square in their last two axes (..., n, n), got shape {shape}")
    try:
        m, exp_logits = kernels.sinkhorn_forward(np.reshape(logits, (math.prod(shape[:-2]), *shape[-2:])), iterations)
    except (TypeError, ValueError) as error:
        raise kernel_error("sinkhorn", error, logits) from None
    return m.reshape(shape), (exp_logits, iterations)


def _sinkhorn_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    exp_logits, iterations = residuals
    dlogits = kernels.sinkhorn_backward(dout.reshape(exp_logits.shape), exp_logits, iterations)
    return (dlogits.reshape(dout.shape),)


sinkhorn = defprimitive("sinkhorn", _sinkhorn_fwd, _sinkhorn_vjp)


def _streams(xs: tuple[Any, ...], stacked: bool) -> Any:
    """The streams given as separate arrays, or as the rows of the one array ``xs[0]``."""
    if not stacked:
        return xs
    if len(xs) != 1 or np.ndim(xs[0]) < 2:
        raise ValueError(
            f"stacked streams are one array (n, ..., d), got {len(xs)} of shapes {[np.shape(x) for x in xs]}"
        )
    return np.asarray(xs[0])


def _per_stream(dxs: np.ndarray, stacked: bool) -> tuple[np.ndarray, ...]:
    return (dxs,) if stacked else tuple(dxs)


def _weighted_sum_fwd(weights: np.ndarray, *xs: np.ndarray, stacked: bool = False) -> tuple[np.ndarray, Residuals]:
    """sum_k w_k x_k, the terms added in order: ``weights`` (k,), one per term, or (..., k),
    one mixture per row of the terms ``xs`` (..., d); with ``stacked=True`` the terms are the
    rows of one array (k, ..., d). One primitive where a loop of products and sums would be 2k
    (a stream mixture's cost is its number of terms, not of primitives).

    VJP: dx_k = w_k dy,   dw_k = sum of dy * x_k over the features (and the rows, for (k,))
    """
    try:
        y, kept = kernels.weighted_sum_forward(weights, _streams(xs, stacked))
    except (TypeError, ValueError) as error:
        raise kernel_error("weighted_sum", error, weights, *xs) from None
    return y, (kept, np.shape(weights), stacked)


def weighted_sum_vjp_rows(dout: np.ndarray, residuals: Residuals) -> tuple[np.ndarray, np.ndarray]:
    """The VJP of :func:`weighted_sum`, ``(dweights, dxs)``, with the terms' cotangents the
    rows of one new array ``dxs`` (k, ..., d), however the terms were given."""
    kept, weights_shape, _ = residuals
    return kernels.weighted_sum_backward(dout, kept, weights_shape)


def _weighted_sum_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    dweights, dxs = weighted_sum_vjp_rows(dout, residuals)
    return (dweights, *_per_stream(dxs, residuals[2]))


weighted_sum = defprimitive("weighted_sum", _weighted_sum_fwd, _weighted_sum_vjp)


def _mix_streams_fwd(
    a: np.ndarray, b: np.ndarray, s: np.ndarray, *xs: np.ndarray, stacked: bool = False, transpose: bool = False
) -> tuple[np.ndarray, Residuals]:
    """m mixtures of the streams ``xs`` and of one more term ``s`` (all (..., d)), the weights
    the columns of ``a`` (n, m) and ``b`` (m,), or of one of each per row, (..., n, m) and
    (..., m), all m stacked, (m, ..., d):

        y_c = sum_i a[i, c] x_i + b[c] s        (added in this order), c = 0..m-1

    With ``stacked=True`` the streams are the rows of one array (n, ..., d); with
    ``transpose=True`` the weights are a's rows, ``a`` (m, n): y_c = sum_i a[c, i] x_i + b[c] s
    (y = a x + b s over the stream axis). One primitive where m weighted sums would each take
    and give back every stream.

    VJP: dx_i = sum_c a[i, c] dy_c,  ds = sum_c b[c] dy_c,  da[i, c] = sum of dy_c * x_i,
    db[c] = sum of dy_c * s (over the features, and over the rows for a shared a and b)
    """
    try:
        weights = np.swapaxes(a, -1, -2) if transpose else a
        y, kept = kernels.mix_streams_forward(weights, b, s, _streams(xs, stacked))
    except (TypeError, ValueError) as error:
        raise kernel_error("mix_streams", error, a, b, s, *xs) from None
    return y, (kept, stacked, transpose)


def _mix_streams_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    kept, stacked, transpose = residuals
    da, db, ds, dxs = kernels.mix_streams_backward(dout, kept)
    if transpose:
        da = np.ascontiguousarray(np.swapaxes(da, -1, -2))
    return (da, db, ds, *_per_stream(dxs, stacked))


mix_streams = defprimitive("mix_streams", _mix_streams_fwd, _mix_streams_vjp)


def _scaled_linear_fwd(
    x: np.ndarray, w: np.ndarray, alpha: Any, b: np.ndarray, *, activation: str | None = None, gain: float = 1.0
) -> tuple[np.ndarray, Residuals]:
    """alpha (x w) + b: ``x`` (..., p), ``w`` (p, q), ``alpha`` a scalar, ``b`` q entries (a
    vector, or a matrix whose entries in row order are the q outputs): the gated maps that
    give a stream mixture's weights from the streams. With ``activation="sigmoid"``, gain
    sigmoid(alpha (x w) + b). One primitive where a product, a scaling, a sum (and a sigmoid
    and a product) would be three (or five), with their bits.

    VJP: with z = x w, a = alpha z + b and da = dy (or gain sigma'(a) dy, sigma' = sigma (1 -
    sigma)):  dx = alpha da w^T,  dw = x^T (alpha da) over all rows,  dalpha = sum(da * z),
    db = da summed over the rows
    """
    if activation not in (None, "sigmoid") or (activation is None and gain != 1.0):
        raise ValueError(
            f"scaled_linear: activation must be None or 'sigmoid' (a gain goes with it), got {activation!r}"
        )
    if not plain_float_arrays(x, w, alpha, b):
        check_float("scaled_linear", x, w, alpha, b)  # a Python number takes the arrays' dtype
        dtype = next((a.dtype for a in (x, w, alpha, b) if isinstance(a, (np.ndarray, np.floating))), np.float64)
        x, w, alpha, b = (np.asarray(a, dtype) for a in (x, w, alpha, b))
    try:
        return kernels.scaled_linear_forward(x, w, alpha, b, activation == "sigmoid", float(gain))
    except (TypeError, ValueError) as error:
        raise kernel_error("scaled_linear", error, x, w, alpha, b) from None


def _scaled_linear_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    return kernels.scaled_linear_backward(dout, residuals)


scaled_linear = defprimitive("scaled_linear", _scaled_linear_fwd, _scaled_linear_vjp)


def _scaled_tanh_fwd(x: np.ndarray, scale: Any, shift: Any) -> tuple[np.ndarray, Residuals]:
    """scale tanh(x) + shift, ``scale`` and ``shift`` broadcast against ``x`` (a scalar gain and
    a static weight, say): the gated form of the dynamic connections of hyper-connections,
    s tanh(H_bar W) + A. One primitive where tanh, a product and a sum would be three, with
    their bits.

    VJP: with t = tanh(x):  dx = scale (1 - t^2) dy,  dscale = dy t and dshift = dy, each
    summed over the axes its broadcast added or stretched
    """
    check_float("scaled_tanh", x, scale, shift)
    try:
        t = np.tanh(x)
        out = np.asarray(scale * t + shift)
    except ValueError:
        raise ValueError(f"scaled_tanh: shapes {shapes(x, scale, shift)} do not broadcast") from None
    if out.shape != np.shape(x):
        raise ValueError(
            f"scaled_tanh: scale and shift of shapes {shapes(scale, shift)} widen x of shape {np.shape(x)}"
        )
    return out, (t, scale, np.shape(scale), np.shape(shift))


def _scaled_tanh_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    t, scale, scale_shape, shift_shape = residuals
    dscaled = dout * t
    return (
        scale * (dout * (1 - t * t)),
        unbroadcast(dscaled, scale_shape).reshape(scale_shape),
        unbroadcast(dout, shift_shape).reshape(shift_shape),
    )


scaled_tanh = defprimitive("scaled_tanh", _scaled_tanh_fwd, _scaled_tanh_vjp)
