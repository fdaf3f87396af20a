"""Every primitive of the engine: its forward and its vector-Jacobian product, side by side.

A primitive is a pair of plain-array functions registered in ``PRIMITIVES``:

    forward(*inputs, **params) -> (output, residuals)
    vjp(doutput, residuals)    -> one cotangent per input (None where there is none)

Positional arguments are the differentiable inputs (Tensors, arrays or Python numbers);
keyword arguments are static parameters (axis, eps, causal, ...). ``defprimitive`` turns
the pair into the function users call: it unwraps Tensors, runs the forward and, if a tape
is recording and an input needs a gradient, records ``(vjp, residuals, inputs, output)``;
while a ``replay.Recording`` is active it also notes the call for a later replay.

Broadcasting binary ops sum their cotangents back to each input's shape (``unbroadcast``).
The fused ops (layer_norm, rms_norm, softmax, attention, cross_entropy, gelu) call the
hand-written kernels of ``kernels.py``; their docstrings give the backward formulas.

Two sublayer primitives run a whole sublayer as one tape record, which saves the tape's
work between its pieces (Tensors, records, gradient accumulation, repeated checks):
``attention_sublayer`` (projections, attention, output projection) and ``feed_forward``
(linear, activation, linear) each have their own VJP, written out in their docstrings and
run by ``kernels.attention_sublayer_forward``/``_backward`` and
``kernels.feed_forward_forward``/``_backward`` (one compiled call each way for small
sublayers). Weights moved one per batch row (the gradient checker's batched finite
differences) take the FFN as the composition of the registered ``linear`` and
``relu``/``gelu``/``mul`` instead, looked up in ``PRIMITIVES`` like every op.

Checks. Every forward rejects bad inputs with a ValueError naming the op and the shapes.
Each input is checked in one place: what goes to a kernel by the kernel's dispatcher (the
op adds its name to the message), the rest by the op, the common case (plain float arrays
of one dtype) first and in a few comparisons. (The products' shapes are looked at by the op
too: it routes weights moved per batch row on them.) A VJP hands the kernel its forward's own
residuals back (``residuals_checked=True``): there only the cotangent is new, and only it is
checked. NaN and inf: the norms reject them from inside their kernels at no cost; softmax,
the 4-D attention and cross_entropy test their inputs; the products (linear, the sublayers)
let them through to the next norm, which rejects them (a model has a norm at least every
layer, except ReZero).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from lnref.autograd import kernels
from lnref.autograd.replay import _ACTIVE_RECORDINGS
from lnref.autograd.tensor import _ACTIVE_TAPES, FLOAT_DTYPES, Tensor


class Primitive(NamedTuple):
    name: str
    forward: Callable
    vjp: Callable


PRIMITIVES: dict[str, Primitive] = {}
_new_tensor = Tensor.__new__


def defprimitive(name: str, forward: Callable, vjp: Callable) -> Callable:
    """Register ``forward``/``vjp`` under ``name`` and return the callable primitive."""
    PRIMITIVES[name] = Primitive(name, forward, vjp)

    def apply(*args, **params):
        primitive = PRIMITIVES[name]  # looked up per call: the registry is the one source of truth
        # One pass over the arguments: the arrays for the forward, and the inputs a gradient
        # flows to (None for constants and for Tensors that need none). This function runs
        # for every op of every pass, so it is written out plainly (no comprehensions, which
        # are function calls of their own).
        values = []
        inputs = []
        needs_grad = False
        for arg in args:
            if isinstance(arg, Tensor):
                values.append(arg.value)
                if arg.requires_grad:
                    inputs.append(arg)
                    needs_grad = True
                    continue
            else:
                values.append(arg)
            inputs.append(None)
        out, residuals = primitive.forward(*values, **params)
        result = _new_tensor(Tensor)  # Tensor.wrap, inlined
        result.value, result.grad, result.retain_grad = out, None, False
        if needs_grad and _ACTIVE_TAPES:
            result.requires_grad = True
            _ACTIVE_TAPES[-1].record(primitive.vjp, residuals, tuple(inputs), result)
        else:
            result.requires_grad = False
        if _ACTIVE_RECORDINGS:
            _ACTIVE_RECORDINGS[-1].calls.append((primitive, args, params, result))
        return result

    apply.__name__ = name
    apply.__doc__ = forward.__doc__
    return apply


# ----- input checks -------------------------------------------------------------------

def _shapes(*arrays):
    return " and ".join(str(np.shape(a)) for a in arrays)


def _check_float(op: str, *arrays):
    """All array inputs share one float dtype (float64 or float32); numbers are free."""
    dtype = None
    for a in arrays:
        if not isinstance(a, np.ndarray):
            continue
        if dtype is None:
            dtype = a.dtype
            if dtype not in FLOAT_DTYPES:
                raise ValueError(f"{op}: dtype {dtype} is not float64 or float32 (shapes {_shapes(*arrays)})")
        elif a.dtype is not dtype and a.dtype != dtype:
            raise ValueError(f"{op}: mixed dtypes {dtype} and {a.dtype} (shapes {_shapes(*arrays)}); cast one first")


_FLOAT64, _FLOAT32 = np.dtype(np.float64), np.dtype(np.float32)


def _plain_float_arrays(*arrays) -> bool:
    """True when every argument is an ndarray (not a subclass) of one float64/float32 dtype.

    The fast path of the checks, mostly identity tests. When it says False the op runs its
    full checks, which raise the clear errors (or accept a valid input that merely is
    unusual, such as a memmap).
    """
    first = arrays[0]
    if type(first) is not np.ndarray:
        return False
    dtype = first.dtype
    if dtype is not _FLOAT64 and dtype is not _FLOAT32 and dtype not in FLOAT_DTYPES:
        return False
    for a in arrays:
        # Equal dtypes need not be one object (arrays made by Numba carry their own).
        if type(a) is not np.ndarray or a.dtype is not dtype and a.dtype != dtype:
            return False
    return True


def _check_finite(op: str, *arrays):
    """Raise if an array holds a NaN or an inf.

    A sum is finite only if every term is (NaN and inf propagate, inf - inf is NaN), so
    one reduction clears the common case; the exact test runs only when the sum is not
    finite, which a finite array can also give by overflowing.
    """
    for a in arrays:
        if not math.isfinite(np.sum(a)) and not np.isfinite(a).all():
            raise ValueError(f"{op}: input of shape {np.shape(a)} contains NaN or inf")


def _kernel_error(op: str, error: Exception, *arrays):
    """A kernel dispatcher's TypeError/ValueError as this op's ValueError."""
    return ValueError(f"{op}: {error} (inputs of shapes {_shapes(*arrays)})")


def _broadcast_shape(op: str, a, b):
    shape_a, shape_b = np.shape(a), np.shape(b)
    if shape_a == shape_b:
        return shape_a
    try:
        return np.broadcast_shapes(shape_a, shape_b)
    except ValueError:
        raise ValueError(f"{op}: shapes {_shapes(a, b)} do not broadcast") from None


def _binary_shapes(op: str, a, b):
    """(shape of a, shape of b) once both are checked: one float dtype, broadcastable shapes.

    The common case, two plain arrays of one shape and dtype, is decided first."""
    if type(a) is np.ndarray and type(b) is np.ndarray and a.shape == b.shape and _plain_float_arrays(a, b):
        return a.shape, a.shape
    _check_float(op, a, b)
    _broadcast_shape(op, a, b)
    return np.shape(a), np.shape(b)


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched to reach it."""
    if grad.shape == shape or grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


