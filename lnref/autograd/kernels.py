"""Fused numerical kernels of the lnref autodiff engine.

Twin design
-----------
Every kernel is written twice, side by side in this file:

``<name>_reference``
    Plain vectorized NumPy. This is the readable statement of the math and the
    reference the loop kernel is tested against.

``_<name>_loop``
    The same computation as explicit loops, compiled by Numba with
    ``@njit(cache=True)``. Never ``fastmath`` and never ``parallel=True``: the
    summation order is fixed by the source, so results are deterministic and
    bit-reproducible from call to call. With Numba's JIT disabled these run as
    ordinary (slow) Python, which keeps them directly testable. The kernels
    the model calls most (LayerNorm, attention) are split in two: a compiled
    ``_<name>_kernel`` that writes into arrays it is given, and the
    ``_<name>_loop`` wrapper that allocates them, because handing a new array
    from compiled code back to Python costs about a microsecond per array,
    as much as a small kernel's arithmetic.

The two twins agree to about 1e-12 relative in float64 (they differ only in
the order of floating-point additions), see ``tests/test_kernels.py``.

Dispatch seam
-------------
The public ``<name>`` is a small dispatcher. Which twin it calls is decided in
one place, :data:`USE_NUMBA`, computed once at import by
:func:`numba_requested`:

* Numba loop kernels by default (for attention, the loop kernels or the
  blocked path, by size: see :func:`_attention_impls`; the blocked path may
  split a big batch over threads, with the same bits: see
  :func:`_over_batch_parts`; for the linear map and
  the attention sublayer, the loop kernels up to a size and NumPy/BLAS
  products beyond, see :data:`LINEAR_LOOP_WORK_LIMIT` and
  :func:`_attention_sublayer_impls`);
* the NumPy twins when Numba's JIT is disabled (``NUMBA_DISABLE_JIT=1``, where
  the loop kernels would be pure-Python loops, far too slow for real use), when
  ``LNREF_KERNELS=numpy`` is set, or when Numba is not installed.

A first run compiles the kernels it uses (a few seconds), then Numba's on-disk
cache serves them; :func:`compile_cache_is_cold` tells beforehand, without
compiling, whether that first run is coming.

Conventions
-----------
* Inputs are C-contiguous float64 or float32 arrays, all of one dtype; the
  dispatchers make them contiguous and raise ``TypeError`` on anything else
  (no silent upcast or downcast). Outputs have the input dtype.
* For float32 data the loop kernels accumulate in float64 scalars and round
  once when storing; the NumPy twins compute in float32 throughout. The two
  therefore agree only to float32 precision on float32 inputs.
* LayerNorm, RMSNorm and softmax kernels are 2-D ``(n, d)``: rows are
  independent and the caller reshapes leading dimensions away. The norms raise
  ``ValueError`` on a row holding NaN or inf (:data:`NONFINITE_ROWS`).
  Attention takes 4-D ``(B, H, T, Dh)`` arrays (``attention_*``) or the
  model's 3-D ``(B, T, d)`` projections split into heads in place
  (``multi_head_attention_*``). The linear map takes rows ``(n, d_in)``, the
  attention sublayer (projections, attention and output projection in one
  call) ``(B, T, d)``. GELU and the ReLU backward take any shape.
* Cotangents are named ``d<name>``: ``dy`` is the gradient of the loss with
  respect to ``y``.
"""

from __future__ import annotations

import math
import os

import numpy as np

from lnref.process import blas as _blas

try:
    from numba import config as _numba_config
    from numba import njit
except ModuleNotFoundError as error:  # the NumPy twins are complete on their own
    if error.name != "numba":
        raise  # Numba is there but broken: say so rather than run 100x slower
    _numba_config = None

    def njit(*args, **kwargs):
        """Stand-in for ``numba.njit`` when Numba is absent: no compilation."""
        if args and callable(args[0]):
            return args[0]
        return lambda fn: fn


__all__ = [
    "USE_NUMBA",
    "numba_requested",
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
    "softmax_forward",
    "softmax_backward",
    "attention_forward",
    "attention_backward",
    "gelu_forward",
    "gelu_backward",
    "layer_norm_forward_reference",
    "layer_norm_backward_reference",
    "rms_norm_forward_reference",
    "rms_norm_backward_reference",
    "softmax_forward_reference",
    "softmax_backward_reference",
    "attention_forward_reference",
    "attention_backward_reference",
    "gelu_forward_reference",
    "gelu_backward_reference",
    "multi_head_attention_forward",
    "multi_head_attention_backward",
    "linear_forward",
    "linear_backward",
    "linear_forward_reference",
    "linear_backward_reference",
    "attention_sublayer_forward",
    "attention_sublayer_backward",
    "attention_sublayer_forward_reference",
    "attention_sublayer_backward_reference",
    "relu_backward",
    "relu_backward_reference",
    "feed_forward_forward",
    "feed_forward_backward",
    "feed_forward_forward_reference",
    "feed_forward_backward_reference",
    "compile_cache_is_cold",
]


# ---------------------------------------------------------------------------
# Dispatch seam: the only place that chooses between the twins.
# ---------------------------------------------------------------------------


def numba_requested(lnref_kernels: str | None, jit_disabled: bool, numba_available: bool = True) -> bool:
    """Whether the public kernels should call the Numba loop kernels.

    ``lnref_kernels`` is the value of the ``LNREF_KERNELS`` environment
    variable (``None``, ``""``, ``"numba"`` or ``"numpy"``), ``jit_disabled``
    is ``numba.config.DISABLE_JIT``.
    """
    choice = (lnref_kernels or "numba").strip().lower()
    if choice not in ("numba", "numpy"):
        raise ValueError(f"LNREF_KERNELS must be 'numba' or 'numpy', got {lnref_kernels!r}")
    return choice == "numba" and numba_available and not jit_disabled


USE_NUMBA: bool = numba_requested(
    os.environ.get("LNREF_KERNELS"),
    jit_disabled=bool(_numba_config.DISABLE_JIT) if _numba_config is not None else True,
    numba_available=_numba_config is not None,
)


def _pick(loop_kernel, reference):
    """The implementation the public dispatchers call, per :data:`USE_NUMBA`."""
    return loop_kernel if USE_NUMBA else reference


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _float_arrays(*arrays):
    """Make arrays C-contiguous and check they share one float32/float64 dtype.

    Mixed dtypes raise instead of being cast, so a float32 graph never turns
    into float64 (or back) behind the caller's back. This is the one place the
    kernels' inputs are checked: ``ops`` adds the op's name to its errors and
    does not repeat the checks.
    """
    dtype = getattr(arrays[0], "dtype", None)
    if dtype is _FLOAT_DTYPES[0] or dtype is _FLOAT_DTYPES[1] or dtype in _FLOAT_DTYPES:
        # The common case, decided without building new arrays. (Equal dtypes need not
        # be one object: arrays made by Numba carry their own.)
        for a in arrays:
            if type(a) is not np.ndarray or a.dtype is not dtype and a.dtype != dtype \
                    or not a.flags.c_contiguous:
                break
        else:
            return arrays
    out = [np.asarray(a) for a in arrays]
    dtype = out[0].dtype
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"kernels take float32 or float64 arrays, got {dtype}")
    for a in out[1:]:
        if a.dtype != dtype:
            raise TypeError(f"all kernel inputs must share one dtype, got {dtype} and {a.dtype}")
    return [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in out]


# A NaN or inf anywhere in a row makes that row's mean (LayerNorm) or mean square
# (RMSNorm) NaN or inf: the norm kernels test these n numbers, which costs nothing next
# to a separate pass over x, and raise this. (A finite row whose sum overflows raises too.)
NONFINITE_ROWS = "x holds NaN or inf (a row's mean or mean square is not finite)"


def _cotangent(dy, dtype, shape):
    """``dy`` as the cotangent of a forward output of ``dtype`` and ``shape``: a C-contiguous
    array of that dtype and shape, or an error.

    What a backward checks when its other arguments are the forward's own, passed back
    unchanged (``residuals_checked=True``, as the ops' VJPs call them): the forward checked
    its inputs' dtypes and shapes and made its outputs, so the cotangent is the one new
    array. The forward's inputs are still looked at (:func:`_plain_arrays`): the forward
    took a copy of any that was not a C-contiguous array, not the array itself.
    """
    if type(dy) is not np.ndarray or dy.dtype is not dtype and dy.dtype != dtype:
        dy = np.asarray(dy)
        if dy.dtype != dtype:
            raise TypeError(f"all kernel inputs must share one dtype, got {dtype} and {dy.dtype} for the cotangent")
    if dy.shape != shape:
        raise ValueError(f"cotangent of shape {dy.shape} does not match the forward's output shape {shape}")
    return dy if dy.flags.c_contiguous else np.ascontiguousarray(dy)


def _plain_arrays(*arrays):
    """Every argument is a C-contiguous ndarray (not a subclass)."""
    for a in arrays:
        if type(a) is not np.ndarray or not a.flags.c_contiguous:
            return False
    return True


def _check_fit(fits, *named_arrays):
    """Raise unless ``fits``: the arrays' shapes, named, in the message."""
    if not fits:
        shapes = ", ".join(f"{name} {np.shape(array)}" for name, array in zip(named_arrays[::2], named_arrays[1::2]))
        raise ValueError(f"shapes do not fit: {shapes}")


def _expect_ndim(name, array, ndim):
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")


def _check_rows(x, *params):
    """x is (n, d) and every per-feature parameter is (d,)."""
    _expect_ndim("x", x, 2)
    for p in params:
        if p.shape != (x.shape[1],):
            raise ValueError(f"parameter of shape {p.shape} does not match x of shape {x.shape}")


# ---------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------


def layer_norm_forward_reference(x, gamma, beta, eps):
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


def _layer_norm_forward_loop(x, gamma, beta, eps):
    """Loop twin of :func:`layer_norm_forward_reference` (allocates, then runs the kernel)."""
    n, dtype = x.shape[0], x.dtype
    y, mean, rstd = np.empty(x.shape, dtype), np.empty(n, dtype), np.empty(n, dtype)
    _layer_norm_forward_kernel(x, gamma, beta, eps, y, mean, rstd)
    return y, mean, rstd


@njit(cache=True)
def _layer_norm_forward_kernel(x, gamma, beta, eps, y, mean, rstd):
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


def layer_norm_backward_reference(dy, x, gamma, mean, rstd):
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


