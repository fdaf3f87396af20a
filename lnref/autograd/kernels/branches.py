"""What the fused residual branches share (``residual_normed.py``: a + S(LN(a)), and
``normed_sum.py``: LN(a + S(a))): the residual add, the loop twins that allocate for their
compiled kernels, the public kernels' input checks and their choice of path.

Both shapes keep the same arrays, so one loop twin serves each: ``first``, the norm's output
(a + S(LN(a))) or the residual sum (LN(a + S(a))), of the stream's shape, then the norm's
``mean`` and ``rstd``, then the sublayer's own residuals. Their kernels take them in the same
order, and then the kernel's own flags (``residual_normed``'s: whether the skip is added),
which a loop twin passes on as it is given them, last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import lnref.autograd.kernels as kernels
from lnref.autograd.kernels import attention_sublayer, feed_forward, linear, norms
from lnref.autograd.kernels.checks import check_fit, float_arrays
from lnref.autograd.kernels.seam import OVERRIDDEN, Twin, njit

Arrays = tuple[np.ndarray, ...]
Loops = tuple[Callable[..., Arrays], Callable[..., Arrays]]


@njit(cache=True)
def add_into(a: np.ndarray, y: np.ndarray) -> None:
    """y <- a + y, element by element (the residual add, the stream's value first)."""
    a_flat, y_flat = a.ravel(), y.ravel()
    for i in range(y_flat.size):
        y_flat[i] = a_flat[i] + y_flat[i]


def _named(loop: Callable[..., Arrays], name: str, kernel: Any) -> Callable[..., Arrays]:
    loop.__name__ = loop.__qualname__ = name
    loop.__doc__ = f"Loop twin (allocates, then runs ``{kernel.__name__}``)."
    return loop


def _twins(name: str, references: Loops, loops: Loops, kernels: Any, loop_pays_up_to: Any) -> tuple[Twin, Twin]:
    """Twins ``{name}_forward`` and ``{name}_backward``: a NumPy twin and a loop twin each."""
    forward, backward = (
        Twin(f"{name}_{way}", reference=reference, loop=_named(loop, f"_{name}_{way}_loop", kernel),
             loop_pays_up_to=loop_pays_up_to)
        for way, reference, loop, kernel in zip(("forward", "backward"), references, loops, kernels)
    )  # fmt: skip
    return forward, backward


def attention_twins(name: str, references: Loops, forward_kernel: Any, backward_kernel: Any) -> tuple[Twin, Twin]:
    """The forward and backward twins of the fused self-attention branch ``name``: its NumPy
    twins ``references``, and loop twins around its two kernels, up to the attention sublayer
    kernels' limits."""

    def forward(
        a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, n_heads: int, causal: bool,
        *flags: bool,
    ) -> Arrays:  # fmt: skip
        shape, dtype = a.shape, a.dtype
        batch, t_len, rows = shape[0], shape[1], shape[0] * shape[1]
        first, q, k, v, heads, y = (
            np.empty(shape, dtype),
            np.empty(shape, dtype),
            np.empty(shape, dtype),
            np.empty(shape, dtype),
            np.empty(shape, dtype),
            np.empty(shape, dtype),
        )
        mean, rstd = np.empty(rows, dtype), np.empty(rows, dtype)
        probs = np.zeros((batch, n_heads, t_len, t_len), dtype)
        wq, bq, wk, bk, wv, bv, wo, bo = weights
        forward_kernel(
            a, gamma, beta, eps, wq, bq, wk, bk, wv, bv, wo, bo, causal, first, mean, rstd, q, k, v, probs, heads, y,
            *flags,
        )  # fmt: skip
        return y, first, mean, rstd, q, k, v, probs, heads

    def backward(dy: np.ndarray, a: np.ndarray, gamma: np.ndarray, *kept: Any) -> Arrays:
        # kept: first, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads, then the kernel's flags
        arrays, flags = kept[:12], kept[12:]
        dtype, d = a.dtype, a.shape[-1]
        dfirst, da = np.empty(a.shape, dtype), np.empty(a.shape, dtype)
        dw, db = np.empty((4, d, d), dtype), np.empty((4, d), dtype)
        dgamma, dbeta = np.zeros(d), np.zeros(d)  # float64 accumulators, as LayerNorm's loop keeps them
        backward_kernel(dy, a, gamma, *arrays, dfirst, dw, db, da, dgamma, dbeta, *flags)
        dgamma, dbeta = dgamma.astype(dtype, copy=False), dbeta.astype(dtype, copy=False)
        return (da, dgamma, dbeta, dw[0], db[0], dw[1], db[1], dw[2], db[2], dw[3], db[3])

    return _twins(
        name, references, (forward, backward), (forward_kernel, backward_kernel), attention_sublayer.LOOP_PAYS_UP_TO
    )


def feed_forward_twins(name: str, references: Loops, forward_kernel: Any, backward_kernel: Any) -> tuple[Twin, Twin]:
    """The forward and backward twins of the fused FFN branch ``name``: its NumPy twins
    ``references``, and loop twins around its two kernels, up to the FFN kernels' limits."""

    def forward(
        a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, weights: Arrays, activation: str, *flags: bool
    ) -> Arrays:
        w1, b1, w2, b2 = weights
        dtype, rows = a.dtype, a.size // a.shape[-1]
        first, y, mean, rstd = (
            np.empty(a.shape, dtype),
            np.empty(a.shape, dtype),
            np.empty(rows, dtype),
            np.empty(rows, dtype),
        )
        hidden = np.empty((rows, w1.shape[1]), dtype)
        acted = hidden if activation == "relu" else np.empty_like(hidden)  # ReLU in place, as the FFN's loop
        code = feed_forward.FFN_CODES[activation]
        forward_kernel(a, gamma, beta, eps, w1, b1, w2, b2, code, first, mean, rstd, hidden, acted, y, *flags)
        return y, first, mean, rstd, hidden, acted

    def backward(
        dy: np.ndarray,
        a: np.ndarray,
        gamma: np.ndarray,
        first: np.ndarray,
        mean: np.ndarray,
        rstd: np.ndarray,
        w1: np.ndarray,
        w2: np.ndarray,
        hidden: np.ndarray,
        acted: np.ndarray,
        activation: str,
        *flags: bool,
    ) -> Arrays:
        dtype, d = a.dtype, a.shape[-1]
        dacted, dfirst, da = np.empty(acted.shape, dtype), np.empty(a.shape, dtype), np.empty(a.shape, dtype)
        dw1, db1 = np.empty(w1.shape, dtype), np.empty(w1.shape[1], dtype)
        dw2, db2 = np.empty(w2.shape, dtype), np.empty(w2.shape[1], dtype)
        dgamma, dbeta = np.zeros(d), np.zeros(d)  # float64 accumulators, as LayerNorm's loop keeps them
        code = feed_forward.FFN_CODES[activation]
        backward_kernel(
            dy,
            a,
            gamma,
            first,
            mean,
            rstd,
            w1,
            w2,
            hidden,
            acted,
            code,
            dacted,
            dfirst,
            dw1,
            db1,
            dw2,
            db2,
            da,
            dgamma,
            dbeta,
            *flags,
        )
        return da, dgamma.astype(dtype, copy=False), dbeta.astype(dtype, copy=False), dw1, db1, dw2, db2

    return _twins(name, references, (forward, backward), (forward_kernel, backward_kernel), linear.LOOP_PAYS_UP_TO)


# ----- the NumPy twins' input norm ---------------------------------------------------


def input_norm(a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> Arrays:
    """(LN(a) as rows, mean, rstd) through the public kernel: the NumPy twins' input norm."""
    return kernels.layer_norm_forward(a.reshape(-1, a.shape[-1]), gamma, beta, eps)


def input_norm_backward(
    dy: np.ndarray, dnormed: np.ndarray, a: np.ndarray, gamma: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
    residual: bool,
) -> Arrays:  # fmt: skip
    """(da, dgamma, dbeta) from the branch's cotangent ``dnormed`` through the public kernel, plus
    the skip's ``dy`` where the branch is added to ``a`` (``residual``)."""
    d = a.shape[-1]
    da, dgamma, dbeta = kernels.layer_norm_backward(
        dnormed.reshape(-1, d), a.reshape(-1, d), gamma, mean, rstd, residuals_checked=True
    )
    da = da.reshape(a.shape)
    return (dy + da if residual else da), dgamma, dbeta


# ----- the public kernels' checks and choice of path -------------------------------------


def checked_attention_branch(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, weights: Arrays, n_heads: int, causal: bool
) -> Arrays:
    """``(a, gamma, beta, wq, bq, wk, bk, wv, bv, wo, bo)`` as float arrays of one dtype that fit
    a self-attention branch on ``a`` (B, T, d), or an error."""
    a, gamma, beta, wq, bq, wk, bk, wv, bv, wo, bo = float_arrays(a, gamma, beta, *weights)
    check_fit(a.ndim == 3 and gamma.shape == beta.shape == a.shape[2:], "a", a, "gamma", gamma, "beta", beta)
    attention_sublayer.check_attention_sublayer_shapes(a, None, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, bool(causal))
    return a, gamma, beta, wq, bq, wk, bk, wv, bv, wo, bo


def checked_feed_forward_branch(
    a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, weights: Arrays, activation: str
) -> Arrays:
    """``(a, gamma, beta, w1, b1, w2, b2)`` as float arrays of one dtype that fit an FFN branch
    on ``a`` (B, T, d), or an error."""
    feed_forward.check_activation(activation)
    a, gamma, beta, w1, b1, w2, b2 = float_arrays(a, gamma, beta, *weights)
    d = a.shape[-1]
    fits = a.ndim == 3 and gamma.shape == beta.shape == (d,) and w1.ndim == 2 and w1.shape[0] == d
    fits = fits and b1.shape == w1.shape[1:] and w2.shape == (w1.shape[1], d) and b2.shape == (d,)
    check_fit(fits, "a", a, "gamma", gamma, "w1", w1, "b1", b1, "w2", w2, "b2", b2)
    return a, gamma, beta, w1, b1, w2, b2


def attention_work(a: np.ndarray) -> tuple[int, int]:
    """The attention sublayer's measures of work on ``a`` (B, T, d), self-attention."""
    return attention_sublayer.attention_sublayer_work(a.shape[0], a.shape[1], a.shape[1], a.shape[2])


def path(fused: Twin, parts: tuple[Twin, ...], *work: int) -> Any:
    """The implementation of ``fused`` for this much work; its NumPy twin, which calls the
    parts' public kernels, while a test or a forced path has put another implementation in the
    place of one of ``parts``: the fused loop must not run in theirs."""
    if OVERRIDDEN:  # else no part is overridden, and this, which runs on every fused call, asks none
        for part in parts:
            if part.override is not None:
                return fused.reference
    return fused.pick(*work)


# The parts a fused kernel stands for: (forward twins, backward twins).
ATTENTION_PARTS = (
    (norms.LAYER_NORM_FORWARD, attention_sublayer.ATTENTION_SUBLAYER_FORWARD),
    (norms.LAYER_NORM_BACKWARD, attention_sublayer.ATTENTION_SUBLAYER_BACKWARD),
)
FEED_FORWARD_PARTS = (
    (norms.LAYER_NORM_FORWARD, feed_forward.FEED_FORWARD_FORWARD),
    (norms.LAYER_NORM_BACKWARD, feed_forward.FEED_FORWARD_BACKWARD),
)