# ----- elementwise --------------------------------------------------------------------

def _add_fwd(a, b):
    shapes = _binary_shapes("add", a, b)
    return a + b, shapes


def _add_vjp(dout, shapes):
    return unbroadcast(dout, shapes[0]), unbroadcast(dout, shapes[1])


add = defprimitive("add", _add_fwd, _add_vjp)


def _sub_fwd(a, b):
    shapes = _binary_shapes("sub", a, b)
    return a - b, shapes


def _sub_vjp(dout, shapes):
    return unbroadcast(dout, shapes[0]), unbroadcast(-dout, shapes[1])


sub = defprimitive("sub", _sub_fwd, _sub_vjp)


def _mul_fwd(a, b):
    _binary_shapes("mul", a, b)
    return a * b, (a, b)


def _mul_vjp(dout, inputs):
    a, b = inputs
    return unbroadcast(dout * b, np.shape(a)), unbroadcast(dout * a, np.shape(b))


mul = defprimitive("mul", _mul_fwd, _mul_vjp)


def _div_fwd(a, b):
    _binary_shapes("div", a, b)
    return a / b, (a, b)


def _div_vjp(dout, inputs):
    a, b = inputs
    return unbroadcast(dout / b, np.shape(a)), unbroadcast(-dout * a / (b * b), np.shape(b))


div = defprimitive("div", _div_fwd, _div_vjp)


def _neg_fwd(x):
    return -x, None