def _layer_norm_backward_loop(dy, x, gamma, mean, rstd):
    """Loop twin of :func:`layer_norm_backward_reference` (allocates, then runs the kernel)."""
    d = x.shape[1]
    # float64 column accumulators: a float32 sum over many rows would drift.
    dx, dgamma, dbeta = np.empty(x.shape, x.dtype), np.zeros(d), np.zeros(d)
    _layer_norm_backward_kernel(dy, x, gamma, mean, rstd, dx, dgamma, dbeta)
    if x.dtype != dgamma.dtype:
        return dx, dgamma.astype(x.dtype), dbeta.astype(x.dtype)
    return dx, dgamma, dbeta


@njit(cache=True)
def _layer_norm_backward_kernel(dy, x, gamma, mean, rstd, dx, dgamma, dbeta):
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


def layer_norm_forward(x, gamma, beta, eps):
    """LayerNorm forward of ``x`` (n, d); returns ``(y, mean, rstd)``.

    See :func:`layer_norm_forward_reference` for the math.
    """
    x, gamma, beta = _float_arrays(x, gamma, beta)
    if not (x.ndim == 2 and gamma.shape == beta.shape == x.shape[1:]):
        _check_rows(x, gamma, beta)
    if USE_NUMBA:  # (_pick written out: this runs for every norm of every pass)
        return _layer_norm_forward_loop(x, gamma, beta, float(eps))
    return layer_norm_forward_reference(x, gamma, beta, float(eps))


def layer_norm_backward(dy, x, gamma, mean, rstd, *, residuals_checked=False):
    """LayerNorm backward; returns ``(dx, dgamma, dbeta)``.

    ``dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))`` with
    ``g = dy * gamma``, ``x_hat = (x - mean) * rstd``; ``dgamma = sum_rows dy *
    x_hat``; ``dbeta = sum_rows dy``. See :func:`layer_norm_backward_reference`.
    With ``residuals_checked`` the arguments after ``dy`` are the forward's own (see
    :func:`_cotangent`) and only ``dy`` is checked.
    """
    if residuals_checked and _plain_arrays(x, gamma):
        dy = _cotangent(dy, x.dtype, x.shape)
    else:
        dy, x, gamma, mean, rstd = _float_arrays(dy, x, gamma, mean, rstd)
        if not (x.ndim == 2 and gamma.shape == x.shape[1:]):
            _check_rows(x, gamma)
        _check_fit(dy.shape == x.shape and mean.shape == rstd.shape == x.shape[:1],
                   "dy", dy, "x", x, "mean", mean, "rstd", rstd)
    if USE_NUMBA:  # (_pick written out, as in the forward)
        return _layer_norm_backward_loop(dy, x, gamma, mean, rstd)
    return layer_norm_backward_reference(dy, x, gamma, mean, rstd)


# ---------------------------------------------------------------------------
# RMSNorm
# ---------------------------------------------------------------------------


def rms_norm_forward_reference(x, gamma, eps):
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


@njit(cache=True)
def _rms_norm_forward_loop(x, gamma, eps):
    """Loop twin of :func:`rms_norm_forward_reference`."""
    n, d = x.shape
    y = np.empty_like(x)
    rrms = np.empty(n, dtype=x.dtype)
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
    return y, rrms


def rms_norm_backward_reference(dy, x, gamma, rrms):
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


@njit(cache=True)
def _rms_norm_backward_loop(dy, x, gamma, rrms):
    """Loop twin of :func:`rms_norm_backward_reference`."""
    n, d = x.shape
    dx = np.empty_like(x)
    dgamma = np.zeros(d)
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
    return dx, dgamma.astype(x.dtype)


def rms_norm_forward(x, gamma, eps):
    """RMSNorm forward of ``x`` (n, d); returns ``(y, rrms)``.

    ``y = x * rrms * gamma`` with ``rrms = 1 / sqrt(mean(x^2) + eps)``.
    """
    x, gamma = _float_arrays(x, gamma)
    _check_rows(x, gamma)
    return _pick(_rms_norm_forward_loop, rms_norm_forward_reference)(x, gamma, float(eps))


def rms_norm_backward(dy, x, gamma, rrms, *, residuals_checked=False):
    """RMSNorm backward; returns ``(dx, dgamma)``.

    ``dx = rrms * (g - x_hat * mean(g * x_hat))``, ``dgamma = sum_rows dy *
    x_hat`` with ``x_hat = x * rrms``, ``g = dy * gamma``. ``residuals_checked``: as in
    :func:`layer_norm_backward`.
    """
    if residuals_checked and _plain_arrays(x, gamma):
        dy = _cotangent(dy, x.dtype, x.shape)
    else:
        dy, x, gamma, rrms = _float_arrays(dy, x, gamma, rrms)
        _check_rows(x, gamma)
        _check_fit(dy.shape == x.shape and rrms.shape == x.shape[:1], "dy", dy, "x", x, "rrms", rrms)
    return _pick(_rms_norm_backward_loop, rms_norm_backward_reference)(dy, x, gamma, rrms)


# ---------------------------------------------------------------------------
# Softmax
# ---------------------------------------------------------------------------


def softmax_forward_reference(x):
    """Softmax over the last axis of ``x`` (n, d); NumPy twin.

    ``p_j = exp(x_j - max(x)) / sum_k exp(x_k - max(x))``. Subtracting the row
    maximum changes nothing mathematically but keeps every exponent <= 0, so
    logits like 1e4 do not overflow.
    """
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@njit(cache=True)
def _softmax_prefix_inplace(row, n):
    """row[:n] <- softmax(row[:n]), stable: the row maximum is subtracted before exp, so
    logits like 1e4 do not overflow. The one row loop shared by softmax and attention."""
    row_max = -np.inf
    for j in range(n):
        if row[j] > row_max:
            row_max = row[j]
    total = 0.0
    for j in range(n):
        e = math.exp(row[j] - row_max)
        row[j] = e
        total += e
    for j in range(n):
        row[j] = row[j] / total


@njit(cache=True)
def _softmax_forward_loop(x):
    """Loop twin of :func:`softmax_forward_reference`."""
    n, d = x.shape
    p = np.empty_like(x)
    for i in range(n):
        out = p[i]
        out[:] = x[i]
        _softmax_prefix_inplace(out, d)
    return p


def softmax_backward_reference(dp, p):
    """Gradient of softmax; NumPy twin.

    The Jacobian of ``p = softmax(x)`` is ``diag(p) - p p^T``, so for a
    cotangent ``dp`` (per row)::

        dx = p * (dp - sum(dp * p))
    """
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))


@njit(cache=True)
def _softmax_backward_loop(dp, p):
    """Loop twin of :func:`softmax_backward_reference`."""
    n, d = p.shape
    dx = np.empty_like(p)
    for i in range(n):
        p_row = p[i]
        dp_row = dp[i]
        s0 = 0.0
        s1 = 0.0
        j = 0
        while j + 2 <= d:
            s0 += dp_row[j] * p_row[j]
            s1 += dp_row[j + 1] * p_row[j + 1]
            j += 2
        if j < d:
            s0 += dp_row[j] * p_row[j]
        row_dot = s0 + s1
        out = dx[i]
        for j in range(d):
            out[j] = p_row[j] * (dp_row[j] - row_dot)
    return dx


def softmax_forward(x):
    """Numerically stable softmax over the last axis of ``x`` (n, d)."""
    (x,) = _float_arrays(x)
    _expect_ndim("x", x, 2)
    return _pick(_softmax_forward_loop, softmax_forward_reference)(x)


def softmax_backward(dp, p):
    """Softmax backward: ``dx = p * (dp - sum(dp * p, axis=-1))``.

    The Jacobian is ``diag(p) - p p^T``.
    """
    dp, p = _float_arrays(dp, p)
    _expect_ndim("p", p, 2)
    _check_fit(dp.shape == p.shape, "dp", dp, "p", p)
    return _pick(_softmax_backward_loop, softmax_backward_reference)(dp, p)


# ---------------------------------------------------------------------------
# Scaled dot-product attention
# ---------------------------------------------------------------------------
#
# Two layouts meet here. The readable NumPy twins take the head-major layout
# (B, H, T, Dh) of the textbook formulas. The model's projections come out
# token-major, (B, T, d) = (B, T, H, Dh) after a free reshape, so the compiled
# paths work on that layout directly and never copy heads in or out:
#
# * ``_attention_*_loop``: explicit loops, one (b, h) head at a time; the
#   fastest for small heads, where a matrix product's call costs more than
#   its arithmetic;
# * ``_attention_*_blocked``: for big heads, the four products as batched
#   BLAS matrix products over strided views (NumPy), and the softmax and its
#   backward in place by two small loop kernels.
#
# Both compute the same formulas as the twins; which one runs is chosen from
# the head's size by :func:`_attention_impls` (a deterministic rule, so the
# same shapes always take the same path and give the same bits).


def attention_forward_reference(q, k, v, causal):
    """Scaled dot-product attention; NumPy twin.

    ``q`` is (B, H, T, Dh), ``k`` and ``v`` are (B, H, S, Dh)::

        scores = q @ k^T / sqrt(Dh)                 (B, H, T, S)
        scores[..., t, s] = -inf  where s > t       (only if causal)
        probs  = softmax(scores, axis=-1)           (stable: row max subtracted)
        out    = probs @ v                          (B, H, T, Dh)

    With ``causal`` the diagonal ``s == t`` is always allowed, so no row is
    empty, and masked positions get ``exp(-inf) = 0``: their probability is
    exactly 0. Returns ``(out, probs)``; ``probs`` is kept for the backward.
    """
    dh = q.shape[-1]
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / math.sqrt(dh)
    if causal:
        t_len, s_len = scores.shape[-2:]
        masked = np.triu(np.ones((t_len, s_len), dtype=bool), k=1)  # s > t
        scores = np.where(masked, -np.inf, scores)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    out = np.matmul(probs, v)
    return out, probs


def attention_backward_reference(dout, q, k, v, probs):
    """Gradient of scaled dot-product attention; NumPy twin.

    ::

        dv      = probs^T @ dout
        dprobs  = dout @ v^T
        dscores = probs * (dprobs - rowsum(dprobs * probs))   (softmax backward)
        dq      = dscores @ k   / sqrt(Dh)
        dk      = dscores^T @ q / sqrt(Dh)

    Causally masked positions have ``probs`` exactly 0, so ``dscores`` is 0
    there and they contribute nothing to ``dq`` and ``dk``: no mask is needed.
    """
    dh = q.shape[-1]
    sqrt_dh = math.sqrt(dh)
    dv = np.matmul(np.swapaxes(probs, -1, -2), dout)
    dprobs = np.matmul(dout, np.swapaxes(v, -1, -2))
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))
    dq = np.matmul(dscores, k) / sqrt_dh
    dk = np.matmul(np.swapaxes(dscores, -1, -2), q) / sqrt_dh
    return dq, dk, dv


