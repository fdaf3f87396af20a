"""The FFN with a LayerNorm on its hidden units (``feed_forward_normed.py``) as a residual
branch with a LayerNorm on its input, y = a + F(LN(a)), one kernel each way; with ``residual``
False, the branch alone, y = F(LN(a)).

Sub-LN's and NormFormer's FFN branch: a replayed pass fuses the norm, the FFN and the add
(``autograd/fusion.py``) as it does Pre-LN's (``residual_normed.py``). One compiled call runs
the forward and one the backward, with the composition's loops in its order (LayerNorm's rows,
the normed FFN's kernel, the add), so the fused branch and the three primitives agree to the
bit. Past the FFN's loop limit, or while another implementation stands in one of the kernels'
place, the NumPy twin runs the composition's public kernels in one call.

Arguments: ``a`` (B, T, d), the input norm's ``gamma`` and ``beta`` (d,) and ``eps``, the FFN's
weights (w1, b1, hidden_gamma, hidden_beta, w2, b2), its activation and its norm's eps. The
residuals are the input norm's output ``normed``, ``mean`` and ``rstd``, then the FFN's own;
the flag ``residual`` comes last.

    forward:   normed = LN(a),   y = a + F(normed)     (residual False: y = F(normed))
    backward:  dnormed, dW = F's VJP at dy,   da_ln, dgamma, dbeta = LN's VJP at dnormed
               da = dy + da_ln          (residual False: da = da_ln)
"""

from __future__ import annotations

from typing import Any

import numpy as np

import lnref.autograd.kernels as kernels
from lnref.autograd.kernels import feed_forward_normed, linear, norms, seam
from lnref.autograd.kernels.branches import add_into, input_norm, input_norm_backward, path
from lnref.autograd.kernels.checks import check_fit, cotangent, float_arrays
from lnref.autograd.kernels.feed_forward import FFN_CODES, check_activation
from lnref.autograd.kernels.norms import layer_norm_backward_kernel, layer_norm_forward_kernel
from lnref.autograd.kernels.seam import Twin, njit

Arrays = tuple[np.ndarray, ...]


def residual_normed_normed_feed_forward_forward_reference(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, activation: str,
    hidden_eps: float, residual: bool,
) -> Arrays:  # fmt: skip
    """NumPy twin: the three kernels in turn; ``weights`` are (w1, b1, hidden_gamma,
    hidden_beta, w2, b2); returns ``(y, normed, mean, rstd, hidden, acted, hidden_normed,
    hidden_mean, hidden_rstd)``."""
    rows, mean, rstd = input_norm(a, gamma, beta, eps)
    w1, b1, hidden_gamma, hidden_beta, w2, b2 = weights
    out, *kept = kernels.normed_feed_forward_forward(
        rows, w1, b1, hidden_gamma, hidden_beta, w2, b2, activation, hidden_eps
    )
    out = out.reshape(a.shape)
    return (a + out if residual else out), rows.reshape(a.shape), mean, rstd, *kept


def residual_normed_normed_feed_forward_backward_reference(
    dy: np.ndarray, a: np.ndarray, gamma: np.ndarray, normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
    w1: np.ndarray, hidden_gamma: np.ndarray, w2: np.ndarray, hidden: np.ndarray, acted: np.ndarray,
    hidden_normed: np.ndarray, hidden_mean: np.ndarray, hidden_rstd: np.ndarray, activation: str, residual: bool,
) -> Arrays:  # fmt: skip
    """NumPy twin; returns ``(da, dgamma, dbeta, dw1, db1, dhidden_gamma, dhidden_beta, dw2,
    db2)``."""
    d = a.shape[-1]
    dnormed, *dweights = kernels.normed_feed_forward_backward(
        dy.reshape(-1, d), normed.reshape(-1, d), w1, hidden_gamma, w2, hidden, acted, hidden_normed,
        hidden_mean, hidden_rstd, activation,
    )  # fmt: skip
    return (*input_norm_backward(dy, dnormed, a, gamma, mean, rstd, residual), *dweights)


@njit(cache=True)
def _residual_normed_normed_feed_forward_forward_kernel(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, w1: np.ndarray, b1: np.ndarray,
    hidden_gamma: np.ndarray, hidden_beta: np.ndarray, w2: np.ndarray, b2: np.ndarray, activation: int,
    hidden_eps: float, normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray, hidden: np.ndarray,
    acted: np.ndarray, hidden_normed: np.ndarray, hidden_mean: np.ndarray, hidden_rstd: np.ndarray,
    y: np.ndarray, residual: bool,
) -> None:  # fmt: skip
    rows = (mean.size, a.shape[-1])
    normed_rows = normed.reshape(rows)
    layer_norm_forward_kernel(a.reshape(rows), gamma, beta, eps, normed_rows, mean, rstd)
    feed_forward_normed._normed_feed_forward_forward_kernel(
        normed_rows, w1, b1, hidden_gamma, hidden_beta, w2, b2, activation, hidden_eps, hidden, acted,
        hidden_normed, hidden_mean, hidden_rstd, y.reshape(rows),
    )  # fmt: skip
    if residual:
        add_into(a, y)