def _neg_vjp(dout, _):
    return (-dout,)


neg = defprimitive("neg", _neg_fwd, _neg_vjp)


def _scale_fwd(x, *, factor):
    """x * factor for a constant ``factor`` (not differentiated)."""
    if not np.isfinite(factor):
        raise ValueError(f"scale: factor {factor} is not finite (input shape {np.shape(x)})")
    return x * factor, factor


def _scale_vjp(dout, factor):
    return (dout * factor,)


scale = defprimitive("scale", _scale_fwd, _scale_vjp)


def _exp_fwd(x):
    out = np.exp(x)
    return out, out


def _exp_vjp(dout, out):
    return (dout * out,)


exp = defprimitive("exp", _exp_fwd, _exp_vjp)


def _log_fwd(x):
    if np.any(x <= 0):
        raise ValueError(f"log: input of shape {np.shape(x)} has entries <= 0")
    return np.log(x), x


def _log_vjp(dout, x):
    return (dout / x,)


log = defprimitive("log", _log_fwd, _log_vjp)


def _sqrt_fwd(x):
    if np.any(x < 0):
        raise ValueError(f"sqrt: input of shape {np.shape(x)} has negative entries")
    out = np.sqrt(x)
    return out, out


def _sqrt_vjp(dout, out):
    return (dout / (2.0 * out),)


sqrt = defprimitive("sqrt", _sqrt_fwd, _sqrt_vjp)


def _relu_fwd(x):
    """max(x, 0). VJP: dout where x > 0, else 0; the output is the residual (out > 0 exactly
    where x > 0), so the forward makes one pass and no mask, and so does the backward
    (``kernels.relu_backward``)."""
    out = np.maximum(x, 0)
    return out, out


def _relu_vjp(dout, out):
    return (kernels.relu_backward(dout, out),)


relu = defprimitive("relu", _relu_fwd, _relu_vjp)


def _gelu_fwd(x, *, approximate="tanh"):
    """GELU, tanh approximation (default) or exact erf form (``approximate="none"``).

    tanh:  y = x/2 (1 + tanh(u)),  u = sqrt(2/pi)(x + 0.044715 x^3)
    erf:   y = x Phi(x),           dy/dx = Phi(x) + x phi(x)
    """
    if approximate not in ("tanh", "none"):
        raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
    _check_float("gelu", x)
    return kernels.gelu_forward(x, approximate), (x, approximate)


def _gelu_vjp(dout, residuals):
    x, approximate = residuals
    return (kernels.gelu_backward(dout, x, approximate),)


gelu = defprimitive("gelu", _gelu_fwd, _gelu_vjp)


# ----- reductions ---------------------------------------------------------------------

def _reduced_axes(ndim, axis):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if np.isscalar(axis) else tuple(axis)
    return tuple(a % ndim for a in axes)


def _sum_fwd(x, *, axis=None, keepdims=False):
    return np.sum(x, axis=axis, keepdims=keepdims), (np.shape(x), _reduced_axes(np.ndim(x), axis), keepdims)


def _sum_vjp(dout, residuals):
    shape, axes, keepdims = residuals
    if not keepdims:
        dout = np.expand_dims(dout, axes)
    return (np.broadcast_to(dout, shape).copy(),)


sum = defprimitive("sum", _sum_fwd, _sum_vjp)  # noqa: A001  (mirrors np.sum)


def _mean_fwd(x, *, axis=None, keepdims=False):
    axes = _reduced_axes(np.ndim(x), axis)
    count = int(np.prod([np.shape(x)[a] for a in axes]))
    return np.mean(x, axis=axis, keepdims=keepdims), (np.shape(x), axes, keepdims, count)


def _mean_vjp(dout, residuals):
    shape, axes, keepdims, count = residuals
    (dx,) = _sum_vjp(dout, (shape, axes, keepdims))
    return (dx / count,)


mean = defprimitive("mean", _mean_fwd, _mean_vjp)


# ----- shape --------------------------------------------------------------------------

def _reshape_fwd(x, *, shape):
    try:
        return np.reshape(x, shape), np.shape(x)
    except ValueError:
        raise ValueError(f"reshape: cannot reshape {np.shape(x)} into {tuple(shape)}") from None


def _reshape_vjp(dout, shape):
    return (dout.reshape(shape),)


reshape = defprimitive("reshape", _reshape_fwd, _reshape_vjp)