def _heads_first(a):
    """(B, T, H, Dh) -> a (B, H, T, Dh) view (no copy)."""
    return a.transpose(0, 2, 1, 3)


def _attention_forward_token_major_reference(q, k, v, causal):
    """:func:`attention_forward_reference` on token-major (B, T, H, Dh) inputs."""
    out, probs = attention_forward_reference(_heads_first(q), _heads_first(k), _heads_first(v), causal)
    return np.ascontiguousarray(_heads_first(out)), probs


def _attention_backward_token_major_reference(dout, q, k, v, probs):
    """:func:`attention_backward_reference` on token-major (B, T, H, Dh) inputs."""
    grads = attention_backward_reference(_heads_first(dout), _heads_first(q), _heads_first(k),
                                         _heads_first(v), probs)
    return tuple(np.ascontiguousarray(_heads_first(g)) for g in grads)


def _attention_forward_loop(q, k, v, causal):
    """Loop twin of :func:`attention_forward_reference`, token-major (allocates, then runs
    :func:`_attention_forward_kernel`)."""
    out = np.empty_like(q)
    probs = np.zeros((q.shape[0], q.shape[2], q.shape[1], k.shape[1]), dtype=q.dtype)
    _attention_forward_kernel(q, k, v, causal, out, probs)
    return out, probs


@njit(cache=True)
def _attention_forward_kernel(q, k, v, causal, out, probs):
    """The loop of :func:`_attention_forward_loop`, writing ``out`` and the nonzero entries
    of the zeroed ``probs``.

    ``q`` is (B, T, H, Dh), ``k`` and ``v`` are (B, S, H, Dh); returns ``out``
    (B, T, H, Dh) and ``probs`` (B, H, T, S). One (b, h) head at a time. ``k``
    is transposed once per head so that every inner loop is an element-wise
    ``a[:] += c * b[:]`` over contiguous memory (which LLVM vectorizes without
    fastmath) instead of a dot-product reduction (which it may not reorder).
    Masked columns are not computed at all; their probability is stored as
    exactly 0.
    """
    n_batch, t_len, n_head, dh = q.shape
    s_len = k.shape[1]
    sqrt_dh = math.sqrt(dh)
    k_t = np.empty((dh, s_len))
    scores = np.empty(s_len)
    out_row = np.empty(dh)
    for b in range(n_batch):
        for h in range(n_head):
            for s in range(s_len):
                k_row = k[b, s, h]
                for c in range(dh):
                    k_t[c, s] = k_row[c]
            for t in range(t_len):
                q_row = q[b, t, h]
                s_end = min(t + 1, s_len) if causal else s_len
                for s in range(s_end):
                    scores[s] = 0.0
                for c in range(dh):
                    q_tc = q_row[c]
                    k_col = k_t[c]
                    for s in range(s_end):
                        scores[s] += q_tc * k_col[s]
                for s in range(s_end):
                    scores[s] = scores[s] / sqrt_dh
                _softmax_prefix_inplace(scores, s_end)
                p_row = probs[b, h, t]
                for c in range(dh):
                    out_row[c] = 0.0
                for s in range(s_end):
                    p_row[s] = scores[s]
                    # Use the stored (rounded) probability, as probs @ v does.
                    p = p_row[s]
                    v_row = v[b, s, h]
                    for c in range(dh):
                        out_row[c] += p * v_row[c]
                o = out[b, t, h]
                for c in range(dh):
                    o[c] = out_row[c]


def _attention_backward_loop(dout, q, k, v, probs):
    """Loop twin of :func:`attention_backward_reference`, token-major (allocates, then runs
    :func:`_attention_backward_kernel`)."""
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    _attention_backward_kernel(dout, q, k, v, probs, dq, dk, dv)
    return dq, dk, dv


@njit(cache=True)
def _attention_backward_kernel(dout, q, k, v, probs, dq, dk, dv):
    """The loop of :func:`_attention_backward_loop`, writing ``dq``, ``dk``, ``dv``.

    Layouts as in :func:`_attention_forward_loop`. Walks the query rows ``t``
    of one head once: each row produces ``dq[t]`` and adds its contributions
    to float64 accumulators for ``dk`` and ``dv``. ``v`` is transposed per head
    so ``dprobs`` is built with contiguous element-wise updates. Columns past
    the last nonzero probability of a row (the causal mask) are skipped: they
    would add exact zeros.
    """
    n_batch, t_len, n_head, dh = q.shape
    s_len = k.shape[1]
    sqrt_dh = math.sqrt(dh)
    v_t = np.empty((dh, s_len))
    dk_acc = np.empty((s_len, dh))
    dv_acc = np.empty((s_len, dh))
    dscores = np.empty(s_len)
    dq_row = np.empty(dh)
    for b in range(n_batch):
        for h in range(n_head):
            for s in range(s_len):
                v_row = v[b, s, h]
                for c in range(dh):
                    v_t[c, s] = v_row[c]
                    dk_acc[s, c] = 0.0
                    dv_acc[s, c] = 0.0
            for t in range(t_len):
                p_row = probs[b, h, t]
                dout_row = dout[b, t, h]
                q_row = q[b, t, h]
                s_end = s_len
                while s_end > 1 and p_row[s_end - 1] == 0.0:
                    s_end -= 1
                # dprobs[s] = dout[t] . v[s]
                for s in range(s_end):
                    dscores[s] = 0.0
                for c in range(dh):
                    g = dout_row[c]
                    v_col = v_t[c]
                    for s in range(s_end):
                        dscores[s] += g * v_col[s]
                row_dot = 0.0
                for s in range(s_end):
                    row_dot += dscores[s] * p_row[s]
                for c in range(dh):
                    dq_row[c] = 0.0
                for s in range(s_end):
                    p = p_row[s]
                    ds = p * (dscores[s] - row_dot)
                    k_row = k[b, s, h]
                    dk_row = dk_acc[s]
                    dv_row = dv_acc[s]
                    for c in range(dh):
                        dq_row[c] += ds * k_row[c]
                        dk_row[c] += ds * q_row[c]
                        dv_row[c] += p * dout_row[c]
                dq_t = dq[b, t, h]
                for c in range(dh):
                    dq_t[c] = dq_row[c] / sqrt_dh
            for s in range(s_len):
                dk_s = dk[b, s, h]
                dv_s = dv[b, s, h]
                for c in range(dh):
                    dk_s[c] = dk_acc[s, c] / sqrt_dh
                    dv_s[c] = dv_acc[s, c]


# The two loops below release the GIL (``nogil``): the blocked path runs them on helper
# threads, one part of the batch each (see _over_batch_parts).
@njit(cache=True, nogil=True)
def _attention_probs_loop(scores, causal, sqrt_dh):
    """In place: raw scores q k^T (B, H, T, S) -> probabilities, as in the loop kernel.

    Per row ``t``: divide by sqrt(Dh), subtract the row maximum, exponentiate,
    normalize; with ``causal`` the columns ``s > t`` are set to exactly 0.
    """
    n_batch, n_head, t_len, s_len = scores.shape
    for b in range(n_batch):
        for h in range(n_head):
            for t in range(t_len):
                row = scores[b, h, t]
                s_end = min(t + 1, s_len) if causal else s_len
                for s in range(s_end):
                    row[s] = row[s] / sqrt_dh
                _softmax_prefix_inplace(row, s_end)
                for s in range(s_end, s_len):
                    row[s] = 0.0


@njit(cache=True, nogil=True)
def _attention_dscores_loop(dprobs, probs, sqrt_dh):
    """In place: dprobs (B, H, T, S) -> dscores / sqrt(Dh), the softmax backward per row."""
    n_batch, n_head, t_len, s_len = probs.shape
    for b in range(n_batch):
        for h in range(n_head):
            for t in range(t_len):
                d_row = dprobs[b, h, t]
                p_row = probs[b, h, t]
                row_dot = 0.0
                for s in range(s_len):
                    row_dot += d_row[s] * p_row[s]
                for s in range(s_len):
                    d_row[s] = p_row[s] * (d_row[s] - row_dot) / sqrt_dh


def _attention_forward_blocked(q, k, v, causal):
    """Token-major attention with BLAS products, for big heads.

    ``scores = q k^T`` and ``out = probs v`` are batched matrix products over
    (B, H, T, Dh) views of the token-major arrays (strided, never copied);
    :func:`_attention_probs_loop` turns the scores into probabilities in place.
    Parts of the batch may run on threads of their own (:func:`_over_batch_parts`).
    """
    n_batch, t_len, n_head, head_dim = q.shape
    scores = np.empty((n_batch, n_head, t_len, k.shape[1]), q.dtype)  # (B, H, T, S)
    out = np.empty_like(q)
    sqrt_dh = math.sqrt(head_dim)

    def part(lo, hi):
        np.matmul(_heads_first(q[lo:hi]), k[lo:hi].transpose(0, 2, 3, 1), out=scores[lo:hi])
        _attention_probs_loop(scores[lo:hi], causal, sqrt_dh)
        np.matmul(scores[lo:hi], _heads_first(v[lo:hi]), out=_heads_first(out[lo:hi]))

    _over_batch_parts(part, n_batch, scores.size * head_dim)
    return out, scores


def _attention_backward_blocked(dout, q, k, v, probs):
    """Backward of :func:`_attention_forward_blocked`: four batched products and
    the softmax backward in place (:func:`_attention_dscores_loop`, which also
    divides by sqrt(Dh) so that dq and dk need no extra pass), by parts of the
    batch as the forward."""
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    dscores = np.empty_like(probs)  # dprobs, then dscores / sqrt(Dh)
    sqrt_dh = math.sqrt(q.shape[3])

    def part(lo, hi):
        dout_heads = _heads_first(dout[lo:hi])
        np.matmul(probs[lo:hi].transpose(0, 1, 3, 2), dout_heads, out=_heads_first(dv[lo:hi]))
        np.matmul(dout_heads, v[lo:hi].transpose(0, 2, 3, 1), out=dscores[lo:hi])
        _attention_dscores_loop(dscores[lo:hi], probs[lo:hi], sqrt_dh)
        np.matmul(dscores[lo:hi], _heads_first(k[lo:hi]), out=_heads_first(dq[lo:hi]))
        np.matmul(dscores[lo:hi].transpose(0, 1, 3, 2), _heads_first(q[lo:hi]), out=_heads_first(dk[lo:hi]))

    _over_batch_parts(part, q.shape[0], probs.size * q.shape[3])
    return dq, dk, dv


