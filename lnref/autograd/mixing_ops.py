"""The primitives that mix streams: a weighted sum of same-shaped arrays (the learned
averages over layers of DLCL and DenseFormer, the connections of hyper-connections) and the
Sinkhorn-Knopp rounds over square matrices that keep mHC's mixing doubly stochastic, each
forward beside its VJP over a kernel twin.

They are primitives like those of ``ops.py``, which re-exports them (``ops.weighted_sum``,
``ops.sinkhorn``); they live here to keep each file short.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lnref.autograd import kernels
from lnref.autograd.checks import kernel_error
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


def _weighted_sum_fwd(weights: np.ndarray, *xs: np.ndarray) -> tuple[np.ndarray, Residuals]:
    """sum_k w_k x_k, the terms added in order: ``weights`` (k,), one per term, or (..., k),
    one mixture per row of the terms ``xs`` (..., d). One primitive where a loop of products
    and sums would be 2k (a stream mixture's cost is its number of terms, not of primitives).

    VJP: dx_k = w_k dy,   dw_k = sum of dy * x_k over the features (and the rows, for (k,))
    """
    try:
        y, stacked = kernels.weighted_sum_forward(weights, xs)
    except (TypeError, ValueError) as error:
        raise kernel_error("weighted_sum", error, weights, *xs) from None
    return y, (weights, stacked)


def _weighted_sum_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    dweights, dxs = kernels.weighted_sum_backward(dout, *residuals)
    return (dweights, *dxs)


weighted_sum = defprimitive("weighted_sum", _weighted_sum_fwd, _weighted_sum_vjp)