def _transpose_fwd(x, *, axes):
    if sorted(a % np.ndim(x) for a in axes) != list(range(np.ndim(x))):
        raise ValueError(f"transpose: axes {tuple(axes)} do not permute shape {np.shape(x)}")
    return np.transpose(x, axes), axes


def _transpose_vjp(dout, axes):
    return (np.transpose(dout, np.argsort(axes)),)


transpose = defprimitive("transpose", _transpose_fwd, _transpose_vjp)


def swapaxes(x, axis1, axis2):
    """Exchange two axes (a transpose)."""
    axes = list(range(np.ndim(x.value if isinstance(x, Tensor) else x)))
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return transpose(x, axes=tuple(axes))


def _concatenate_fwd(*xs, axis=-1):
    _check_float("concatenate", *xs)
    try:
        out = np.concatenate(xs, axis=axis)
    except ValueError:
        raise ValueError(f"concatenate: shapes {_shapes(*xs)} do not join along axis {axis}") from None
    return out, (axis, np.cumsum([np.shape(x)[axis] for x in xs])[:-1])


def _concatenate_vjp(dout, residuals):
    axis, boundaries = residuals
    return tuple(np.split(dout, boundaries, axis=axis))


concatenate = defprimitive("concatenate", _concatenate_fwd, _concatenate_vjp)


def _index_fwd(x, *, index):
    """x[index]; integer-array indices (an embedding lookup) may repeat."""
    try:
        out = x[index]
    except IndexError as err:
        raise ValueError(f"index: {err} (input shape {np.shape(x)})") from None
    return out, (np.shape(x), x.dtype, index)


def _index_vjp(dout, residuals):
    shape, dtype, index = residuals
    dx = np.zeros(shape, dtype=dtype)
    np.add.at(dx, index, dout)  # repeated indices must add, not overwrite
    return (dx,)


index = defprimitive("index", _index_fwd, _index_vjp)


def split(x, sections: int, axis: int = -1):
    """Split into ``sections`` equal parts along ``axis`` (one index op per part)."""
    value = x.value if isinstance(x, Tensor) else np.asarray(x)
    size = value.shape[axis]
    if sections < 1 or size % sections:
        raise ValueError(f"split: axis {axis} of shape {value.shape} does not split into {sections}")
    step = size // sections
    axis = axis % value.ndim
    lead = (slice(None),) * axis
    return [index(x, index=lead + (slice(i * step, (i + 1) * step),)) for i in range(sections)]


def embedding(table, ids):
    """Rows of ``table`` (vocab, d) picked by integer ``ids``; gradient rows add up."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"embedding: ids must be integers, got {ids.dtype} of shape {ids.shape}")
    vocab = (table.value if isinstance(table, Tensor) else table).shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"embedding: ids outside [0, {vocab}) for a table of {vocab} rows")
    return index(table, index=ids)


# ----- matmul -------------------------------------------------------------------------

def _matmul_fwd(a, b):
    """Batched a @ b (leading axes broadcast). VJP: da = dout b^T, db = a^T dout."""
    _check_float("matmul", a, b)
    if np.ndim(a) < 2 or np.ndim(b) < 2 or np.shape(a)[-1] != np.shape(b)[-2]:
        raise ValueError(f"matmul: shapes {_shapes(a, b)} do not multiply")
    return a @ b, (a, b)


def _matmul_vjp(dout, inputs):
    a, b = inputs
    da = dout @ np.swapaxes(b, -1, -2)
    db = np.swapaxes(a, -1, -2) @ dout
    return unbroadcast(da, a.shape), unbroadcast(db, b.shape)


matmul = defprimitive("matmul", _matmul_fwd, _matmul_vjp)


def _linear_fits(x, weight, bias) -> bool:
    """The common case, decided in a few comparisons: three plain arrays whose shapes fit
    y = x @ W + b. (Their dtypes are checked by the kernel.)"""
    return (type(x) is np.ndarray and type(weight) is np.ndarray and type(bias) is np.ndarray
            and weight.ndim == 2 and x.ndim >= 1
            and x.shape[-1] == weight.shape[0] and bias.shape == weight.shape[1:])


def _per_row_linear_fits(x, weight, bias) -> bool:
    """W of shape (N, d_in, d_out) and/or b of shape (N, d_out), N the length of x's first axis."""
    if np.ndim(weight) not in (2, 3) or np.ndim(bias) not in (1, 2) or np.ndim(x) < 2 \
            or np.ndim(weight) == 2 and np.ndim(bias) == 1:
        return False
    batch, (d_in, d_out) = np.shape(x)[0], np.shape(weight)[-2:]
    return (np.shape(x)[-1] == d_in and np.shape(bias)[-1] == d_out
            and all(np.ndim(a) == shared or np.shape(a)[0] == batch for a, shared in ((weight, 2), (bias, 1))))