# Threads for the blocked path. Its batched products are many small ones (one per batch
# row and head), too small for OpenBLAS to thread, and its two loops are serial: alone it
# runs on one core. With several BLAS threads (lnref.process.blas.threads) it takes one thread per
# part of the batch. The parts write disjoint slices and each (b, h) product is the same
# BLAS call as unsplit: the bits do not depend on the number of parts (tested). Threads pay
# only when OpenBLAS's idle workers sleep instead of spinning on the cores the parts need
# (lnref.process.blas.idle_workers_sleep; the lnref command sees to it); otherwise the path stays
# on one thread. Measured on 2 cores, 2 BLAS threads, passes alternating with and without
# threads in one process: the 12-layer d_model-256 model's forward+backward took 0.93-0.97x
# the time; the 48-layer d_model-64 model's (B H T S Dh = 262,144 per product) 0.98-1.16x,
# hence the floor.
THREADED_WORK_MIN = 1 << 20  # B H T S Dh, the multiply-adds of one batched product
_helper_threads = (0, None)  # (threads, ThreadPoolExecutor), made on first use


def _batch_parts(batch, work):
    """How many parts (threads) the blocked path splits a batch of this work into."""
    if work < THREADED_WORK_MIN or batch < 2 or not _blas.idle_workers_sleep():
        return 1
    return min(batch, _blas.threads())


def _over_batch_parts(part, batch, work):
    """``part(lo, hi)`` over consecutive parts of ``range(batch)`` (:func:`_batch_parts`): the
    first ones on helper threads, the last on this one; returns when all are done, raising
    the first error."""
    global _helper_threads
    n_parts = _batch_parts(batch, work)
    if n_parts == 1:
        part(0, batch)
        return
    bounds = [batch * i // n_parts for i in range(n_parts + 1)]
    if _helper_threads[0] < n_parts - 1:  # none yet, or OpenBLAS was given more threads since
        from concurrent.futures import ThreadPoolExecutor

        if _helper_threads[1] is not None:
            _helper_threads[1].shutdown(wait=False)
        _helper_threads = (n_parts - 1, ThreadPoolExecutor(n_parts - 1, thread_name_prefix="lnref-attention"))
    pool = _helper_threads[1]
    helpers = [pool.submit(part, lo, hi) for lo, hi in zip(bounds[:-2], bounds[1:-1])]
    try:
        part(bounds[-2], bounds[-1])
    finally:
        errors = [helper.exception() for helper in helpers]  # (waits for each)
    for error in errors:
        if error is not None:
            raise error


def _forget_helper_threads():
    """In a forked child: the parent's threads are not there, so neither is the pool."""
    global _helper_threads
    _helper_threads = (0, None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper_threads)


# Work B * H * T * S * Dh (multiply-adds of one product) up to which the loop
# kernels beat the blocked path: the blocked path's dozen NumPy calls cost more than
# a few thousand multiply-adds, while the loops lose to BLAS once heads are not tiny
# (measured by benchmarks/bench_ops.py; e.g. (B, H, T, Dh) = (2, 2, 8, 8) is faster
# looped, (20, 2, 8, 8) and (2, 4, 16, 16) blocked).
LOOP_WORK_LIMIT = 8192


def _attention_impls(batch, heads, t_len, s_len, head_dim):
    """(forward, backward) on the token-major layout for attention of this size."""
    if not USE_NUMBA:
        return _attention_forward_token_major_reference, _attention_backward_token_major_reference
    if batch * heads * t_len * s_len * head_dim <= LOOP_WORK_LIMIT:
        return _attention_forward_loop, _attention_backward_loop
    return _attention_forward_blocked, _attention_backward_blocked


def _check_attention_shapes(q, k, v, causal=False):
    for name, a in (("q", q), ("k", k), ("v", v)):
        _expect_ndim(name, a, 4)
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"incompatible attention shapes q={q.shape} k={k.shape} v={v.shape}")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal attention needs T == S, got T={q.shape[2]} S={k.shape[2]}")


def _token_major(a):
    """(B, H, T, Dh) -> a contiguous (B, T, H, Dh) copy."""
    return np.ascontiguousarray(a.transpose(0, 2, 1, 3))


def attention_forward(q, k, v, causal):
    """Scaled dot-product attention; returns ``(out, probs)``.

    ``q`` (B, H, T, Dh), ``k``/``v`` (B, H, S, Dh);
    ``out = softmax(q k^T / sqrt(Dh) [masked s > t if causal]) @ v``.
    See :func:`attention_forward_reference`. (The model calls
    :func:`multi_head_attention_forward`, which takes the token-major layout.)
    """
    q, k, v = _float_arrays(q, k, v)
    causal = bool(causal)
    _check_attention_shapes(q, k, v, causal)
    forward, _ = _attention_impls(q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3])
    out, probs = forward(_token_major(q), _token_major(k), _token_major(v), causal)
    return _token_major(out), probs  # (B, T, H, Dh) -> (B, H, T, Dh): the same swap


def attention_backward(dout, q, k, v, probs):
    """Attention backward; returns ``(dq, dk, dv)``.

    ``dv = probs^T dout``; ``dprobs = dout v^T``; ``dscores = probs * (dprobs -
    rowsum(dprobs * probs))``; ``dq = dscores k / sqrt(Dh)``; ``dk = dscores^T
    q / sqrt(Dh)``. Masked positions have ``probs == 0`` exactly and need no
    special case. See :func:`attention_backward_reference`.
    """
    dout, q, k, v, probs = _float_arrays(dout, q, k, v, probs)
    _check_attention_shapes(q, k, v)
    _, backward = _attention_impls(q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3])
    grads = backward(_token_major(dout), _token_major(q), _token_major(k), _token_major(v), probs)
    return tuple(_token_major(g) for g in grads)


def _check_multi_head_shapes(q, k, v, n_heads, causal=False):
    if (q.ndim == 3 and k.ndim == 3 and k.shape == v.shape and k.shape[0] == q.shape[0]
            and k.shape[2] == q.shape[2] and type(n_heads) is int and n_heads >= 1
            and q.shape[2] % n_heads == 0 and not (causal and q.shape[1] != k.shape[1])):
        return  # the common case, in one expression
    for name, a in (("q", q), ("k", k), ("v", v)):
        _expect_ndim(name, a, 3)
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"q={q.shape} k={k.shape} v={v.shape} do not fit (B, T, d), (B, S, d)")
    if isinstance(n_heads, bool) or not isinstance(n_heads, (int, np.integer)) or n_heads < 1 \
            or q.shape[2] % n_heads:
        raise ValueError(f"d_model {q.shape[2]} does not split into {n_heads} heads")
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError(f"causal attention needs T == S, got T={q.shape[1]} S={k.shape[1]}")