@njit(cache=True)
def _residual_normed_normed_feed_forward_backward_kernel(
    dy: np.ndarray, a: np.ndarray, gamma: np.ndarray, normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
    w1: np.ndarray, hidden_gamma: np.ndarray, w2: np.ndarray, hidden: np.ndarray, acted: np.ndarray,
    hidden_normed: np.ndarray, hidden_mean: np.ndarray, hidden_rstd: np.ndarray, activation: int,
    dhidden_normed: np.ndarray, dacted: np.ndarray, dnormed: np.ndarray, dw1: np.ndarray, db1: np.ndarray,
    dhidden_gamma: np.ndarray, dhidden_beta: np.ndarray, dw2: np.ndarray, db2: np.ndarray, da: np.ndarray,
    dgamma: np.ndarray, dbeta: np.ndarray, residual: bool,
) -> None:  # fmt: skip
    rows = (mean.size, a.shape[-1])
    dnormed_rows = dnormed.reshape(rows)
    feed_forward_normed._normed_feed_forward_backward_kernel(
        dy.reshape(rows), normed.reshape(rows), w1, hidden_gamma, w2, hidden, acted, hidden_normed, hidden_mean,
        hidden_rstd, activation, dhidden_normed, dacted, dnormed_rows, dw1, db1, dhidden_gamma, dhidden_beta, dw2,
        db2,
    )  # fmt: skip
    layer_norm_backward_kernel(dnormed_rows, a.reshape(rows), gamma, mean, rstd, da.reshape(rows), dgamma, dbeta)
    if residual:
        add_into(dy, da)


def _residual_normed_normed_feed_forward_forward_loop(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, activation: str,
    hidden_eps: float, residual: bool,
) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_residual_normed_normed_feed_forward_forward_kernel``)."""
    w1, b1, hidden_gamma, hidden_beta, w2, b2 = weights
    dtype, n_rows, d_ff = a.dtype, a.size // a.shape[-1], w1.shape[1]
    # one np.empty each: a view taken out of a shared block costs more than an allocation
    normed, y, mean, rstd = (
        np.empty(a.shape, dtype),
        np.empty(a.shape, dtype),
        np.empty(n_rows, dtype),
        np.empty(n_rows, dtype),
    )
    hidden, hidden_normed = np.empty((n_rows, d_ff), dtype), np.empty((n_rows, d_ff), dtype)
    hidden_mean, hidden_rstd = np.empty(n_rows, dtype), np.empty(n_rows, dtype)
    acted = hidden if activation == "relu" else np.empty_like(hidden)  # ReLU in place, as the FFN's loop
    _residual_normed_normed_feed_forward_forward_kernel(
        a, gamma, beta, eps, w1, b1, hidden_gamma, hidden_beta, w2, b2, FFN_CODES[activation], hidden_eps,
        normed, mean, rstd, hidden, acted, hidden_normed, hidden_mean, hidden_rstd, y, residual,
    )  # fmt: skip
    return y, normed, mean, rstd, hidden, acted, hidden_normed, hidden_mean, hidden_rstd


def _residual_normed_normed_feed_forward_backward_loop(
    dy: np.ndarray, a: np.ndarray, gamma: np.ndarray, normed: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
    w1: np.ndarray, hidden_gamma: np.ndarray, w2: np.ndarray, hidden: np.ndarray, acted: np.ndarray,
    hidden_normed: np.ndarray, hidden_mean: np.ndarray, hidden_rstd: np.ndarray, activation: str, residual: bool,
) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_residual_normed_normed_feed_forward_backward_kernel``)."""
    dtype, d = a.dtype, a.shape[-1]
    dhidden_normed, dacted = np.empty(hidden.shape, dtype), np.empty(hidden.shape, dtype)
    dnormed, da = np.empty(a.shape, dtype), np.empty(a.shape, dtype)
    dw1, dw2 = np.empty(w1.shape, dtype), np.empty(w2.shape, dtype)
    db1, db2 = np.empty(w1.shape[1], dtype), np.empty(d, dtype)
    # float64 accumulators, as LayerNorm's loop keeps them
    dhidden_gamma, dhidden_beta, dgamma, dbeta = (
        np.zeros(hidden_gamma.size),
        np.zeros(hidden_gamma.size),
        np.zeros(d),
        np.zeros(d),
    )
    _residual_normed_normed_feed_forward_backward_kernel(
        dy, a, gamma, normed, mean, rstd, w1, hidden_gamma, w2, hidden, acted, hidden_normed, hidden_mean,
        hidden_rstd, FFN_CODES[activation], dhidden_normed, dacted, dnormed, dw1, db1, dhidden_gamma, dhidden_beta,
        dw2, db2, da, dgamma, dbeta, residual,
    )  # fmt: skip
    if dtype != dgamma.dtype:
        dgamma, dbeta, dhidden_gamma, dhidden_beta = (
            g.astype(dtype) for g in (dgamma, dbeta, dhidden_gamma, dhidden_beta)
        )
    return da, dgamma, dbeta, dw1, db1, dhidden_gamma, dhidden_beta, dw2, db2