def _linear_fwd(x, weight, bias):
    """y = x @ W + b with W of shape (d_in, d_out). VJP: dx = dy W^T, dW = x^T dy, db = sum dy.

    Per batch row: a W of shape (N, d_in, d_out), or a b of shape (N, d_out), holds one per
    row of x's first axis (of length N), and row n computes x[n] @ W[n] + b[n]; the VJP is
    the same per row (dW[n] = x[n]^T dy[n], db[n] = sum dy[n]). The gradient checker runs
    many moved copies of a weight at once this way.
    """
    if not _linear_fits(x, weight, bias):
        _check_float("linear", x, weight, bias)
        if _per_row_linear_fits(x, weight, bias):
            return _per_row_linear_fwd(x, weight, bias)
        if np.ndim(weight) != 2 or np.ndim(x) < 1 or np.shape(x)[-1] != np.shape(weight)[0] \
                or np.shape(bias) != np.shape(weight)[1:]:
            raise ValueError(f"linear: x, W, b of shapes {_shapes(x, weight, bias)} do not fit y = x @ W + b")
    rows = x.reshape(-1, x.shape[-1])  # one 2-D product: faster than a batched matmul
    try:
        out = kernels.linear_forward(rows, weight, bias)
    except (TypeError, ValueError) as error:
        raise _kernel_error("linear", error, x, weight, bias) from None
    return out.reshape(*x.shape[:-1], weight.shape[1]), (rows, weight)


def _per_row_linear_fwd(x, weight, bias):
    rows = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, tokens, d_in)
    out = np.matmul(rows, weight)
    out += bias[:, None, :] if bias.ndim == 2 else bias
    return out.reshape(*x.shape[:-1], weight.shape[-1]), (rows, weight, bias.ndim == 2)


def _linear_vjp(dout, inputs):
    if len(inputs) == 3:
        return _per_row_linear_vjp(dout, inputs)
    rows, weight = inputs
    dx, dweight, dbias = kernels.linear_backward(dout.reshape(-1, dout.shape[-1]), rows, weight)
    return dx.reshape(*dout.shape[:-1], weight.shape[0]), dweight, dbias


def _per_row_linear_vjp(dout, inputs):
    rows, weight, per_row_bias = inputs
    dout_rows = dout.reshape(rows.shape[0], -1, dout.shape[-1])
    dx = np.matmul(dout_rows, np.swapaxes(weight, -1, -2)).reshape(*dout.shape[:-1], weight.shape[-2])
    dweight = np.matmul(np.swapaxes(rows, -1, -2), dout_rows)
    dbias = dout_rows.sum(axis=1)
    if weight.ndim == 2:
        dweight = dweight.sum(axis=0)
    return dx, dweight, dbias if per_row_bias else dbias.sum(axis=0)


linear = defprimitive("linear", _linear_fwd, _linear_vjp)


# ----- normalization ------------------------------------------------------------------

def _check_eps(op, eps, x):
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{op}: eps must be finite and > 0, got {eps} (x of shape {np.shape(x)})")


def _rows(op, x):
    """x (..., d) as a (rows, d) view (a copy only if x is not contiguous)."""
    if type(x) is not np.ndarray and np.ndim(x) < 1 or type(x) is np.ndarray and x.ndim < 1:
        raise ValueError(f"{op}: x must have at least one axis, got shape {np.shape(x)}")
    return x.reshape(-1, x.shape[-1])


def _layer_norm_fwd(x, gamma, beta, *, eps=1e-5):
    """LayerNorm over the last axis: y = gamma * (x - mu) / sigma + beta, sigma = sqrt(var + eps).

    Backward, with x_hat = (x - mu) / sigma and g = dy * gamma (means over the last axis):
        dx     = (1/sigma) (g - mean(g) - x_hat * mean(g * x_hat))
        dgamma = sum over rows of dy * x_hat,     dbeta = sum over rows of dy
    The two subtracted means are the projections out of the constant direction (the mean
    was removed) and out of x_hat itself (the scale was removed).
    """
    if not 0 < eps < math.inf:  # (False for NaN too)
        _check_eps("layer_norm", eps, x)
    rows = x.reshape(-1, x.shape[-1]) if type(x) is np.ndarray and x.ndim else _rows("layer_norm", x)
    try:
        y, mu, rstd = kernels.layer_norm_forward(rows, gamma, beta, eps)
    except (TypeError, ValueError) as error:
        raise _kernel_error("layer_norm", error, x, gamma, beta) from None
    return y.reshape(x.shape), (rows, gamma, mu, rstd)