def _split_heads(a, n_heads):
    """(B, T, d) -> a (B, T, H, d/H) view: head h owns features [h d/H, (h+1) d/H)."""
    return a.reshape(a.shape[0], a.shape[1], n_heads, a.shape[2] // n_heads)


def multi_head_attention_forward(q, k, v, n_heads, causal):
    """Attention of ``n_heads`` heads on the token-major layout; returns ``(out, probs)``.

    ``q`` (B, T, d), ``k``/``v`` (B, S, d); head h reads features
    [h d/H, (h+1) d/H) and writes the same features of ``out`` (B, T, d);
    ``probs`` is (B, H, T, S). The same formulas as :func:`attention_forward`
    with the heads split and merged by free reshapes instead of copies.
    """
    q, k, v = _float_arrays(q, k, v)
    causal = bool(causal)
    _check_multi_head_shapes(q, k, v, n_heads, causal)
    forward, _ = _attention_impls(q.shape[0], n_heads, q.shape[1], k.shape[1], q.shape[2] // n_heads)
    out, probs = forward(_split_heads(q, n_heads), _split_heads(k, n_heads), _split_heads(v, n_heads), causal)
    return out.reshape(q.shape), probs


def multi_head_attention_backward(dout, q, k, v, probs):
    """Backward of :func:`multi_head_attention_forward`; returns ``(dq, dk, dv)``,
    each in its input's (B, T, d) layout. The number of heads is ``probs.shape[1]``."""
    dout, q, k, v, probs = _float_arrays(dout, q, k, v, probs)
    _expect_ndim("probs", probs, 4)
    n_heads = int(probs.shape[1])
    _check_multi_head_shapes(q, k, v, n_heads)
    if dout.shape != q.shape or probs.shape != (q.shape[0], n_heads, q.shape[1], k.shape[1]):
        raise ValueError(f"dout {dout.shape} and probs {probs.shape} do not fit q={q.shape} k={k.shape}")
    _, backward = _attention_impls(q.shape[0], n_heads, q.shape[1], k.shape[1], q.shape[2] // n_heads)
    grads = backward(*(_split_heads(a, n_heads) for a in (dout, q, k, v)), probs)
    return tuple(g.reshape(a.shape) for g, a in zip(grads, (q, k, v)))


# ---------------------------------------------------------------------------
# Linear map y = x W + b
# ---------------------------------------------------------------------------


@njit(cache=True)
def _matmul_kernel(a, b, bias, out):
    """out = a @ b + bias for ``a`` (m, k) and ``b`` (k, n).

    Each output element is summed in a float64 accumulator that starts at the bias and adds
    the k products in order, then stored once. Output rows are taken
    four at a time, so that each row of ``b`` is read once for four of them, and the innermost
    loop runs along a row of ``b``: contiguous and free of reductions, which LLVM vectorizes
    without fastmath. (A loop per output row runs the same sums, slower: at the model's sizes
    the inner loops are short and their set-up costs as much as their arithmetic.)
    """
    m, kk = a.shape
    n = b.shape[1]
    acc = np.empty((4, n))
    for r0 in range(0, m, 4):
        rows = min(4, m - r0)
        for i in range(rows):
            for j in range(n):
                acc[i, j] = bias[j]
        if rows == 4:
            c0, c1, c2, c3 = acc[0], acc[1], acc[2], acc[3]
            for p in range(kk):
                a0, a1, a2, a3 = a[r0, p], a[r0 + 1, p], a[r0 + 2, p], a[r0 + 3, p]
                b_row = b[p]
                for j in range(n):
                    b_pj = b_row[j]
                    c0[j] += a0 * b_pj
                    c1[j] += a1 * b_pj
                    c2[j] += a2 * b_pj
                    c3[j] += a3 * b_pj
        else:
            for i in range(rows):
                c = acc[i]
                for p in range(kk):
                    a_ip = a[r0 + i, p]
                    b_row = b[p]
                    for j in range(n):
                        c[j] += a_ip * b_row[j]
        for i in range(rows):
            for j in range(n):
                out[r0 + i, j] = acc[i, j]


@njit(cache=True)
def _linear_grads_kernel(dy, x, w, dx, dw, db):
    """The three gradients of y = x @ w + b: ``dx = dy w^T``, ``dw = x^T dy``, ``db`` =
    column sums of ``dy``.

    (No flags and C-contiguous operands only: every call compiles to one specialization,
    which keeps a first run's compile time down.)"""
    n, d_out = dy.shape
    _matmul_kernel(np.ascontiguousarray(x.T), dy, np.zeros(d_out), dw)
    sums = np.zeros(d_out)
    for r in range(n):
        dy_row = dy[r]
        for j in range(d_out):
            sums[j] += dy_row[j]
    for j in range(d_out):
        db[j] = sums[j]
    # w^T copied once, so that the product reads it along rows.
    _matmul_kernel(dy, np.ascontiguousarray(w.T), np.zeros(w.shape[0]), dx)


def linear_forward_reference(x, w, b):
    """``y = x @ w + b`` for rows ``x`` (n, d_in), ``w`` (d_in, d_out), ``b`` (d_out,); NumPy twin."""
    y = x @ w
    y += b
    return y


def linear_backward_reference(dy, x, w):
    """Gradient of the linear map; NumPy twin: ``dx = dy w^T``, ``dw = x^T dy``, ``db`` = row sums of ``dy``."""
    return dy @ w.T, x.T @ dy, dy.sum(axis=0)


def _linear_forward_loop(x, w, b):
    """Loop twin of :func:`linear_forward_reference` (:func:`_matmul_kernel`)."""
    y = np.empty((x.shape[0], w.shape[1]), x.dtype)
    _matmul_kernel(x, w, b, y)
    return y


def _linear_backward_loop(dy, x, w):
    """Loop twin of :func:`linear_backward_reference` (:func:`_linear_grads_kernel`)."""
    dtype = x.dtype
    dx, dw, db = np.empty(x.shape, dtype), np.empty(w.shape, dtype), np.empty(w.shape[1], dtype)
    _linear_grads_kernel(dy, x, w, dx, dw, db)
    return dx, dw, db


# n * d_in * d_out (the multiply-adds of the product) up to which the loop kernels beat
# NumPy's BLAS products, forward and backward together (benchmarks/bench_ops.py: 0.75-0.8x
# the time at the small model's FFN, (16, 16, 64), par at 4x that, 1.05-1.15x at 10x).
LINEAR_LOOP_WORK_LIMIT = 32 * 16 * 64


def linear_forward(x, w, b):
    """``y = x @ w + b`` for rows ``x`` (n, d_in); see :func:`linear_forward_reference`."""
    x, w, b = _float_arrays(x, w, b)
    _check_fit(x.ndim == 2 and w.ndim == 2 and x.shape[1] == w.shape[0] and b.shape == w.shape[1:],
               "x", x, "w", w, "b", b)
    if USE_NUMBA and x.shape[0] * w.size <= LINEAR_LOOP_WORK_LIMIT:
        return _linear_forward_loop(x, w, b)
    return linear_forward_reference(x, w, b)


def linear_backward(dy, x, w):
    """``(dx, dw, db)`` of the linear map; see :func:`linear_backward_reference`."""
    dy, x, w = _float_arrays(dy, x, w)
    _check_fit(x.ndim == 2 and w.ndim == 2 and x.shape[1] == w.shape[0] and dy.shape == (x.shape[0], w.shape[1]),
               "dy", dy, "x", x, "w", w)
    if USE_NUMBA and x.shape[0] * w.size <= LINEAR_LOOP_WORK_LIMIT:
        return _linear_backward_loop(dy, x, w)
    return linear_backward_reference(dy, x, w)


# ---------------------------------------------------------------------------
# Attention sublayer: projections, attention, output projection
# ---------------------------------------------------------------------------
#
# The model's attention sublayer (``ops.attention_sublayer``; its docstring
# states the forward and the VJP) is a dozen small matrix products around the
# attention kernels. At the model's small sizes each NumPy call costs more than
# its arithmetic, so up to a size one compiled call runs the whole forward and
# one the whole backward; they reuse the attention loop kernels above for the
# softmax attention itself. Bigger sublayers take the NumPy/BLAS composition
# :func:`attention_sublayer_forward_reference`, the readable statement of the
# computation that the loops are tested against.
#
# Arguments: ``x`` (B, T, d), ``memory`` (B, S, d) or None for
# self-attention (the keys and values then read ``x``), every W (d, d), every
# b (d,). The residuals the backward needs are the projections ``q``, ``k``,
# ``v``, the probabilities ``probs`` (B, H, T, S) and the merged heads ``heads``
# (B, T, d), the input of the output projection.


def _project(a, w, b):
    """a @ w + b over the last axis of ``a``, as one 2-D product."""
    rows = a.reshape(-1, a.shape[-1]) @ w
    rows += b
    return rows.reshape(*a.shape[:-1], w.shape[1])


def attention_sublayer_forward_reference(x, memory, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal):
    """The attention sublayer's forward as NumPy/BLAS products around
    :func:`multi_head_attention_forward`; returns ``(out, q, k, v, probs, heads)``::

        q = x Wq + bq,   k = s Wk + bk,   v = s Wv + bv      (s = memory, or x)
        heads, probs = multi-head attention of q, k, v
        out = heads Wo + bo
    """
    source = x if memory is None else memory
    q, k, v = _project(x, wq, bq), _project(source, wk, bk), _project(source, wv, bv)
    heads, probs = multi_head_attention_forward(q, k, v, n_heads, causal)
    return _project(heads, wo, bo), q, k, v, probs, heads


def attention_sublayer_backward_reference(dout, x, memory, wq, wk, wv, wo, q, k, v, probs, heads):
    """The attention sublayer's VJP as NumPy/BLAS products around
    :func:`multi_head_attention_backward`; returns ``(dx, dmemory, dwq, dbq, dwk, dbk, dwv,
    dbv, dwo, dbo)`` with ``dmemory`` None for self-attention::

        dWo = heads^T dout,  dbo = row sums of dout,  dheads = dout Wo^T
        dq, dk, dv = the attention backward at dheads
        dWq = x^T dq,  dWk = s^T dk,  dWv = s^T dv,  db = row sums of dq, dk, dv
        dx = dq Wq^T (+ dk Wk^T + dv Wv^T for self-attention),  dmemory = dk Wk^T + dv Wv^T
    """
    d = x.shape[-1]
    source = x if memory is None else memory
    dout_rows, heads_rows = dout.reshape(-1, d), heads.reshape(-1, d)
    dheads = (dout_rows @ wo.T).reshape(q.shape)
    dq, dk, dv = (g.reshape(-1, d) for g in multi_head_attention_backward(dheads, q, k, v, probs))
    x_rows, source_rows = x.reshape(-1, d), source.reshape(-1, d)
    dsource = dk @ wk.T
    dsource += dv @ wv.T
    dx = dq @ wq.T
    if memory is None:
        dx += dsource
        dmemory = None
    else:
        dmemory = dsource.reshape(memory.shape)
    return (dx.reshape(x.shape), dmemory,
            x_rows.T @ dq, dq.sum(axis=0), source_rows.T @ dk, dk.sum(axis=0),
            source_rows.T @ dv, dv.sum(axis=0), heads_rows.T @ dout_rows, dout_rows.sum(axis=0))


@njit(cache=True)
def _attention_sublayer_forward_kernel(x, source, wq, bq, wk, bk, wv, bv, wo, bo, causal,
                                       q, k, v, probs, heads, out):
    """The whole forward of :func:`_attention_sublayer_forward_loop`, writing ``q``, ``k``,
    ``v``, the nonzero entries of the zeroed ``probs``, ``heads`` and ``out``.

    ``source`` is ``x`` itself for self-attention. The attention between the projections
    is :func:`_attention_forward_kernel` on (B, T, H, Dh) views of the projections.
    """
    n_batch, t_len, d = x.shape
    s_len = source.shape[1]
    n_head = probs.shape[1]
    n_x, n_s = n_batch * t_len, n_batch * s_len
    x_rows = x.reshape((n_x, d))
    source_rows = source.reshape((n_s, d))
    per_head = (n_head, d // n_head)
    for step in range(4):  # one call site of the projection (see the FFN kernels' comment)
        if step == 0:
            rows, weight, bias, dest = x_rows, wq, bq, q.reshape((n_x, d))
        elif step == 1:
            rows, weight, bias, dest = source_rows, wk, bk, k.reshape((n_s, d))
        elif step == 2:
            rows, weight, bias, dest = source_rows, wv, bv, v.reshape((n_s, d))
        else:
            _attention_forward_kernel(q.reshape((n_batch, t_len) + per_head), k.reshape((n_batch, s_len) + per_head),
                                      v.reshape((n_batch, s_len) + per_head), causal,
                                      heads.reshape((n_batch, t_len) + per_head), probs)
            rows, weight, bias, dest = heads.reshape((n_x, d)), wo, bo, out.reshape((n_x, d))
        _matmul_kernel(rows, weight, bias, dest)


@njit(cache=True)
def _attention_sublayer_backward_kernel(dout, x, source, wq, wk, wv, wo, q, k, v, probs, heads, cross,
                                        dx, dsource, dw, db):
    """The whole backward of :func:`_attention_sublayer_backward_loop`, writing every
    gradient: ``dw`` (4, d, d) and ``db`` (4, d) hold those of the q, k, v and output
    projections in this order; ``dsource`` is written only for cross-attention
    (``cross``). For self-attention ``source`` is ``x`` and the key and value paths add
    into ``dx``.

    Each projection's gradients are :func:`_linear_grads_kernel`; the attention backward
    between them is :func:`_attention_backward_kernel`.
    """
    n_batch, t_len, d = x.shape
    s_len = source.shape[1]
    n_head = probs.shape[1]
    n_x, n_s = n_batch * t_len, n_batch * s_len
    per_head = (n_head, d // n_head)
    dheads = np.empty_like(q)
    _linear_grads_kernel(dout.reshape((n_x, d)), heads.reshape((n_x, d)), wo, dheads.reshape((n_x, d)),
                         dw[3], db[3])
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    _attention_backward_kernel(dheads.reshape((n_batch, t_len) + per_head), q.reshape((n_batch, t_len) + per_head),
                               k.reshape((n_batch, s_len) + per_head), v.reshape((n_batch, s_len) + per_head),
                               probs, dq.reshape((n_batch, t_len) + per_head),
                               dk.reshape((n_batch, s_len) + per_head), dv.reshape((n_batch, s_len) + per_head))
    x_rows, source_rows = x.reshape((n_x, d)), source.reshape((n_s, d))
    dx_rows = dx.reshape((n_x, d))
    dsource_by_k, dsource_by_v = np.empty((n_s, d)), np.empty((n_s, d))
    _linear_grads_kernel(dq.reshape((n_x, d)), x_rows, wq, dx_rows, dw[0], db[0])
    _linear_grads_kernel(dk.reshape((n_s, d)), source_rows, wk, dsource_by_k, dw[1], db[1])
    _linear_grads_kernel(dv.reshape((n_s, d)), source_rows, wv, dsource_by_v, dw[2], db[2])
    # (dq Wq^T + dk Wk^T) + dv Wv^T for self-attention, as the reference sums them.
    dsource_rows = dsource.reshape((n_s, d)) if cross else dx_rows
    for r in range(n_s):
        for j in range(d):
            if cross:
                dsource_rows[r, j] = dsource_by_k[r, j] + dsource_by_v[r, j]
            else:
                dsource_rows[r, j] = (dsource_rows[r, j] + dsource_by_k[r, j]) + dsource_by_v[r, j]


def _attention_sublayer_forward_loop(x, memory, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal):
    """Loop twin of :func:`attention_sublayer_forward_reference` (allocates, then runs
    :func:`_attention_sublayer_forward_kernel`)."""
    source = x if memory is None else memory
    batch, t_len, _ = x.shape
    dtype = x.dtype
    q, heads, out = np.empty(x.shape, dtype), np.empty(x.shape, dtype), np.empty(x.shape, dtype)
    k, v = np.empty(source.shape, dtype), np.empty(source.shape, dtype)
    probs = np.zeros((batch, n_heads, t_len, source.shape[1]), dtype)
    _attention_sublayer_forward_kernel(x, source, wq, bq, wk, bk, wv, bv, wo, bo, causal, q, k, v, probs, heads, out)
    return out, q, k, v, probs, heads


def _attention_sublayer_backward_loop(dout, x, memory, wq, wk, wv, wo, q, k, v, probs, heads):
    """Loop twin of :func:`attention_sublayer_backward_reference` (allocates, then runs
    :func:`_attention_sublayer_backward_kernel`)."""
    cross = memory is not None
    source = memory if cross else x
    dtype, d = x.dtype, x.shape[2]
    dx = np.empty(x.shape, dtype)
    dsource = np.empty(source.shape, dtype) if cross else dx  # never written for self-attention
    # The four weight gradients (q, k, v, o) in one array, the four bias gradients in another:
    # two allocations instead of eight, and fewer arguments for the compiled call.
    dw, db = np.empty((4, d, d), dtype), np.empty((4, d), dtype)
    _attention_sublayer_backward_kernel(dout, x, source, wq, wk, wv, wo, q, k, v, probs, heads, cross,
                                        dx, dsource, dw, db)
    return dx, dsource if cross else None, dw[0], db[0], dw[1], db[1], dw[2], db[2], dw[3], db[3]


# Sizes up to which one compiled call for the whole sublayer beats the NumPy/BLAS
# composition, forward and backward together (benchmarks/bench_ops.py): rows * d_model^2,
# the multiply-adds of one projection, and B T S d_model, those of one attention product.
# Measured: the small model's sublayer, (B, T, d) = (2, 8, 16), takes 0.3-0.4x the time
# of the composition; the gradient checker's batches of it, (20, 8, 16), about 0.8x;
# (8, 16, 32) about 1.2x and the medium model's, (4, 32, 64), 1.1-1.5x (both take the
# composition).
SUBLAYER_LOOP_WORK_LIMIT = 64 * 32 * 32
SUBLAYER_ATTENTION_LOOP_WORK_LIMIT = 32 * 32 * 32


def _attention_sublayer_impls(batch, t_len, s_len, d_model, n_heads):
    """(forward, backward) of the attention sublayer for this size."""
    if (USE_NUMBA and batch * max(t_len, s_len) * d_model * d_model <= SUBLAYER_LOOP_WORK_LIMIT
            and batch * t_len * s_len * d_model <= SUBLAYER_ATTENTION_LOOP_WORK_LIMIT):
        return _attention_sublayer_forward_loop, _attention_sublayer_backward_loop
    return attention_sublayer_forward_reference, attention_sublayer_backward_reference


def _check_attention_sublayer_shapes(x, memory, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal):
    """x is (B, T, d), memory None or (B, S, d), every W (d, d), every b (d,), and ``n_heads``
    splits d (see :func:`_check_multi_head_shapes`)."""
    if x.ndim == 3:
        d = x.shape[2]
        if (wq.shape == wk.shape == wv.shape == wo.shape == (d, d) and bq.shape == bk.shape == bv.shape
                == bo.shape == (d,) and memory is None and type(n_heads) is int and n_heads >= 1
                and d % n_heads == 0):
            return  # the common case, self-attention, in one expression
    else:
        raise ValueError(f"x of shape {x.shape} is not (batch, seq, d_model)")
    weights, biases = (wq, wk, wv, wo), (bq, bk, bv, bo)
    if any(w.shape != (d, d) for w in weights) or any(b.shape != (d,) for b in biases):
        raise ValueError(f"weights of shapes {', '.join(str(w.shape) for w in weights)} and biases of shapes "
                         f"{', '.join(str(b.shape) for b in biases)} do not fit d_model {d}")
    if memory is not None and (memory.ndim != 3 or memory.shape[0] != x.shape[0] or memory.shape[2] != d):
        raise ValueError(f"memory of shape {memory.shape} does not fit x of shape {x.shape}")
    source = x if memory is None else memory
    _check_multi_head_shapes(x, source, source, n_heads, causal)


def attention_sublayer_forward(x, memory, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal):
    """The attention sublayer's forward; returns ``(out, q, k, v, probs, heads)``.

    ``memory`` is None for self-attention. See :func:`attention_sublayer_forward_reference`
    and ``ops.attention_sublayer``.
    """
    if memory is None:
        x, wq, bq, wk, bk, wv, bv, wo, bo = _float_arrays(x, wq, bq, wk, bk, wv, bv, wo, bo)
        s_len = x.shape[1] if x.ndim == 3 else 0
    else:
        x, wq, bq, wk, bk, wv, bv, wo, bo, memory = _float_arrays(x, wq, bq, wk, bk, wv, bv, wo, bo, memory)
        s_len = memory.shape[1] if memory.ndim == 3 else 0
    causal = bool(causal)
    _check_attention_sublayer_shapes(x, memory, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal)
    forward, _ = _attention_sublayer_impls(x.shape[0], x.shape[1], s_len, x.shape[2], n_heads)
    return forward(x, memory, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal)


def attention_sublayer_backward(dout, x, memory, wq, wk, wv, wo, q, k, v, probs, heads, *,
                                residuals_checked=False):
    """The attention sublayer's VJP; returns ``(dx, dmemory, dwq, dbq, dwk, dbk, dwv, dbv,
    dwo, dbo)``, ``dmemory`` None for self-attention. The arguments after ``dout`` are the
    forward's inputs and outputs (``residuals_checked``: unchanged, see :func:`_cotangent`).
    See :func:`attention_sublayer_backward_reference`."""
    if residuals_checked and _plain_arrays(x, wq, wk, wv, wo) and (memory is None or _plain_arrays(memory)):
        dout = _cotangent(dout, x.dtype, x.shape)
        n_heads = probs.shape[1]
    else:
        if memory is None:
            dout, x, wq, wk, wv, wo, q, k, v, probs, heads = _float_arrays(dout, x, wq, wk, wv, wo, q, k, v,
                                                                            probs, heads)
        else:
            dout, x, wq, wk, wv, wo, q, k, v, probs, heads, memory = _float_arrays(
                dout, x, wq, wk, wv, wo, q, k, v, probs, heads, memory)
        n_heads = probs.shape[1] if probs.ndim == 4 else 0
        if not (dout.shape == x.shape == q.shape == heads.shape and x.ndim == 3 and n_heads
                and k.shape == v.shape == (x.shape if memory is None else memory.shape)
                and probs.shape == (x.shape[0], n_heads, x.shape[1], k.shape[1])
                and wq.shape == wk.shape == wv.shape == wo.shape == (x.shape[2], x.shape[2])
                and x.shape[2] % n_heads == 0):
            raise ValueError(f"dout {dout.shape}, x {x.shape}, q {q.shape}, k {k.shape}, v {v.shape}, probs "
                             f"{probs.shape}, heads {heads.shape} and weights {wq.shape} do not fit one "
                             f"attention sublayer")
    _, backward = _attention_sublayer_impls(x.shape[0], x.shape[1], k.shape[1], x.shape[2], n_heads)
    return backward(dout, x, memory, wq, wk, wv, wo, q, k, v, probs, heads)


# ---------------------------------------------------------------------------
# GELU
# ---------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_VARIANTS = ("tanh", "none")

# NumPy has no erf ufunc; math.erf element by element is exact and is the same
# libm function the Numba kernel calls.
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _check_approximate(approximate):
    if approximate not in _GELU_VARIANTS:
        raise ValueError(f"approximate must be 'tanh' or 'none', got {approximate!r}")


def gelu_forward_reference(x, approximate):
    """GELU of ``x`` (any shape, 0-d included: an array is returned); NumPy twin.

    ``approximate="none"`` (exact)::

        y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))

    ``approximate="tanh"``::

        u = sqrt(2/pi) (x + 0.044715 x^3)
        y = 0.5 x (1 + tanh(u))
    """
    _check_approximate(approximate)
    if approximate == "tanh":
        u = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)
        return np.asarray(0.5 * x * (1.0 + np.tanh(u)))
    cdf = 0.5 * (1.0 + _erf(x * _INV_SQRT_2).astype(x.dtype, copy=False))
    return np.asarray(x * cdf)


def gelu_backward_reference(dy, x, approximate):
    """Gradient of GELU; NumPy twin. ``dx = dy * gelu'(x)`` with

    ``approximate="none"``::

        gelu'(x) = Phi(x) + x phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)

    ``approximate="tanh"`` (``u`` as in the forward, ``th = tanh(u)``)::

        gelu'(x) = 0.5 (1 + th) + 0.5 x (1 - th^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    """
    _check_approximate(approximate)
    if approximate == "tanh":
        x2 = x * x
        th = np.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x2 * x))
        du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * x2)
        return np.asarray(dy * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du_dx))
    cdf = 0.5 * (1.0 + _erf(x * _INV_SQRT_2).astype(x.dtype, copy=False))
    pdf = _INV_SQRT_2PI * np.exp(-0.5 * x * x)
    return np.asarray(dy * (cdf + x * pdf))


