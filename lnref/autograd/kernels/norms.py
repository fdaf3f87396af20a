"""LayerNorm and RMSNorm over the last axis of rows ``x`` (n, d): twins and public kernels.

Rows are independent; the caller reshapes leading dimensions away. Both norms raise
``ValueError`` on a row holding NaN or inf (:data:`NONFINITE_ROWS`).
"""

from __future__ import annotations

import math

import numpy as np

from lnref.autograd.kernels.checks import check_fit, check_rows, cotangent, float_arrays, plain_arrays
from lnref.autograd.kernels.seam import Twin, njit

# A NaN or inf anywhere in a row makes that row's mean (LayerNorm) or mean square
# (RMSNorm) NaN or inf: the norm kernels test these n numbers, which costs nothing next
# to a separate pass over x, and raise this. (A finite row whose sum overflows raises too.)
NONFINITE_ROWS = "x holds NaN or inf (a row's mean or mean square is not finite)"


# ----- LayerNorm ------------------------------------------------------------------------


def layer_norm_forward_reference(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm over the last axis of ``x`` (n, d); NumPy twin.

    Forward::

        mean  = (1/d) sum_j x_j
        var   = (1/d) sum_j (x_j - mean)^2          (population variance)
        rstd  = 1 / sqrt(var + eps)
        x_hat = (x - mean) * rstd
        y     = x_hat * gamma + beta

    The variance is the mean of squared deviations (two passes), never
    ``E[x^2] - E[x]^2``, which cancels catastrophically for rows with a large
    offset. The mean is taken of ``x - x[:, 0]`` and shifted back, so a
    constant row has a mean equal to its value exactly (and deviations of
    exactly 0), and large offsets are removed before summing.

    Returns ``(y, mean, rstd)``; ``mean`` and ``rstd`` have shape (n,) and are
    what :func:`layer_norm_backward` needs.
    """
    shift = x[:, :1]
    mean = shift[:, 0] + (x - shift).mean(axis=-1)
    if not np.isfinite(mean).all():
        raise ValueError(NONFINITE_ROWS)
    deviation = x - mean[:, None]
    var = (deviation * deviation).mean(axis=-1)
    rstd = 1.0 / np.sqrt(var + eps)
    y = deviation * rstd[:, None] * gamma + beta
    return y, mean, rstd


def _layer_norm_forward_loop(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loop twin of :func:`layer_norm_forward_reference` (allocates, then runs the kernel)."""
    n, dtype = x.shape[0], x.dtype
    y, mean, rstd = np.empty(x.shape, dtype), np.empty(n, dtype), np.empty(n, dtype)
    layer_norm_forward_kernel(x, gamma, beta, eps, y, mean, rstd)
    return y, mean, rstd


@njit(cache=True)
def layer_norm_forward_kernel(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, y: np.ndarray, mean: np.ndarray, rstd: np.ndarray
) -> None:
    """The loop of :func:`_layer_norm_forward_loop`, writing into ``y``, ``mean``, ``rstd``."""
    n, d = x.shape
    for i in range(n):
        row = x[i]
        shift = row[0]
        # Four partial sums break the add-latency chain; their order is fixed,
        # so the result is still bit-reproducible (no fastmath needed).
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        j = 0
        while j + 4 <= d:
            s0 += row[j] - shift
            s1 += row[j + 1] - shift
            s2 += row[j + 2] - shift
            s3 += row[j + 3] - shift
            j += 4
        while j < d:
            s0 += row[j] - shift
            j += 1
        m = shift + ((s0 + s1) + (s2 + s3)) / d
        if not math.isfinite(m):
            raise ValueError(NONFINITE_ROWS)

        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        j = 0
        while j + 4 <= d:
            e0 = row[j] - m
            e1 = row[j + 1] - m
            e2 = row[j + 2] - m
            e3 = row[j + 3] - m
            s0 += e0 * e0
            s1 += e1 * e1
            s2 += e2 * e2
            s3 += e3 * e3
            j += 4
        while j < d:
            e0 = row[j] - m
            s0 += e0 * e0
            j += 1
        r = 1.0 / math.sqrt(((s0 + s1) + (s2 + s3)) / d + eps)

        out = y[i]
        for j in range(d):
            out[j] = (row[j] - m) * r * gamma[j] + beta[j]
        mean[i] = m
        rstd[i] = r


def layer_norm_backward_reference(
    dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray, rstd: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient of LayerNorm; NumPy twin.

    With ``x_hat = (x - mean) * rstd`` and ``g = dy * gamma`` (per row, means
    over the last axis)::

        dx     = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
        dgamma = sum over rows of dy * x_hat
        dbeta  = sum over rows of dy

    ``dx`` is ``g`` projected off the two directions LayerNorm removes (the
    constant vector and ``x_hat``) and scaled by ``rstd``.
    """
    x_hat = (x - mean[:, None]) * rstd[:, None]
    g = dy * gamma
    mean_g = g.mean(axis=-1, keepdims=True)
    mean_g_xhat = (g * x_hat).mean(axis=-1, keepdims=True)
    dx = rstd[:, None] * (g - mean_g - x_hat * mean_g_xhat)
    dgamma = (dy * x_hat).sum(axis=0)
    dbeta = dy.sum(axis=0)
    return dx, dgamma, dbeta


def _layer_norm_backward_loop(
    dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray, rstd: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loop twin of :func:`layer_norm_backward_reference` (allocates, then runs the kernel)."""
    d = x.shape[1]
    # float64 column accumulators: a float32 sum over many rows would drift.
    dx, dgamma, dbeta = np.empty(x.shape, x.dtype), np.zeros(d), np.zeros(d)
    layer_norm_backward_kernel(dy, x, gamma, mean, rstd, dx, dgamma, dbeta)
    if x.dtype != dgamma.dtype:
        return dx, dgamma.astype(x.dtype), dbeta.astype(x.dtype)
    return dx, dgamma, dbeta


@njit(cache=True)
def layer_norm_backward_kernel(
    dy: np.ndarray,
    x: np.ndarray,
    gamma: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    dx: np.ndarray,
    dgamma: np.ndarray,
    dbeta: np.ndarray,
) -> None:
    """The loop of :func:`_layer_norm_backward_loop`, writing ``dx`` and adding into the
    (zeroed, float64) ``dgamma`` and ``dbeta``."""
    n, d = x.shape
    inv_d = 1.0 / d
    for i in range(n):
        m = mean[i]
        r = rstd[i]
        x_row = x[i]
        dy_row = dy[i]
        # Pass 1: the two row reductions, in two partial sums each so the
        # four add chains overlap.
        sg0 = 0.0
        sg1 = 0.0
        sgx0 = 0.0
        sgx1 = 0.0
        j = 0
        while j + 2 <= d:
            g0 = dy_row[j] * gamma[j]
            g1 = dy_row[j + 1] * gamma[j + 1]
            sg0 += g0
            sg1 += g1
            sgx0 += g0 * ((x_row[j] - m) * r)
            sgx1 += g1 * ((x_row[j + 1] - m) * r)
            j += 2
        if j < d:
            g0 = dy_row[j] * gamma[j]
            sg0 += g0
            sgx0 += g0 * ((x_row[j] - m) * r)
        mean_g = (sg0 + sg1) * inv_d
        mean_g_xhat = (sgx0 + sgx1) * inv_d
        # Pass 2: element-wise, no reductions, so LLVM can vectorize it.
        dx_row = dx[i]
        for j in range(d):
            dyj = dy_row[j]
            x_hat = (x_row[j] - m) * r
            dx_row[j] = r * (dyj * gamma[j] - mean_g - x_hat * mean_g_xhat)
            dgamma[j] += dyj * x_hat
            dbeta[j] += dyj


LAYER_NORM_FORWARD = Twin("layer_norm_forward", reference=layer_norm_forward_reference, loop=_layer_norm_forward_loop)
LAYER_NORM_BACKWARD = Twin(
    "layer_norm_backward", reference=layer_norm_backward_reference, loop=_layer_norm_backward_loop
)


def layer_norm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm forward of ``x`` (n, d); returns ``(y, mean, rstd)``.

    See :func:`layer_norm_forward_reference` for the math.
    """
    x, gamma, beta = float_arrays(x, gamma, beta)
    if not (x.ndim == 2 and gamma.shape == beta.shape == x.shape[1:]):
        check_rows(x, gamma, beta)
    return LAYER_NORM_FORWARD.pick()(x, gamma, beta, float(eps))


def layer_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    gamma: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    *,
    residuals_checked: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm backward; returns ``(dx, dgamma, dbeta)``.

    ``dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))`` with
    ``g = dy * gamma``, ``x_hat = (x - mean) * rstd``; ``dgamma = sum_rows dy *
    x_hat``; ``dbeta = sum_rows dy``. See :func:`layer_norm_backward_reference`.
    With ``residuals_checked`` the arguments after ``dy`` are the forward's own (see
    :func:`~lnref.autograd.kernels.checks.cotangent`) and only ``dy`` is checked.
    """
    if residuals_checked and plain_arrays(x, gamma):
        dy = cotangent(dy, x.dtype, x.shape)
    else:
        dy, x, gamma, mean, rstd = float_arrays(dy, x, gamma, mean, rstd)
        if not (x.ndim == 2 and gamma.shape == x.shape[1:]):
            check_rows(x, gamma)
        check_fit(
            dy.shape == x.shape and mean.shape == rstd.shape == x.shape[:1],
            "dy",
            dy,
            "x",
            x,
            "mean",
            mean,
            "rstd",
            rstd,
        )
    return LAYER_NORM_BACKWARD.pick()(dy, x, gamma, mean, rstd)


# ----- RMSNorm --------------------------------------------------------------------------


def rms_norm_forward_reference(x: np.ndarray, gamma: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm over the last axis of ``x`` (n, d); NumPy twin.

    Forward::

        rrms = 1 / sqrt(mean(x^2) + eps)
        y    = x * rrms * gamma

    Returns ``(y, rrms)`` with ``rrms`` of shape (n,).
    """
    mean_square = (x * x).mean(axis=-1)
    if not np.isfinite(mean_square).all():
        raise ValueError(NONFINITE_ROWS)
    rrms = 1.0 / np.sqrt(mean_square + eps)
    y = x * rrms[:, None] * gamma
    return y, rrms


def _rms_norm_forward_loop(x: np.ndarray, gamma: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of :func:`rms_norm_forward_reference` (allocates, then runs the kernel)."""
    y, rrms = np.empty(x.shape, x.dtype), np.empty(x.shape[0], x.dtype)
    _rms_norm_forward_kernel(x, gamma, eps, y, rrms)
    return y, rrms


@njit(cache=True)
def _rms_norm_forward_kernel(x: np.ndarray, gamma: np.ndarray, eps: float, y: np.ndarray, rrms: np.ndarray) -> None:
    """The loop of :func:`_rms_norm_forward_loop`, writing ``y`` and ``rrms``."""
    n, d = x.shape
    for i in range(n):
        row = x[i]
        s0 = 0.0
        s1 = 0.0
        j = 0
        while j + 2 <= d:
            s0 += row[j] * row[j]
            s1 += row[j + 1] * row[j + 1]
            j += 2
        if j < d:
            s0 += row[j] * row[j]
        mean_square = (s0 + s1) / d
        if not math.isfinite(mean_square):
            raise ValueError(NONFINITE_ROWS)
        r = 1.0 / math.sqrt(mean_square + eps)
        out = y[i]
        for j in range(d):
            out[j] = row[j] * r * gamma[j]
        rrms[i] = r


def rms_norm_backward_reference(
    dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, rrms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of RMSNorm; NumPy twin.

    With ``x_hat = x * rrms`` and ``g = dy * gamma``::

        dx     = rrms * (g - x_hat * mean(g * x_hat))
        dgamma = sum over rows of dy * x_hat

    (Like LayerNorm without the mean-centring term: RMSNorm only removes the
    ``x_hat`` direction.)
    """
    x_hat = x * rrms[:, None]
    g = dy * gamma
    mean_g_xhat = (g * x_hat).mean(axis=-1, keepdims=True)
    dx = rrms[:, None] * (g - x_hat * mean_g_xhat)
    dgamma = (dy * x_hat).sum(axis=0)
    return dx, dgamma


def _rms_norm_backward_loop(
    dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, rrms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of :func:`rms_norm_backward_reference` (allocates, then runs the kernel)."""
    # A float64 column accumulator, as LayerNorm's.
    dx, dgamma = np.empty(x.shape, x.dtype), np.zeros(x.shape[1])
    _rms_norm_backward_kernel(dy, x, gamma, rrms, dx, dgamma)
    return dx, dgamma if x.dtype == dgamma.dtype else dgamma.astype(x.dtype)


@njit(cache=True)
def _rms_norm_backward_kernel(
    dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, rrms: np.ndarray, dx: np.ndarray, dgamma: np.ndarray
) -> None:
    """The loop of :func:`_rms_norm_backward_loop`, writing ``dx`` and adding into the (zeroed,
    float64) ``dgamma``."""
    n, d = x.shape
    inv_d = 1.0 / d
    for i in range(n):
        r = rrms[i]
        x_row = x[i]
        dy_row = dy[i]
        s0 = 0.0
        s1 = 0.0
        j = 0
        while j + 2 <= d:
            s0 += (dy_row[j] * gamma[j]) * (x_row[j] * r)
            s1 += (dy_row[j + 1] * gamma[j + 1]) * (x_row[j + 1] * r)
            j += 2
        if j < d:
            s0 += (dy_row[j] * gamma[j]) * (x_row[j] * r)
        mean_g_xhat = (s0 + s1) * inv_d
        dx_row = dx[i]
        for j in range(d):
            x_hat = x_row[j] * r
            dx_row[j] = r * (dy_row[j] * gamma[j] - x_hat * mean_g_xhat)
            dgamma[j] += dy_row[j] * x_hat


RMS_NORM_FORWARD = Twin("rms_norm_forward", reference=rms_norm_forward_reference, loop=_rms_norm_forward_loop)
RMS_NORM_BACKWARD = Twin("rms_norm_backward", reference=rms_norm_backward_reference, loop=_rms_norm_backward_loop)


def rms_norm_forward(x: np.ndarray, gamma: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm forward of ``x`` (n, d); returns ``(y, rrms)``.

    ``y = x * rrms * gamma`` with ``rrms = 1 / sqrt(mean(x^2) + eps)``.
    """
    x, gamma = float_arrays(x, gamma)
    check_rows(x, gamma)
    return RMS_NORM_FORWARD.pick()(x, gamma, float(eps))


def rms_norm_backward(
    dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, rrms: np.ndarray, *, residuals_checked: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm backward; returns ``(dx, dgamma)``.

    ``dx = rrms * (g - x_hat * mean(g * x_hat))``, ``dgamma = sum_rows dy *
    x_hat`` with ``x_hat = x * rrms``, ``g = dy * gamma``. ``residuals_checked``: as in
    :func:`layer_norm_backward`.
    """
    if residuals_checked and plain_arrays(x, gamma):
        dy = cotangent(dy, x.dtype, x.shape)
    else:
        dy, x, gamma, rrms = float_arrays(dy, x, gamma, rrms)
        check_rows(x, gamma)
        check_fit(dy.shape == x.shape and rrms.shape == x.shape[:1], "dy", dy, "x", x, "rrms", rrms)
    return RMS_NORM_BACKWARD.pick()(dy, x, gamma, rrms)