def _layer_norm_vjp(dout, residuals):
    rows, gamma, mu, rstd = residuals
    dx, dgamma, dbeta = kernels.layer_norm_backward(dout.reshape(rows.shape), rows, gamma, mu, rstd,
                                                    residuals_checked=True)
    return dx.reshape(dout.shape), dgamma, dbeta


layer_norm = defprimitive("layer_norm", _layer_norm_fwd, _layer_norm_vjp)


def _rms_norm_fwd(x, gamma, *, eps=1e-5):
    """RMSNorm: y = gamma * x / r, r = sqrt(mean(x^2) + eps).

    Backward, with x_hat = x / r and g = dy * gamma:
        dx = (1/r) (g - x_hat * mean(g * x_hat)),   dgamma = sum over rows of dy * x_hat
    (LayerNorm's backward without the mean-removal term.)
    """
    _check_eps("rms_norm", eps, x)
    rows = _rows("rms_norm", x)
    try:
        y, rrms = kernels.rms_norm_forward(rows, gamma, eps)
    except (TypeError, ValueError) as error:
        raise _kernel_error("rms_norm", error, x, gamma) from None
    return y.reshape(x.shape), (rows, gamma, rrms)


def _rms_norm_vjp(dout, residuals):
    rows, gamma, rrms = residuals
    dx, dgamma = kernels.rms_norm_backward(dout.reshape(rows.shape), rows, gamma, rrms, residuals_checked=True)
    return dx.reshape(dout.shape), dgamma


rms_norm = defprimitive("rms_norm", _rms_norm_fwd, _rms_norm_vjp)


# ----- softmax and attention ----------------------------------------------------------

def _softmax_fwd(x, *, axis=-1):
    """p = exp(x - max x) / sum exp(x - max x) along ``axis`` (the max keeps exp finite).

    Backward: the Jacobian is diag(p) - p p^T, so dx = p * (dp - sum(dp * p)).
    """
    _check_float("softmax", x)
    _check_finite("softmax", x)
    moved = np.moveaxis(x, axis, -1)
    p = kernels.softmax_forward(np.ascontiguousarray(moved).reshape(-1, moved.shape[-1]))
    return np.moveaxis(p.reshape(moved.shape), -1, axis), (p, moved.shape, axis)


def _softmax_vjp(dout, residuals):
    p, moved_shape, axis = residuals
    dmoved = np.ascontiguousarray(np.moveaxis(dout, axis, -1)).reshape(p.shape)
    dx = kernels.softmax_backward(dmoved, p)
    return (np.moveaxis(dx.reshape(moved_shape), -1, axis),)


softmax = defprimitive("softmax", _softmax_fwd, _softmax_vjp)


def _attention_fwd(q, k, v, *, causal=False):
    """Scaled dot-product attention over heads, one op.

    q: (B, H, T, Dh), k and v: (B, H, S, Dh).
        P = softmax(Q K^T / sqrt(Dh) + M),   out = P V,
    M = -inf above the diagonal when causal (T == S), else 0.
    Backward, with dP = dout V^T:
        dV = P^T dout
        dS = P * (dP - rowsum(dP * P))        (the softmax VJP; masked P are exactly 0)
        dQ = dS K / sqrt(Dh),   dK = dS^T Q / sqrt(Dh)
    """
    if not (np.ndim(q) == np.ndim(k) == np.ndim(v) == 4):
        raise ValueError(f"attention: q, k, v must be 4-D (B, H, T, Dh), got {_shapes(q, k, v)}")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"attention: a causal mask needs T == S, got q {q.shape} and k {k.shape}")
    _check_finite("attention", q, k, v)
    try:
        out, probs = kernels.attention_forward(q, k, v, causal)
    except (TypeError, ValueError) as error:
        raise _kernel_error("attention", error, q, k, v) from None
    return out, (q, k, v, probs)


def _attention_vjp(dout, residuals):
    q, k, v, probs = residuals
    return kernels.attention_backward(dout, q, k, v, probs)


attention = defprimitive("attention", _attention_fwd, _attention_vjp)