@njit(cache=True)
def _gelu_tanh(x):
    """The tanh GELU of one float64 (the loops' scalar: the FFN kernel's too)."""
    u = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)
    return 0.5 * x * (1.0 + math.tanh(u))


@njit(cache=True)
def _gelu_tanh_slope(x):
    """Its derivative at one float64."""
    x2 = x * x
    th = math.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x2 * x))
    du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * x2)
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du_dx


@njit(cache=True)
def _gelu_forward_loop(x, approximate):
    """Loop twin of :func:`gelu_forward_reference` (any shape)."""
    flat = x.ravel()
    y = np.empty_like(flat)
    if approximate == "tanh":
        for i in range(flat.size):
            y[i] = _gelu_tanh(float(flat[i]))
    elif approximate == "none":
        for i in range(flat.size):
            xi = float(flat[i])
            y[i] = xi * (0.5 * (1.0 + math.erf(xi * _INV_SQRT_2)))
    else:
        raise ValueError("approximate must be 'tanh' or 'none'")
    return y.reshape(x.shape)


@njit(cache=True)
def _gelu_backward_loop(dy, x, approximate):
    """Loop twin of :func:`gelu_backward_reference` (any shape)."""
    flat = x.ravel()
    dy_flat = dy.ravel()
    dx = np.empty_like(flat)
    if approximate == "tanh":
        for i in range(flat.size):
            dx[i] = dy_flat[i] * _gelu_tanh_slope(float(flat[i]))
    elif approximate == "none":
        for i in range(flat.size):
            xi = float(flat[i])
            cdf = 0.5 * (1.0 + math.erf(xi * _INV_SQRT_2))
            pdf = _INV_SQRT_2PI * math.exp(-0.5 * xi * xi)
            dx[i] = dy_flat[i] * (cdf + xi * pdf)
    else:
        raise ValueError("approximate must be 'tanh' or 'none'")
    return dx.reshape(x.shape)