# The loops are the normed FFN's and LayerNorm's: the FFN's limit, on the first product's work.
RESIDUAL_NORMED_NORMED_FEED_FORWARD_FORWARD = Twin(
    "residual_normed_normed_feed_forward_forward",
    reference=residual_normed_normed_feed_forward_forward_reference,
    loop=_residual_normed_normed_feed_forward_forward_loop,
    loop_pays_up_to=linear.LOOP_PAYS_UP_TO,
)
RESIDUAL_NORMED_NORMED_FEED_FORWARD_BACKWARD = Twin(
    "residual_normed_normed_feed_forward_backward",
    reference=residual_normed_normed_feed_forward_backward_reference,
    loop=_residual_normed_normed_feed_forward_backward_loop,
    loop_pays_up_to=linear.LOOP_PAYS_UP_TO,
)
NORMED_FEED_FORWARD_PARTS = (
    (norms.LAYER_NORM_FORWARD, seam.twin("normed_feed_forward_forward")),
    (norms.LAYER_NORM_BACKWARD, seam.twin("normed_feed_forward_backward")),
)


def residual_normed_normed_feed_forward_forward(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, activation: str,
    hidden_eps: float, residual: bool = True,
) -> Arrays:  # fmt: skip
    """y = a + F(LN(a)) (``residual`` False: F(LN(a))), F the FFN of ``weights`` (w1, b1,
    hidden_gamma, hidden_beta, w2, b2) with a LayerNorm of eps ``hidden_eps`` on its hidden
    units; returns ``(y, normed, mean, rstd, hidden, acted, hidden_normed, hidden_mean,
    hidden_rstd)``."""
    check_activation(activation)
    a, gamma, beta, w1, b1, hidden_gamma, hidden_beta, w2, b2 = float_arrays(a, gamma, beta, *weights)
    d = a.shape[-1] if a.ndim == 3 else -1
    fits = gamma.shape == beta.shape == (d,) and w1.ndim == 2 and w1.shape[0] == d and b2.shape == (d,)
    fits = fits and b1.shape == hidden_gamma.shape == hidden_beta.shape == w1.shape[1:]
    if not (fits and w2.shape == (w1.shape[1], d)):
        check_fit(
            False, *("a", a, "gamma", gamma, "beta", beta, "w1", w1, "b1", b1, "hidden_gamma", hidden_gamma),
            *("hidden_beta", hidden_beta, "w2", w2, "b2", b2),
        )  # fmt: skip
    forward = path(RESIDUAL_NORMED_NORMED_FEED_FORWARD_FORWARD, NORMED_FEED_FORWARD_PARTS[0], a.size // d * w1.size)
    weights = (w1, b1, hidden_gamma, hidden_beta, w2, b2)
    return forward(a, gamma, beta, float(eps), weights, activation, float(hidden_eps), bool(residual))


def residual_normed_normed_feed_forward_backward(dy: np.ndarray, a: np.ndarray, *residuals: Any) -> Arrays:
    """The VJP of :func:`residual_normed_normed_feed_forward_forward` at ``dy``, from its input
    ``a`` and residuals (``gamma, normed, mean, rstd, w1, hidden_gamma, w2, hidden, acted,
    hidden_normed, hidden_mean, hidden_rstd, activation, residual``: the forward's own,
    unchanged); returns ``(da, dgamma, dbeta, dw1, db1, dhidden_gamma, dhidden_beta, dw2, db2)``."""
    dy = cotangent(dy, a.dtype, a.shape)
    work = a.size // a.shape[-1] * residuals[4].size
    return path(RESIDUAL_NORMED_NORMED_FEED_FORWARD_BACKWARD, NORMED_FEED_FORWARD_PARTS[1], work)(dy, a, *residuals)