def _multi_head_attention_fwd(q, k, v, *, n_heads, causal=False):
    """``attention`` for projections laid out as (B, T, d) and (B, S, d), split into
    ``n_heads`` heads of d/H contiguous features and merged back, in one op: the same
    formulas and the same backward, with the heads addressed in place (no copies).

    Like ``linear`` (and unlike the 4-D ``attention``), no finiteness check: a NaN in q, k
    or v propagates to the output, and the next norm of the model rejects it."""
    try:
        out, probs = kernels.multi_head_attention_forward(q, k, v, n_heads, causal)
    except (TypeError, ValueError) as error:
        raise _kernel_error("multi_head_attention", error, q, k, v) from None
    return out, (q, k, v, probs)


def _multi_head_attention_vjp(dout, residuals):
    q, k, v, probs = residuals
    return kernels.multi_head_attention_backward(dout, q, k, v, probs)


multi_head_attention = defprimitive("multi_head_attention", _multi_head_attention_fwd, _multi_head_attention_vjp)


# ----- fused sublayers -----------------------------------------------------------------

def _attention_sublayer_fwd(x, memory, wq, bq, wk, bk, wv, bv, wo, bo, *, n_heads, causal=False):
    """A whole attention sublayer as one op:

        A(x) = MHA(x Wq + bq, s Wk + bk, s Wv + bv) Wo + bo,   s = x, or ``memory`` if given

    with MHA the multi-head attention of ``multi_head_attention`` (``n_heads`` heads, causally
    masked if asked). x is (B, T, d), the memory (B, S, d), every W (d, d), every b (d,).
    VJP, with H the merged heads:
        dWo = H^T dA,   dbo = sum over rows of dA,   dH = dA Wo^T
        dQ, dK, dV = the attention backward at dH       (kernels.multi_head_attention_backward)
        dWq = x^T dQ, dWk = s^T dK, dWv = s^T dV, db = row sums of dQ, dK, dV
        dx  = dQ Wq^T + dK Wk^T + dV Wv^T               (self-attention)
        dx  = dQ Wq^T,  dmemory = dK Wk^T + dV Wv^T     (cross-attention)
    Both directions run in ``kernels.attention_sublayer_forward``/``_backward``: one compiled
    call each for small sublayers, NumPy/BLAS products around the attention kernels otherwise.
    """
    try:
        out, q, k, v, probs, heads = kernels.attention_sublayer_forward(
            x, memory, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, causal)
    except (TypeError, ValueError) as error:
        raise ValueError(f"attention_sublayer: {error}") from None
    return out, (x, memory, wq, wk, wv, wo, q, k, v, probs, heads)


def _attention_sublayer_vjp(dout, residuals):
    # (dx, dmemory, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo): the op's inputs in order.
    return kernels.attention_sublayer_backward(dout, *residuals, residuals_checked=True)


attention_sublayer = defprimitive("attention_sublayer", _attention_sublayer_fwd, _attention_sublayer_vjp)


FFN_ACTIVATIONS = ("relu", "gelu")


def _feed_forward_fwd(x, w1, b1, w2, b2, *, activation="relu", relu_mask=None):
    """A whole feed-forward sublayer as one op: F(x) = act(x W1 + b1) W2 + b2.

    act is ReLU or the tanh-approximated GELU; with ``relu_mask`` (a fixed 0/1 array of
    the hidden layer's shape) it is multiplication by that pattern instead of ReLU: the
    gradient checker evaluates finite differences on the smooth piece of the network
    that contains the point. VJP, with h = x W1 + b1 and a = act(h):
        dW2 = a^T dF,   db2 = sum over rows of dF,   da = dF W2^T
        dh  = act'(h) * da        (ReLU: da where a > 0; the pattern: da * relu_mask)
        dW1 = x^T dh,   db1 = sum over rows of dh,   dx = dh W1^T
    Both directions run in ``kernels.feed_forward_forward``/``_backward``: one compiled call
    each for small FFNs, the linear maps around the activation otherwise.

    Weights moved one per batch row (W of shape (N, d_in, d_out) or b of shape (N, d_out),
    see ``linear``) take the composition of the registered ``linear`` and ``mul``/``relu``/
    ``gelu`` instead: the gradient checker's batched finite differences.
    """
    if relu_mask is None and activation not in FFN_ACTIVATIONS:
        raise ValueError(f"feed_forward: activation must be one of {', '.join(FFN_ACTIVATIONS)}, got {activation!r}")
    if not (_linear_fits(x, w1, b1) and type(w2) is np.ndarray and type(b2) is np.ndarray
            and w2.shape[:1] == w1.shape[1:] and b2.shape == w2.shape[1:]):
        return _per_row_feed_forward_fwd(x, w1, b1, w2, b2, activation, relu_mask)
    rows = x.reshape(-1, x.shape[-1])
    mask = None
    if relu_mask is not None:
        if np.shape(relu_mask) != (*x.shape[:-1], w1.shape[1]):
            raise ValueError(f"feed_forward: relu_mask of shape {np.shape(relu_mask)} is not the hidden "
                             f"layer's shape {(*x.shape[:-1], w1.shape[1])}")
        mask = np.asarray(relu_mask).reshape(rows.shape[0], w1.shape[1])
    act = "mask" if mask is not None else activation
    try:
        out, hidden, acted = kernels.feed_forward_forward(rows, w1, b1, w2, b2, act, mask)
    except (TypeError, ValueError) as error:
        raise _kernel_error("feed_forward", error, x, w1, b1, w2, b2) from None
    return out.reshape(*x.shape[:-1], w2.shape[1]), (x.shape, rows, w1, w2, hidden, acted, act, mask)