def gelu_forward(x, approximate):
    """GELU of ``x`` (any shape), ``approximate`` in {"tanh", "none"}.

    See :func:`gelu_forward_reference` for both formulas.
    """
    _check_approximate(approximate)
    (x,) = _float_arrays(x)
    # Flat in, shape back out: the loop kernel compiles once per dtype, not per ndim.
    return _pick(_gelu_forward_loop, gelu_forward_reference)(x.reshape(-1), approximate).reshape(x.shape)


def gelu_backward(dy, x, approximate):
    """GELU backward ``dx = dy * gelu'(x)``; see :func:`gelu_backward_reference`."""
    _check_approximate(approximate)
    dy, x = _float_arrays(dy, x)
    if dy.shape != x.shape:
        raise ValueError(f"dy shape {dy.shape} does not match x shape {x.shape}")
    kernel = _pick(_gelu_backward_loop, gelu_backward_reference)
    return kernel(dy.reshape(-1), x.reshape(-1), approximate).reshape(x.shape)


# ---------------------------------------------------------------------------
# ReLU backward
# ---------------------------------------------------------------------------


def relu_backward_reference(dy, y):
    """Gradient of ReLU read off its output ``y = max(x, 0)``; NumPy twin.

    ``dx = dy`` where ``y > 0`` (exactly where ``x > 0``), else 0.
    """
    return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)


@njit(cache=True)
def _relu_backward_kernel(dy, y, dx):
    """The loop of :func:`_relu_backward_loop` over flat arrays, writing ``dx``."""
    for i in range(y.size):
        dx[i] = dy[i] if y[i] > 0 else 0.0


