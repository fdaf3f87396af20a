"""Every primitive of the engine: its forward and its vector-Jacobian product, side by side.

Each primitive is a pair of plain-array functions (see ``primitive.py``):

    forward(*inputs, **params) -> (output, residuals)
    vjp(doutput, residuals)    -> one cotangent per input (None where there is none)

Broadcasting binary ops sum their cotangents back to each input's shape (``unbroadcast``).
The normalization, softmax, attention and activation primitives call the hand-written kernels
of ``kernels/`` (a NumPy twin beside a Numba loop); their docstrings give the backward
formulas. NaN and inf: the norms reject them from inside their kernels at no cost; softmax
and cross_entropy test their inputs; the products (linear, attention) let them through to the
next norm, which rejects them. The fused sublayers (one record for a whole attention or FFN
sublayer) are the fast path beside these, in ``fused.py``; the normalization primitives
(layer_norm, rms_norm, dyt, derf, scale_norm, l2_normalize) live in ``norm_ops.py``, those
that mix streams and give their weights (weighted_sum, mix_streams, scaled_linear, scaled_tanh,
sinkhorn) in ``mixing_ops.py``; both are re-exported here.

Importing this module binds Tensor's operators (``+``, ``-``, ``*``, ``/``, ``@``, unary ``-``,
indexing) to the primitives below.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lnref.autograd import kernels
from lnref.autograd.checks import (
    binary_shapes,
    check_finite,
    check_float,
    is_number,
    kernel_error,
    shapes,
    unbroadcast,
)
from lnref.autograd.mixing_ops import mix_streams as mix_streams
from lnref.autograd.mixing_ops import scaled_linear as scaled_linear
from lnref.autograd.mixing_ops import scaled_tanh as scaled_tanh
from lnref.autograd.mixing_ops import sinkhorn as sinkhorn
from lnref.autograd.mixing_ops import weighted_sum as weighted_sum
from lnref.autograd.norm_ops import derf as derf
from lnref.autograd.norm_ops import dyt as dyt
from lnref.autograd.norm_ops import l2_normalize as l2_normalize
from lnref.autograd.norm_ops import layer_norm as layer_norm
from lnref.autograd.norm_ops import rms_norm as rms_norm
from lnref.autograd.norm_ops import scale_norm as scale_norm
from lnref.autograd.primitive import defprimitive
from lnref.autograd.sphere_ops import normalized_lerp as normalized_lerp
from lnref.autograd.tensor import Tensor, value_of

Residuals = Any
Cotangents = tuple[Any, ...]

# ----- elementwise --------------------------------------------------------------------


def _add_fwd(a: Any, b: Any) -> tuple[Any, Residuals]:
    shapes = binary_shapes("add", a, b)
    return a + b, shapes


def _add_vjp(dout: np.ndarray, shapes: Residuals) -> Cotangents:
    return unbroadcast(dout, shapes[0]), unbroadcast(dout, shapes[1])


add = defprimitive("add", _add_fwd, _add_vjp)


def _sub_fwd(a: Any, b: Any) -> tuple[Any, Residuals]:
    shapes = binary_shapes("sub", a, b)
    return a - b, shapes


def _sub_vjp(dout: np.ndarray, shapes: Residuals) -> Cotangents:
    return unbroadcast(dout, shapes[0]), unbroadcast(-dout, shapes[1])


sub = defprimitive("sub", _sub_fwd, _sub_vjp)


def _mul_fwd(a: Any, b: Any) -> tuple[Any, Residuals]:
    binary_shapes("mul", a, b)
    return a * b, (a, b)


def _mul_vjp(dout: np.ndarray, inputs: Residuals) -> Cotangents:
    a, b = inputs
    da = None if is_number(a) else unbroadcast(dout * b, np.shape(a))
    return da, None if is_number(b) else unbroadcast(dout * a, np.shape(b))


mul = defprimitive("mul", _mul_fwd, _mul_vjp)


def _div_fwd(a: Any, b: Any) -> tuple[Any, Residuals]:
    binary_shapes("div", a, b)
    return a / b, (a, b)


def _div_vjp(dout: np.ndarray, inputs: Residuals) -> Cotangents:
    a, b = inputs
    da = None if is_number(a) else unbroadcast(dout / b, np.shape(a))
    return da, None if is_number(b) else unbroadcast(-dout * a / (b * b), np.shape(b))


div = defprimitive("div", _div_fwd, _div_vjp)


def _neg_fwd(x: Any) -> tuple[Any, Residuals]:
    return -x, None


def _neg_vjp(dout: np.ndarray, _: Residuals) -> Cotangents:
    return (-dout,)


neg = defprimitive("neg", _neg_fwd, _neg_vjp)


def _relu_fwd(x: np.ndarray) -> tuple[np.ndarray, Residuals]:
    """max(x, 0). VJP: dout where x > 0, else 0; the output is the residual (out > 0 exactly
    where x > 0), so neither direction makes a mask (``kernels.relu_backward``)."""
    check_float("relu", x)
    out = kernels.relu_forward(x)
    return out, out


def _relu_vjp(dout: np.ndarray, out: Residuals) -> Cotangents:
    return (kernels.relu_backward(dout, out),)


relu = defprimitive("relu", _relu_fwd, _relu_vjp)


def _absolute_fwd(x: Any) -> tuple[np.ndarray, Residuals]:
    """|x|. VJP: dx = sign(x) dout, 0 at x = 0 (as PyTorch's ``abs`` takes it)."""
    check_float("absolute", x)
    x = np.asarray(x)
    return np.abs(x), x


def _absolute_vjp(dout: np.ndarray, x: Residuals) -> Cotangents:
    return (dout * np.sign(x),)


absolute = defprimitive("absolute", _absolute_fwd, _absolute_vjp)


def _gelu_fwd(x: np.ndarray, *, approximate: str = "none") -> tuple[np.ndarray, Residuals]:
    """GELU, the exact erf form (default, as PyTorch's) or the tanh approximation
    (``approximate="tanh"``).

    erf:   y = x Phi(x),           dy/dx = Phi(x) + x phi(x),  phi the standard normal density
    tanh:  y = x/2 (1 + tanh(u)),  u = sqrt(2/pi)(x + 0.044715 x^3),
           dy/dx = (1 + tanh(u))/2 + x/2 (1 - tanh(u)^2) sqrt(2/pi)(1 + 3 * 0.044715 x^2)
    """
    if approximate not in ("tanh", "none"):
        raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
    check_float("gelu", x)
    return kernels.gelu_forward(x, approximate), (x, approximate)


def _gelu_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    x, approximate = residuals
    return (kernels.gelu_backward(dout, x, approximate),)


gelu = defprimitive("gelu", _gelu_fwd, _gelu_vjp)


def _stop_gradient_fwd(x: Any) -> tuple[Any, Residuals]:
    """sg(x) = x going forward; no gradient flows back through it (VJP: none)."""
    return x, None


def _stop_gradient_vjp(dout: np.ndarray, _: Residuals) -> Cotangents:
    return (None,)


stop_gradient = defprimitive("stop_gradient", _stop_gradient_fwd, _stop_gradient_vjp)


def _exp_fwd(x: Any) -> tuple[np.ndarray, Residuals]:
    """e^x. VJP: dx = dout * e^x (the output is the residual). An e^x that overflows is
    refused rather than passed on as inf."""
    check_float("exp", x)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(np.exp(x))
    if not np.isfinite(out).all():
        raise ValueError(f"exp: e^x is not finite (x of shape {np.shape(x)} holds NaN or a value above log(max))")
    return out, out


def _exp_vjp(dout: np.ndarray, out: Residuals) -> Cotangents:
    return (dout * out,)


exp = defprimitive("exp", _exp_fwd, _exp_vjp)


def _tanh_fwd(x: Any) -> tuple[np.ndarray, Residuals]:
    """tanh(x). VJP: dx = dout (1 - tanh(x)^2) (the output is the residual)."""
    check_float("tanh", x)
    out = np.asarray(np.tanh(x))
    return out, out


def _tanh_vjp(dout: np.ndarray, out: Residuals) -> Cotangents:
    return (dout * (1 - out * out),)


tanh = defprimitive("tanh", _tanh_fwd, _tanh_vjp)


def _sigmoid_fwd(x: Any) -> tuple[np.ndarray, Residuals]:
    """sigma(x) = 1 / (1 + e^-x), computed from e^-|x| so that no exponential overflows.
    VJP: dx = dout sigma(x) (1 - sigma(x)) (the output is the residual)."""
    check_float("sigmoid", x)
    out = kernels.sigmoid_reference(np.asarray(x))
    return out, out


def _sigmoid_vjp(dout: np.ndarray, out: Residuals) -> Cotangents:
    return (dout * (out * (1 - out)),)


sigmoid = defprimitive("sigmoid", _sigmoid_fwd, _sigmoid_vjp)


def _clamp_fwd(x: Any, *, low: float | None = None, high: float | None = None) -> tuple[np.ndarray, Residuals]:
    """min(max(x, low), high) with constant bounds (either may be None).

    VJP: dout where low <= x <= high, else 0. At a bound the derivative is taken from the
    inside, as PyTorch's ``clamp`` takes it.
    """
    if low is None and high is None:
        raise ValueError("clamp: give a low bound, a high bound or both")
    if low is not None and high is not None and not low <= high:
        raise ValueError(f"clamp: low {low} is above high {high}")
    check_float("clamp", x)
    inside = np.ones(np.shape(x), dtype=bool)
    if low is not None:
        inside &= np.asarray(x) >= low
    if high is not None:
        inside &= np.asarray(x) <= high
    return np.asarray(np.clip(x, low, high)), inside


def _clamp_vjp(dout: np.ndarray, inside: Residuals) -> Cotangents:
    return (np.where(inside, dout, 0).astype(dout.dtype, copy=False),)


clamp = defprimitive("clamp", _clamp_fwd, _clamp_vjp)


# ----- reductions and shape -----------------------------------------------------------


def _reduced_axes(ndim: int, axis: Any) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if np.isscalar(axis) else tuple(axis)
    return tuple(a % ndim for a in axes)


def _sum_fwd(x: Any, *, axis: Any = None, keepdims: bool = False) -> tuple[Any, Residuals]:
    return np.sum(x, axis=axis, keepdims=keepdims), (np.shape(x), _reduced_axes(np.ndim(x), axis), keepdims)


def _sum_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    shape, axes, keepdims = residuals
    if not keepdims:
        dout = np.expand_dims(dout, axes)
    return (np.broadcast_to(dout, shape).copy(),)


sum = defprimitive("sum", _sum_fwd, _sum_vjp)  # noqa: A001  (mirrors np.sum)


def _reshape_fwd(x: np.ndarray, *, shape: tuple[int, ...]) -> tuple[np.ndarray, Residuals]:
    try:
        return np.reshape(x, shape), np.shape(x)
    except ValueError:
        raise ValueError(f"reshape: cannot reshape {np.shape(x)} into {tuple(shape)}") from None


def _reshape_vjp(dout: np.ndarray, shape: Residuals) -> Cotangents:
    return (dout.reshape(shape),)


reshape = defprimitive("reshape", _reshape_fwd, _reshape_vjp)


def _index_fwd(x: np.ndarray, *, index: Any) -> tuple[np.ndarray, Residuals]:
    """x[index]; integer-array indices (an embedding lookup) may repeat."""
    try:
        out = x[index]
    except IndexError as err:
        raise ValueError(f"index: {err} (input shape {np.shape(x)})") from None
    return out, (np.shape(x), x.dtype, index)


def _index_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    shape, dtype, index = residuals
    dx = np.zeros(shape, dtype=dtype)
    if _picks_each_element_once(index):
        dx[index] += dout  # a view: each element once, the sum np.add.at forms, without its cost
    else:
        np.add.at(dx, index, dout)  # repeated indices must add, not overwrite
    return (dx,)


def _picks_each_element_once(index: Any) -> bool:
    """Whether ``index`` is basic indexing (integers, slices, ``...``, ``None``), which takes a
    view and so no element twice."""
    for part in index if type(index) is tuple else (index,):
        if not (part is Ellipsis or part is None or type(part) is slice or type(part) is int):
            return False
    return True


index = defprimitive("index", _index_fwd, _index_vjp)


def _concatenate_fwd(*xs: np.ndarray, axis: int = -1, stacked: bool = False) -> tuple[np.ndarray, Residuals]:
    """The inputs joined along ``axis``; its cotangent is cut back into their widths. With
    ``stacked=True`` the inputs are the rows of one array (k, ..., d), joined as the rows
    given apart would be (``axis`` counts a row's axes), and the cotangent comes back stacked,
    (k, ..., d), the parts' values as rows: what a replay gives copies it reads as their stack
    (``stacked_copies.py``)."""
    if stacked:
        return _concatenate_rows(xs, axis)
    try:
        out = np.concatenate(xs, axis=axis)
    except ValueError:
        raise ValueError(f"concatenate: cannot join {[np.shape(x) for x in xs]} along axis {axis}") from None
    ends, end = [], 0  # where each input ends along the axis, in Python ints (np.cumsum costs more)
    for x in xs:
        end += x.shape[axis] if type(x) is np.ndarray else np.shape(x)[axis]
        ends.append(end)
    return out, (False, axis % out.ndim, ends)


def _concatenate_rows(xs: tuple[Any, ...], axis: int) -> tuple[np.ndarray, Residuals]:
    """The rows of ``xs[0]`` (k, ..., d) joined along ``axis`` of a row: the rows' axis moved
    just before it and the two merged, one copy, the values np.concatenate gives."""
    if len(xs) != 1 or np.ndim(xs[0]) < 2:
        raise ValueError(f"concatenate: stacked inputs are one array (k, ..., d), got shapes {shapes(*xs)}")
    stack = np.asarray(xs[0])
    ndim = stack.ndim - 1  # a row's
    if not -ndim <= axis < ndim:
        raise ValueError(f"concatenate: axis {axis} is out of bounds for rows of shape {stack.shape[1:]}")
    axis %= ndim
    order = (*range(1, axis + 1), 0, *range(axis + 1, ndim + 1))  # (..., k, width, ...)
    moved = stack.transpose(order)
    out = moved.reshape((*moved.shape[:axis], -1, *moved.shape[axis + 2 :]))
    if axis == 0:  # the rows joined in place: a view of the stack, which np.concatenate would copy
        out = out.copy()
    back = tuple(order.index(i) for i in range(ndim + 1))
    return out, (True, moved.shape, back)


def _concatenate_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    if residuals[0]:  # stacked rows: the joined axis split in two, the rows' axis moved back first
        _, moved_shape, back = residuals
        return (dout.reshape(moved_shape).transpose(back),)  # a view: dout's parts, as rows
    _, axis, ends = residuals
    before, start, parts = (slice(None),) * axis, 0, []
    for end in ends:  # views of dout, as np.split gives, without its cost
        parts.append(dout[before + (slice(start, end),)])
        start = end
    return tuple(parts)


concatenate = defprimitive("concatenate", _concatenate_fwd, _concatenate_vjp)


def embedding(table: Any, ids: Any) -> Tensor:
    """Rows of ``table`` (vocab, d) picked by integer ``ids``; gradient rows add up."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"embedding: ids must be integers, got {ids.dtype} of shape {ids.shape}")
    vocab = value_of(table).shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"embedding: ids outside [0, {vocab}) for a table of {vocab} rows")
    return index(table, index=ids)


# ----- products -----------------------------------------------------------------------


def _matmul_fwd(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Residuals]:
    """Batched a @ b (leading axes broadcast). VJP: da = dout b^T, db = a^T dout."""
    check_float("matmul", a, b)
    if np.ndim(a) < 2 or np.ndim(b) < 2 or np.shape(a)[-1] != np.shape(b)[-2]:
        raise ValueError(f"matmul: shapes {shapes(a, b)} do not multiply")
    return a @ b, (a, b)


def _matmul_vjp(dout: np.ndarray, inputs: Residuals) -> Cotangents:
    a, b = inputs
    da = dout @ np.swapaxes(b, -1, -2)
    db = np.swapaxes(a, -1, -2) @ dout
    return unbroadcast(da, a.shape), unbroadcast(db, b.shape)


matmul = defprimitive("matmul", _matmul_fwd, _matmul_vjp)


def _linear_fwd(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, Residuals]:
    """y = x @ W + b with W of shape (d_in, d_out), over x's last axis.

    VJP: dx = dy W^T, dW = x^T dy, db = sum of dy over rows.
    """
    if not (
        type(x) is np.ndarray
        and type(weight) is np.ndarray
        and weight.ndim == 2
        and x.ndim >= 1
        and x.shape[-1] == weight.shape[0]
        and np.shape(bias) == weight.shape[1:]
    ):
        check_float("linear", x, weight, bias)
        if np.ndim(weight) != 2 or np.ndim(x) < 1 or np.shape(x)[-1] != np.shape(weight)[0]:
            raise ValueError(f"linear: x, W, b of shapes {shapes(x, weight, bias)} do not fit y = x @ W + b")
        if np.shape(bias) != np.shape(weight)[1:]:
            raise ValueError(f"linear: x, W, b of shapes {shapes(x, weight, bias)} do not fit y = x @ W + b")
    rows = x.reshape(-1, x.shape[-1])  # one 2-D product: faster than a batched matmul
    try:
        out = kernels.linear_forward(rows, weight, bias)
    except (TypeError, ValueError) as error:
        raise kernel_error("linear", error, x, weight, bias) from None
    return out.reshape(*x.shape[:-1], weight.shape[1]), (rows, weight)


def _linear_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    rows, weight = residuals
    dx, dweight, dbias = kernels.linear_backward(dout.reshape(-1, dout.shape[-1]), rows, weight)
    return dx.reshape(*dout.shape[:-1], weight.shape[0]), dweight, dbias


linear = defprimitive("linear", _linear_fwd, _linear_vjp)


# ----- softmax and attention ----------------------------------------------------------


def _softmax_fwd(x: np.ndarray, *, axis: int = -1) -> tuple[np.ndarray, Residuals]:
    """p = exp(x - max x) / sum exp(x - max x) along ``axis`` (the max keeps exp finite).

    Backward: the Jacobian is diag(p) - p p^T, so dx = p * (dp - sum(dp * p)).
    """
    check_float("softmax", x)
    check_finite("softmax", x)
    moved = np.moveaxis(x, axis, -1)
    p = kernels.softmax_forward(np.ascontiguousarray(moved).reshape(-1, moved.shape[-1]))
    return np.moveaxis(p.reshape(moved.shape), -1, axis), (p, moved.shape, axis)


def _softmax_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    p, moved_shape, axis = residuals
    dmoved = np.ascontiguousarray(np.moveaxis(dout, axis, -1)).reshape(p.shape)
    dx = kernels.softmax_backward(dmoved, p)
    return (np.moveaxis(dx.reshape(moved_shape), -1, axis),)


softmax = defprimitive("softmax", _softmax_fwd, _softmax_vjp)


def _multi_head_attention_fwd(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, n_heads: int, causal: bool = False
) -> tuple[np.ndarray, Residuals]:
    """The attention core, on projections laid out as (B, T, d) and (B, S, d) and split into
    ``n_heads`` heads of d/H contiguous features (merged back in the output):

        P_h = softmax(Q_h K_h^T / sqrt(Dh) + M),   out_h = P_h V_h,

    M = -inf above the diagonal when causal (T == S), else 0. Backward, per head, with
    dP = dout V^T:
        dV = P^T dout
        dS = P * (dP - rowsum(dP * P))        (the softmax VJP; masked P are exactly 0)
        dQ = dS K / sqrt(Dh),   dK = dS^T Q / sqrt(Dh)
    The heads are addressed in place (no copies). No finiteness check: a NaN in q, k or v
    propagates to the output, and the next norm of the model rejects it.
    """
    try:
        out, probs = kernels.multi_head_attention_forward(q, k, v, n_heads, causal)
    except (TypeError, ValueError) as error:
        raise kernel_error("multi_head_attention", error, q, k, v) from None
    return out, (q, k, v, probs)


def _multi_head_attention_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    q, k, v, probs = residuals
    return tuple(kernels.multi_head_attention_backward(dout, q, k, v, probs))


multi_head_attention = defprimitive("multi_head_attention", _multi_head_attention_fwd, _multi_head_attention_vjp)


# ----- losses -------------------------------------------------------------------------


def _cross_entropy_fwd(logits: np.ndarray, targets: Any) -> tuple[np.ndarray, Residuals]:
    """Mean over rows of -log softmax(logits)[target], with a stable log-sum-exp.

    Backward: dlogits = (softmax(logits) - onehot(target)) * dloss / rows.
    """
    check_float("cross_entropy", logits)
    check_finite("cross_entropy", logits)
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


def _cross_entropy_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    shifted, log_norm, flat, shape = residuals
    dlogits = np.exp(shifted - log_norm[:, None])
    dlogits[np.arange(len(flat)), flat] -= 1.0
    dlogits *= dout / len(flat)
    return dlogits.reshape(shape), None


cross_entropy = defprimitive("cross_entropy", _cross_entropy_fwd, _cross_entropy_vjp)


# ----- Tensor's operators are these primitives ----------------------------------------

_OPERATORS = {
    "__add__": lambda a, b: add(a, b),
    "__radd__": lambda a, b: add(b, a),
    "__sub__": lambda a, b: sub(a, b),
    "__rsub__": lambda a, b: sub(b, a),
    "__mul__": lambda a, b: mul(a, b),
    "__rmul__": lambda a, b: mul(b, a),
    "__truediv__": lambda a, b: div(a, b),
    "__rtruediv__": lambda a, b: div(b, a),
    "__matmul__": lambda a, b: matmul(a, b),
    "__rmatmul__": lambda a, b: matmul(b, a),
    "__neg__": lambda a: neg(a),
    "__getitem__": lambda a, key: index(a, index=key),
}
for _name, _operator in _OPERATORS.items():
    setattr(Tensor, _name, _operator)