def _feed_forward_vjp(dout, residuals):
    if len(residuals) == 5:
        return _per_row_feed_forward_vjp(dout, residuals)
    x_shape, rows, w1, w2, hidden, acted, act, mask = residuals
    dx, dw1, db1, dw2, db2 = kernels.feed_forward_backward(dout.reshape(-1, dout.shape[-1]), rows, w1, w2,
                                                           hidden, acted, act, mask, residuals_checked=True)
    return dx.reshape(x_shape), dw1, db1, dw2, db2


def _per_row_feed_forward_fwd(x, w1, b1, w2, b2, activation, relu_mask):
    linear = PRIMITIVES["linear"]
    hidden, first = linear.forward(x, w1, b1)
    if relu_mask is not None:
        act = PRIMITIVES["mul"]
        if np.shape(relu_mask) != hidden.shape:
            raise ValueError(f"feed_forward: relu_mask of shape {np.shape(relu_mask)} is not the hidden "
                             f"layer's shape {hidden.shape}")
        acted, act_residuals = act.forward(hidden, relu_mask)
    elif activation == "relu":
        act = PRIMITIVES["relu"]
        acted, act_residuals = act.forward(hidden)
    else:
        act = PRIMITIVES["gelu"]
        acted, act_residuals = act.forward(hidden, approximate="tanh")
    out, second = linear.forward(acted, w2, b2)
    return out, (linear, act, first, act_residuals, second)


def _per_row_feed_forward_vjp(dout, residuals):
    linear, act, first, act_residuals, second = residuals
    dacted, dw2, db2 = linear.vjp(dout, second)
    dhidden = act.vjp(dacted, act_residuals)[0]
    dx, dw1, db1 = linear.vjp(dhidden, first)
    return dx, dw1, db1, dw2, db2


feed_forward = defprimitive("feed_forward", _feed_forward_fwd, _feed_forward_vjp)


# ----- losses -------------------------------------------------------------------------

def _cross_entropy_fwd(logits, targets):
    """Mean over rows of -log softmax(logits)[target], with a stable log-sum-exp.

    Backward: dlogits = (softmax(logits) - onehot(target)) * dloss / rows.
    """
    _check_float("cross_entropy", logits)
    _check_finite("cross_entropy", logits)
    targets = np.asarray(targets)
    classes = np.shape(logits)[-1]
    if targets.dtype.kind not in "iu" or targets.shape != np.shape(logits)[:-1]:
        raise ValueError(
            f"cross_entropy: targets must be integers of shape {np.shape(logits)[:-1]}, "
            f"got {targets.dtype} of shape {targets.shape}"
        )
    if targets.size and (targets.min() < 0 or targets.max() >= classes):
        raise ValueError(f"cross_entropy: targets outside [0, {classes})")
    rows = logits.reshape(-1, classes)
    flat = targets.reshape(-1)
    shifted = rows - rows.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    log_probs_target = shifted[np.arange(len(flat)), flat] - log_norm
    loss = -log_probs_target.mean()
    return np.asarray(loss, dtype=logits.dtype), (shifted, log_norm, flat, np.shape(logits))


def _cross_entropy_vjp(dout, residuals):
    shifted, log_norm, flat, shape = residuals
    dlogits = np.exp(shifted - log_norm[:, None])
    dlogits[np.arange(len(flat)), flat] -= 1.0
    dlogits *= dout / len(flat)
    return dlogits.reshape(shape), None


cross_entropy = defprimitive("cross_entropy", _cross_entropy_fwd, _cross_entropy_vjp)