def _relu_backward_loop(dy, y):
    """Loop twin of :func:`relu_backward_reference`: one pass, no temporary mask."""
    dx = np.empty_like(y)
    # Flat views: one compilation per dtype, whatever the shape.
    _relu_backward_kernel(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


def relu_backward(dy, y):
    """ReLU backward from the output: ``dx = dy * (y > 0)``, any shape."""
    dy, y = _float_arrays(dy, y)
    if dy.shape != y.shape:
        raise ValueError(f"dy shape {dy.shape} does not match y shape {y.shape}")
    return _pick(_relu_backward_loop, relu_backward_reference)(dy, y)


# ---------------------------------------------------------------------------
# Feed-forward sublayer: linear, activation, linear
# ---------------------------------------------------------------------------
#
# The model's FFN (``ops.feed_forward``; its docstring states the forward and the
# VJP): F(x) = act(x W1 + b1) W2 + b2 on rows ``x`` (n, d), W1 (d, d_ff), W2
# (d_ff, d), with act ReLU, the tanh GELU, or multiplication by a fixed 0/1
# ``mask`` (n, d_ff) (the gradient checker's frozen ReLU pattern). Up to the
# linear loop kernels' size, one compiled call runs the whole forward and one the
# whole backward, with the same loops in the same order as the composition
# (:func:`feed_forward_forward_reference`), so the two agree to the bit; bigger
# FFNs take the composition. The residuals are ``hidden`` = x W1 + b1 and
# ``acted`` = act(hidden). Only GELU's backward reads ``hidden``: for ReLU and the
# mask the loops write ``acted`` over it and return that one array for both.
#
# The two products of each direction go through one call site, in a loop of two steps:
# LLVM inlines a callee once per call site, and the second copy of the product loops cost
# about 0.3 s (forward) and 0.8 s (backward) of a first run's compilation, for no speed.

FFN_ACTIVATIONS = ("relu", "gelu", "mask")
_FFN_RELU, _FFN_GELU, _FFN_MASK = 0, 1, 2  # their codes in the compiled kernels


def _activate(hidden, activation, mask):
    """act(hidden) as the composition computes it (a new array)."""
    if activation == "relu":
        return np.maximum(hidden, 0)  # NaN stays NaN, for the next norm to reject
    if activation == "gelu":
        return gelu_forward(hidden, "tanh")
    return hidden * mask


def _activation_backward(dacted, hidden, acted, activation, mask):
    if activation == "relu":
        return relu_backward(dacted, acted)
    if activation == "gelu":
        return gelu_backward(dacted, hidden, "tanh")
    return dacted * mask


def feed_forward_forward_reference(x, w1, b1, w2, b2, activation, mask):
    """The FFN's forward as this module's linear maps around the activation; returns
    ``(out, hidden, acted)``::

        hidden = x W1 + b1,   acted = act(hidden),   out = acted W2 + b2
    """
    hidden = linear_forward(x, w1, b1)
    acted = _activate(hidden, activation, mask)
    return linear_forward(acted, w2, b2), hidden, acted


def feed_forward_backward_reference(dout, x, w1, w2, hidden, acted, activation, mask):
    """The FFN's VJP as the linear maps' around the activation's; returns ``(dx, dw1, db1,
    dw2, db2)``::

        dacted, dW2, db2 = linear VJP at dout     (dacted = dout W2^T, dW2 = acted^T dout)
        dhidden = act'(hidden) * dacted           (ReLU: where acted > 0; mask: * mask)
        dx, dW1, db1 = linear VJP at dhidden
    """
    dacted, dw2, db2 = linear_backward(dout, acted, w2)
    dhidden = _activation_backward(dacted, hidden, acted, activation, mask)
    dx, dw1, db1 = linear_backward(dhidden, x, w1)
    return dx, dw1, db1, dw2, db2


@njit(cache=True)
def _feed_forward_forward_kernel(x, w1, b1, w2, b2, activation, mask, hidden, acted, out):
    """The whole forward of :func:`_feed_forward_forward_loop`: writes ``hidden``, ``acted``
    (which may be ``hidden`` itself) and ``out``."""
    for step in range(2):  # one call site of the product (see the section's comment)
        if step == 0:
            rows, weight, bias, dest = x, w1, b1, hidden
        else:
            h, a, m = hidden.ravel(), acted.ravel(), mask.ravel()
            for i in range(h.size):
                if activation == _FFN_RELU:
                    a[i] = 0.0 if h[i] < 0 else h[i]  # np.maximum(h, 0): NaN and -0.0 kept
                elif activation == _FFN_MASK:
                    a[i] = h[i] * m[i]
                else:
                    a[i] = _gelu_tanh(float(h[i]))
            rows, weight, bias, dest = acted, w2, b2, out
        _matmul_kernel(rows, weight, bias, dest)


@njit(cache=True)
def _feed_forward_backward_kernel(dout, x, w1, w2, hidden, acted, activation, mask,
                                  dacted, dx, dw1, db1, dw2, db2):
    """The whole backward of :func:`_feed_forward_backward_loop`, writing every gradient
    (``dacted`` is scratch: dacted, then dhidden in place)."""
    for step in range(2):  # one call site of the product's gradients (as in the forward)
        if step == 0:
            drows, rows, weight, drows_in, dweight, dbias = dout, acted, w2, dacted, dw2, db2
        else:
            d, h, a, m = dacted.ravel(), hidden.ravel(), acted.ravel(), mask.ravel()
            for i in range(d.size):
                if activation == _FFN_RELU:
                    d[i] = d[i] if a[i] > 0 else 0.0
                elif activation == _FFN_MASK:
                    d[i] = d[i] * m[i]
                else:
                    d[i] = d[i] * _gelu_tanh_slope(float(h[i]))
            drows, rows, weight, drows_in, dweight, dbias = dacted, x, w1, dx, dw1, db1
        _linear_grads_kernel(drows, rows, weight, drows_in, dweight, dbias)


def _feed_forward_forward_loop(x, w1, b1, w2, b2, activation, mask):
    """Loop twin of :func:`feed_forward_forward_reference` (allocates, then runs the kernel)."""
    dtype, rows = x.dtype, x.shape[0]
    hidden = np.empty((rows, w1.shape[1]), dtype)
    acted = np.empty_like(hidden) if activation == "gelu" else hidden  # ReLU, mask: in place
    out = np.empty((rows, w2.shape[1]), dtype)
    _feed_forward_forward_kernel(x, w1, b1, w2, b2, _ffn_code(activation), _mask_or_empty(mask, dtype),
                                 hidden, acted, out)
    return out, hidden, acted


def _feed_forward_backward_loop(dout, x, w1, w2, hidden, acted, activation, mask):
    """Loop twin of :func:`feed_forward_backward_reference` (allocates, then runs the kernel)."""
    dtype = x.dtype
    dacted, dx = np.empty(acted.shape, dtype), np.empty(x.shape, dtype)
    dw1, db1 = np.empty(w1.shape, dtype), np.empty(w1.shape[1], dtype)
    dw2, db2 = np.empty(w2.shape, dtype), np.empty(w2.shape[1], dtype)
    _feed_forward_backward_kernel(dout, x, w1, w2, hidden, acted, _ffn_code(activation),
                                  _mask_or_empty(mask, dtype), dacted, dx, dw1, db1, dw2, db2)
    return dx, dw1, db1, dw2, db2


def _ffn_code(activation):
    return _FFN_RELU if activation == "relu" else _FFN_GELU if activation == "gelu" else _FFN_MASK


def _mask_or_empty(mask, dtype):
    """The mask, or an empty 2-D array in its place: one compiled specialization per dtype."""
    return np.empty((0, 0), dtype) if mask is None else mask


def _feed_forward_impls(rows, w1):
    """(forward, backward) of the FFN for this size: the loops up to the linear loop limit."""
    if USE_NUMBA and rows * w1.size <= LINEAR_LOOP_WORK_LIMIT:
        return _feed_forward_forward_loop, _feed_forward_backward_loop
    return feed_forward_forward_reference, feed_forward_backward_reference


def _check_activation(activation, mask):
    if activation not in FFN_ACTIVATIONS or (mask is None) != (activation != "mask"):
        raise ValueError(f"activation must be one of {', '.join(FFN_ACTIVATIONS)}, with a mask exactly for "
                         f"'mask'; got {activation!r} and {'a' if mask is not None else 'no'} mask")


def feed_forward_forward(x, w1, b1, w2, b2, activation, mask=None):
    """The FFN's forward on rows ``x`` (n, d); returns ``(out, hidden, acted)``. See
    :func:`feed_forward_forward_reference`."""
    _check_activation(activation, mask)
    if mask is None:
        x, w1, b1, w2, b2 = _float_arrays(x, w1, b1, w2, b2)
    else:
        x, w1, b1, w2, b2, mask = _float_arrays(x, w1, b1, w2, b2, mask)
    _check_fit(x.ndim == 2 and w1.ndim == 2 and w2.ndim == 2 and x.shape[1] == w1.shape[0]
               and b1.shape == w1.shape[1:] and w2.shape[0] == w1.shape[1] and b2.shape == w2.shape[1:]
               and (mask is None or mask.shape == (x.shape[0], w1.shape[1])),
               "x", x, "w1", w1, "b1", b1, "w2", w2, "b2", b2, "mask", mask)
    forward, _ = _feed_forward_impls(x.shape[0], w1)
    return forward(x, w1, b1, w2, b2, activation, mask)


def feed_forward_backward(dout, x, w1, w2, hidden, acted, activation, mask=None, *, residuals_checked=False):
    """The FFN's VJP; returns ``(dx, dw1, db1, dw2, db2)``. The arguments after ``dout`` are
    the forward's inputs and residuals (``residuals_checked``: unchanged, see
    :func:`_cotangent`). See :func:`feed_forward_backward_reference`."""
    if residuals_checked and _plain_arrays(x, w1, w2) and (mask is None or _plain_arrays(mask)):
        dout = _cotangent(dout, x.dtype, (x.shape[0], w2.shape[1]))
    else:
        _check_activation(activation, mask)
        if mask is None:
            dout, x, w1, w2, hidden, acted = _float_arrays(dout, x, w1, w2, hidden, acted)
        else:
            dout, x, w1, w2, hidden, acted, mask = _float_arrays(dout, x, w1, w2, hidden, acted, mask)
        hidden_shape = (x.shape[0], w1.shape[1]) if x.ndim == 2 and w1.ndim == 2 else None
        _check_fit(hidden_shape is not None and w2.ndim == 2 and x.shape[1] == w1.shape[0]
                   and w2.shape[0] == w1.shape[1] and dout.shape == (x.shape[0], w2.shape[1])
                   and hidden.shape == acted.shape == hidden_shape and (mask is None or mask.shape == hidden_shape),
                   "dout", dout, "x", x, "w1", w1, "w2", w2, "hidden", hidden, "acted", acted, "mask", mask)
    _, backward = _feed_forward_impls(x.shape[0], w1)
    return backward(dout, x, w1, w2, hidden, acted, activation, mask)


# ---------------------------------------------------------------------------
# Compilation cache
# ---------------------------------------------------------------------------

# The kernels a small model runs on its first gradient and gradient check, by norm: the
# ones whose compilation a first command waits for. (The attention loop kernels are
# compiled with the sublayer kernels that call them; the gradient checker's batched passes
# take the same loops. One FFN kernel each way serves both activations.)
_SUBLAYER_KERNELS = (
    _attention_sublayer_forward_kernel,
    _attention_sublayer_backward_kernel,
    _feed_forward_forward_kernel,
    _feed_forward_backward_kernel,
)
_FIRST_RUN_KERNELS = {
    "layernorm": (_layer_norm_forward_kernel, _layer_norm_backward_kernel, *_SUBLAYER_KERNELS),
    "rmsnorm": (_rms_norm_forward_loop, _rms_norm_backward_loop, *_SUBLAYER_KERNELS),
}


def compile_cache_is_cold(dtype="float64", norm="layernorm") -> bool:
    """Whether the first run of a model of ``dtype`` and ``norm`` in this process will
    compile kernels.

    True when Numba is in use and one of the kernels such a model runs first has no
    signature for ``dtype`` either compiled in this process or in Numba's on-disk cache
    (missing, or stale after an edit of this file or a Numba upgrade). Reads the cache's
    index files only: compiles nothing, never raises, and answers False when it cannot
    tell. The caller can then say that a few seconds of compilation are coming.
    """
    if not USE_NUMBA:
        return False
    try:
        dtype_name = str(np.dtype(dtype))
        for kernel in _FIRST_RUN_KERNELS[norm]:
            # A signature's first argument is the kernel's input array, of the model's dtype.
            signatures = [*kernel.signatures, *(key[0] for key in kernel._cache._cache_file._load_index())]
            if not any(dtype_name in str(signature[0]) for signature in signatures):
                return True
        return False
    except Exception:  # a Numba without these internals, an unreadable index: unsure
        return False


def available_cpus():
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def compile_first_run_kernels(dtype="float64", norm="layernorm"):
    """Compile (or load from the cache) the loop kernels a small model's pass runs, the
    backward ones in a forked process while this one compiles the forward ones.

    Numba compiles in the calling thread, one kernel after the other: about ten seconds for
    a first pass on this module's kernels. Two processes halve the wait on two cores; the
    forked one leaves its kernels in the on-disk cache, where this process finds them on
    first use. Each kernel runs once on small arrays of ``dtype`` and of the shapes of a
    default model, ``norm`` saying which norm kernels it needs (one FFN kernel each way
    serves both activations); kernels that are not run here (other configurations, large
    sizes) compile on first use as usual. Without Numba, or without ``os.fork``, the kernels compile here, in order.
    """
    if not USE_NUMBA:
        return
    dtype = np.dtype(dtype)
    backward = None
    if hasattr(os, "fork") and available_cpus() > 1:
        backward = os.fork()
        if backward == 0:
            try:
                _run_backward_kernels(dtype)
            finally:
                os._exit(0)  # never the parent's exit handlers
    try:
        _run_forward_kernels(dtype, norm)
    finally:
        if backward is not None:
            os.waitpid(backward, 0)
    if backward is None:
        _run_backward_kernels(dtype)


# A default model's shapes: batch 2, seq 8 (16 rows), d_model 16, 2 heads, d_ff 64.
_SMALL_BATCH, _SMALL_SEQ, _SMALL_D, _SMALL_HEADS, _SMALL_D_FF = 2, 8, 16, 2, 64


def _small_arrays(dtype):
    """A maker of seeded arrays of ``dtype``: ``array(*shape)``."""
    rng = np.random.default_rng(0)
    return lambda *shape: rng.standard_normal(shape).astype(dtype)


def _run_forward_kernels(dtype, norm):
    """The forward kernels, the norm's backward one and the attention backward's inner kernel
    (the other side's kernels take longer to compile: these even the two out)."""
    array = _small_arrays(dtype)
    rows, d, d_ff = _SMALL_BATCH * _SMALL_SEQ, _SMALL_D, _SMALL_D_FF
    # First, the attention backward's inner kernel, of the types the sublayer's backward
    # kernel calls it with: the other process finds it in the on-disk cache by the time it
    # gets there (after the FFN's backward), which evens out the two sides' work.
    heads = array(_SMALL_BATCH, _SMALL_SEQ, d)
    multi_head_attention_backward(heads, heads, heads, heads, np.abs(array(_SMALL_BATCH, _SMALL_HEADS, _SMALL_SEQ,
                                                                           _SMALL_SEQ)))
    x, gamma, beta = array(rows, d), array(d), array(d)
    if norm == "rmsnorm":
        _, rrms = rms_norm_forward(x, gamma, 1e-5)
        rms_norm_backward(array(rows, d), x, gamma, rrms)
    else:
        _, mean, rstd = layer_norm_forward(x, gamma, beta, 1e-5)
        layer_norm_backward(array(rows, d), x, gamma, mean, rstd)
    feed_forward_forward(x, array(d, d_ff), array(d_ff), array(d_ff, d), array(d), "relu")
    weights = [array(d, d) if i % 2 == 0 else array(d) for i in range(8)]
    attention_sublayer_forward(array(_SMALL_BATCH, _SMALL_SEQ, d), None, *weights, _SMALL_HEADS, False)


def _run_backward_kernels(dtype):
    """The FFN's and the attention sublayer's backward kernels (the slow ones to compile)."""
    array = _small_arrays(dtype)
    batch, seq, d = _SMALL_BATCH, _SMALL_SEQ, _SMALL_D
    # Any values of the residuals' shapes do: only their types decide what compiles.
    rows, hidden = array(batch * seq, d), array(batch * seq, _SMALL_D_FF)
    feed_forward_backward(array(batch * seq, d), rows, array(d, _SMALL_D_FF), array(_SMALL_D_FF, d), hidden, hidden,
                          "relu")
    x, q, k, v, heads = (array(batch, seq, d) for _ in range(5))
    probs = np.abs(array(batch, _SMALL_HEADS, seq, seq))
    attention_sublayer_backward(array(batch, seq, d), x, None, array(d, d), array(d, d), array(d, d), array(d, d),
                                q, k, v, probs, heads)
