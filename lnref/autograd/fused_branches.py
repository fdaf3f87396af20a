"""The replay's fused steps: a residual branch with its LayerNorm, or a norm with its add, as
one primitive.

``fusion.py`` puts each in the place of the recorded steps it stands for (the norm, the
sublayer of ``fused.py`` and the add): a + S(LN(a)) and S(LN(a)) (``residual_normed_*``, S the
attention or the FFN, plain or with pieces), LN(a + S(a)) and LN(w * a + S(a)) (``normed_sum_*``,
with the skip's product too), a + LN(b)
(``add_layer_norm``) and LN(a + b) (``layer_norm_of_sum``). Each kernel calls the loops of the
steps it stands for in their order, so a fused step gives their bits; its VJP is theirs, in
the order the tape would run them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lnref.autograd import (
    fused_pointwise,  # noqa: F401 (defines the element-wise fused steps that fusion.py names beside these)
    kernels,
)
from lnref.autograd.checks import binary_shapes, check_eps, is_number, kernel_error, unbroadcast
from lnref.autograd.fused import heads_pieces_cotangents, stacked_weights_and_pieces
from lnref.autograd.primitive import defprimitive


def _residual_normed_attention_fwd(
    a: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    wq: np.ndarray,
    bq: np.ndarray,
    wk: np.ndarray,
    bk: np.ndarray,
    wv: np.ndarray,
    bv: np.ndarray,
    wo: np.ndarray,
    bo: np.ndarray,
    branch_scale: Any = None,
    *,
    eps: float = 1e-5,
    n_heads: int,
    causal: bool = False,
    residual: bool = True,
) -> tuple[np.ndarray, Any]:
    """y = a + A(LN(a)): a self-attention branch with a LayerNorm (``gamma``, ``beta``) on its
    input, added to the stream ``a``; with ``residual`` False, the branch alone, y = A(LN(a)).
    With ``branch_scale`` w, a number or an array that broadcasts against the branch without
    widening it, the branch is scaled, y = a + w * A(LN(a)) (LayerScale's). A replayed pass
    puts it in the place of the primitives ``layer_norm``, ``attention_sublayer`` and ``add``
    (or the first two; with w, ``mul`` too; ``autograd/fusion.py``).

    VJP, with n = LN(a):
        dn, dW, db = ``attention_sublayer``'s VJP at dy     (with w: at ds = w * dy)
        da_ln, dgamma, dbeta = ``layer_norm``'s VJP at dn
        da = dy + da_ln          (residual False: da = da_ln)
        dw = sum of dy * A(LN(a)) over the axes w was broadcast along (none for a number)
    """
    op, weights = "residual_normed_attention", (wq, bq, wk, bk, wv, bv, wo, bo)
    if branch_scale is not None:
        _check_branch_scale(op, residual, branch_scale)
    adds_stream = residual and branch_scale is None  # with a scale, the stream is added below
    try:
        y, normed, mean, rstd, q, k, v, probs, heads = kernels.residual_normed_attention_forward(
            a, gamma, beta, eps, weights, n_heads, causal, adds_stream
        )
    except (TypeError, ValueError) as error:
        raise kernel_error(op, error, a, gamma, beta, *weights) from None
    kept = (a, gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads, adds_stream)
    if branch_scale is None:
        return y, (kept, None)
    return _scaled_branch_forward(op, a, y, branch_scale), (kept, (y, branch_scale))


def _residual_normed_attention_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    # (da, dgamma, dbeta, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo[, dbranch_scale]): the op's inputs in order.
    kept, scaled = residuals
    if scaled is None:
        return tuple(kernels.residual_normed_attention_backward(dout, *kept))
    return _scaled_branch_vjp(dout, scaled, lambda ds: kernels.residual_normed_attention_backward(ds, *kept))


residual_normed_attention = defprimitive(
    "residual_normed_attention", _residual_normed_attention_fwd, _residual_normed_attention_vjp
)


def _residual_normed_feed_forward_fwd(
    a: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    branch_scale: Any = None,
    *,
    eps: float = 1e-5,
    activation: str = "relu",
    residual: bool = True,
    normed_skip: bool = False,
) -> tuple[np.ndarray, Any]:
    """y = a + F(LN(a)): an FFN branch with a LayerNorm (``gamma``, ``beta``) on its input,
    added to the stream ``a``; the fusion of ``layer_norm``, ``feed_forward`` and ``add``.
    With ``residual`` False, the branch alone, y = F(LN(a)): the fusion of the first two. With
    ``normed_skip``, the branch added to the normed value, y = LN(a) + F(LN(a)). With
    ``branch_scale`` w, the branch scaled, y = a + w * F(LN(a)): the fusion of ``mul`` too.

    VJP, with n = LN(a):
        dn, dW1, db1, dW2, db2 = ``feed_forward``'s VJP at dy     (normed_skip: dn = dy + dn;
                                                                  with w: at ds = w * dy)
        da_ln, dgamma, dbeta = ``layer_norm``'s VJP at dn
        da = dy + da_ln          (residual False or normed_skip: da = da_ln)
        dw = sum of dy * F(LN(a)) over the axes w was broadcast along (none for a number)
    """
    op, weights = "residual_normed_feed_forward", (w1, b1, w2, b2)
    if branch_scale is not None:
        _check_branch_scale(op, residual and not normed_skip, branch_scale)
    adds_stream = residual and branch_scale is None  # with a scale, the stream is added below
    try:
        y, normed, mean, rstd, hidden, acted = kernels.residual_normed_feed_forward_forward(
            a, gamma, beta, eps, weights, activation, adds_stream, normed_skip
        )
    except (TypeError, ValueError) as error:
        raise kernel_error(op, error, a, gamma, beta, *weights) from None
    kept = (a, gamma, normed, mean, rstd, w1, w2, hidden, acted, activation, adds_stream, normed_skip)
    if branch_scale is None:
        return y, (kept, None)
    return _scaled_branch_forward(op, a, y, branch_scale), (kept, (y, branch_scale))


def _residual_normed_feed_forward_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    kept, scaled = residuals
    if scaled is None:
        return tuple(kernels.residual_normed_feed_forward_backward(dout, *kept))
    return _scaled_branch_vjp(dout, scaled, lambda ds: kernels.residual_normed_feed_forward_backward(ds, *kept))


def _check_branch_scale(op: str, plain_residual: bool, branch_scale: Any) -> None:
    """A branch scale is a number or an array, on a branch added to the stream itself."""
    if not plain_residual or not (is_number(branch_scale) or type(branch_scale) is np.ndarray):
        raise ValueError(f"{op}: branch_scale takes a number or an array, and the residual add without normed_skip")


def _scaled_branch_forward(op: str, a: np.ndarray, branch: np.ndarray, scale: Any) -> np.ndarray:
    """a + w * branch, as ``mul`` and ``add`` compute it (each product and sum alike in either
    operand order)."""
    scale_shape, branch_shape = binary_shapes(op, scale, branch)
    fits = branch_shape[len(branch_shape) - len(scale_shape) :] == scale_shape  # a per-feature scale, or a number
    if not fits and np.broadcast_shapes(scale_shape, branch_shape) != branch_shape:
        raise ValueError(f"{op}: branch_scale of shape {scale_shape} widens the branch of shape {branch_shape}")
    return a + scale * branch


def _scaled_branch_vjp(dy: np.ndarray, scaled: Any, branch_vjp: Any) -> tuple[Any, ...]:
    """The cotangents of y = a + w * S(LN(a)): the add's, then the product's (``mul``'s, summed
    as it sums them), then the normed branch's at ds = w dy, and a's two terms in the order the
    tape adds them."""
    branch, scale = scaled
    dscale = None if is_number(scale) else unbroadcast(dy * branch, np.shape(scale))
    da_ln, *grads = branch_vjp(unbroadcast(dy * scale, branch.shape))
    return (dy + da_ln, *grads, dscale)


residual_normed_feed_forward = defprimitive(
    "residual_normed_feed_forward", _residual_normed_feed_forward_fwd, _residual_normed_feed_forward_vjp
)


def _residual_normed_heads_pieces_attention_fwd(
    a: np.ndarray,
    norm_gamma: np.ndarray,
    norm_beta: np.ndarray,
    *attention: Any,
    norm_eps: float = 1e-5,
    n_heads: int,
    causal: bool = False,
    eps: float = 1e-5,
    out_eps: float = 1e-5,
    residual: bool = True,
) -> tuple[np.ndarray, Any]:
    """y = a + A(LN(a)), A ``heads_pieces_attention`` of the 17 arguments after ``norm_beta``
    (its weights and pieces, in its order) and LN a LayerNorm (``norm_gamma``, ``norm_beta``,
    ``norm_eps``) on the branch's input. Two more arguments, ``out_gamma`` and ``out_beta``,
    normalize the branch's output as well: y = a + LN_out(A(LN(a))) (``out_eps``). With
    ``residual`` False, the branch alone. A replayed pass puts it in the place of
    ``layer_norm``, ``heads_pieces_attention``, the second ``layer_norm`` and ``add`` (or of
    some of them; ``autograd/fusion.py``), with their kernels called in their order.

    VJP, with n = LN(a) and s = A(n):
        ds, dout_gamma, dout_beta = ``layer_norm``'s VJP at dy      (no output norm: ds = dy)
        dn, dW, dpieces = ``heads_pieces_attention``'s VJP at ds
        da_ln, dnorm_gamma, dnorm_beta = ``layer_norm``'s VJP at dn
        da = dy + da_ln          (residual False: da = da_ln)
    """
    op = "residual_normed_heads_pieces_attention"
    if len(attention) not in (17, 19):
        raise ValueError(
            f"{op}: takes the attention's 8 weights and 9 pieces after the norm, and an output norm's gain and "
            f"shift, or not; got {len(attention)} arguments"
        )
    if not (0 < norm_eps < math.inf and 0 < out_eps < math.inf):  # (False for NaN too)
        check_eps(op, norm_eps, a)
        check_eps(op, out_eps, a)
    weights, biases, pieces = stacked_weights_and_pieces(op, a, attention[:8], attention[8:17])
    out_norm = attention[17:] if len(attention) == 19 else (np.empty(0, a.dtype),) * 2
    try:
        y, *kept = kernels.residual_normed_heads_pieces_attention_forward(
            a, norm_gamma, norm_beta, norm_eps, weights, biases, pieces, out_norm, n_heads, causal, eps, out_eps,
            residual,
        )  # fmt: skip
    except (TypeError, ValueError) as error:
        raise kernel_error(op, error, a, norm_gamma, norm_beta, weights, *pieces, *out_norm) from None
    q_g, _, k_g, _, v_g, _, c, g, _ = pieces
    given = [piece is not None for piece in attention[8:17]]
    normed, mean, rstd, branch, out_mean, out_rstd = kept[:6]
    residuals = (a, norm_gamma, normed, mean, rstd, out_norm[0], branch, out_mean, out_rstd, weights, q_g, k_g, v_g)
    return y, ((*residuals, c, g, *kept[6:], residual), given, len(attention) == 19)


def _residual_normed_heads_pieces_attention_vjp(dy: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    kept, given, out_norm = residuals
    grads = kernels.residual_normed_heads_pieces_attention_backward(dy, *kept)
    da, dgamma, dbeta, dout_gamma, dout_beta, dw, db, *dpieces = grads
    out_grads = (dout_gamma, dout_beta) if out_norm else ()
    return (da, dgamma, dbeta, *heads_pieces_cotangents(dw, db, dpieces, given), *out_grads)


residual_normed_heads_pieces_attention = defprimitive(
    "residual_normed_heads_pieces_attention",
    _residual_normed_heads_pieces_attention_fwd,
    _residual_normed_heads_pieces_attention_vjp,
)


def _residual_normed_normed_feed_forward_fwd(
    a: np.ndarray,
    norm_gamma: np.ndarray,
    norm_beta: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    *,
    norm_eps: float = 1e-5,
    activation: str = "relu",
    eps: float = 1e-5,
    residual: bool = True,
) -> tuple[np.ndarray, Any]:
    """y = a + F(LN(a)), F ``normed_feed_forward`` (the FFN with a LayerNorm, ``gamma``,
    ``beta``, ``eps``, on its hidden units) and LN a LayerNorm (``norm_gamma``, ``norm_beta``,
    ``norm_eps``) on the branch's input; with ``residual`` False, y = F(LN(a)). The fusion of
    ``layer_norm``, ``normed_feed_forward`` and ``add`` (or the first two), with their kernels
    called in their order.

    VJP, with n = LN(a):
        dn, dW1, db1, dgamma, dbeta, dW2, db2 = ``normed_feed_forward``'s VJP at dy
        da_ln, dnorm_gamma, dnorm_beta = ``layer_norm``'s VJP at dn
        da = dy + da_ln          (residual False: da = da_ln)
    """
    if not 0 < norm_eps < math.inf:  # (False for NaN too)
        check_eps("residual_normed_normed_feed_forward", norm_eps, a)
    weights = (w1, b1, gamma, beta, w2, b2)
    try:
        y, *kept = kernels.residual_normed_normed_feed_forward_forward(
            a, norm_gamma, norm_beta, norm_eps, weights, activation, eps, residual
        )
    except (TypeError, ValueError) as error:
        raise kernel_error("residual_normed_normed_feed_forward", error, a, norm_gamma, norm_beta, *weights) from None
    normed, mean, rstd, hidden, acted, *hidden_norm = kept
    return y, (a, norm_gamma, normed, mean, rstd, w1, gamma, w2, hidden, acted, *hidden_norm, activation, residual)


def _residual_normed_normed_feed_forward_vjp(dy: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    return tuple(kernels.residual_normed_normed_feed_forward_backward(dy, *residuals))


residual_normed_normed_feed_forward = defprimitive(
    "residual_normed_normed_feed_forward",
    _residual_normed_normed_feed_forward_fwd,
    _residual_normed_normed_feed_forward_vjp,
)


def _add_layer_norm_fwd(
    a: np.ndarray, b: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, eps: float = 1e-5
) -> tuple[np.ndarray, Any]:
    """y = a + LN(b), LN a LayerNorm (``gamma``, ``beta``) of ``b``: a normed value added to
    another (a norm after a branch, a second stream's norm). A replayed pass puts it in the
    place of the two primitives ``layer_norm`` and ``add`` (``autograd/fusion.py``), with
    their kernels and their sum.

    VJP:  da = dy,   db, dgamma, dbeta = ``layer_norm``'s VJP at dy
    """
    if not 0 < eps < math.inf:  # (False for NaN too)
        check_eps("add_layer_norm", eps, b)
    if type(b) is not np.ndarray or not b.ndim:
        raise ValueError(f"add_layer_norm: b must be an array of at least one axis, got shape {np.shape(b)}")
    rows = b.reshape(-1, b.shape[-1])
    try:
        normed, mean, rstd = kernels.layer_norm_forward(rows, gamma, beta, eps)
    except (TypeError, ValueError) as error:
        raise kernel_error("add_layer_norm", error, b, gamma, beta) from None
    normed = normed.reshape(b.shape)
    shapes = binary_shapes("add_layer_norm", a, normed)
    return a + normed, (rows, gamma, mean, rstd, shapes)


def _add_layer_norm_vjp(dy: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    rows, gamma, mean, rstd, (a_shape, normed_shape) = residuals
    dnormed = unbroadcast(dy, normed_shape)
    db, dgamma, dbeta = kernels.layer_norm_backward(
        dnormed.reshape(rows.shape), rows, gamma, mean, rstd, residuals_checked=True
    )
    return unbroadcast(dy, a_shape), db.reshape(normed_shape), dgamma, dbeta


add_layer_norm = defprimitive("add_layer_norm", _add_layer_norm_fwd, _add_layer_norm_vjp)


def _layer_norm_of_sum_fwd(
    a: np.ndarray, b: np.ndarray, gamma: np.ndarray, beta: np.ndarray, divisor: Any = None, *, eps: float = 1e-5
) -> tuple[np.ndarray, Any]:
    """y = LN(a + b), LN a LayerNorm (``gamma``, ``beta``) of a sum whose value nothing else
    reads (a stream renormalized after its residual add). A replayed pass puts it in the place
    of the two primitives ``add`` and ``layer_norm`` (``autograd/fusion.py``), with their sum
    and the norm's kernels. With ``divisor`` c, a number, the second term is divided first,
    y = LN(a + b / c): the fusion of ``div`` too.

    VJP:  dt, dgamma, dbeta = ``layer_norm``'s VJP at dy (t = a + b),   da = dt,   db = dt
          (with c: db = dt / c, and none for c)
    """
    if not 0 < eps < math.inf:  # (False for NaN too)
        check_eps("layer_norm_of_sum", eps, a)
    if divisor is not None and not is_number(divisor):
        raise ValueError(f"layer_norm_of_sum: divisor must be a number, got {type(divisor).__name__}")
    shapes = binary_shapes("layer_norm_of_sum", a, b)
    total = a + (b if divisor is None else b / divisor)
    if not total.ndim:
        raise ValueError(f"layer_norm_of_sum: a + b must have at least one axis, got shapes {shapes}")
    rows = total.reshape(-1, total.shape[-1])
    try:
        normed, mean, rstd = kernels.layer_norm_forward(rows, gamma, beta, eps)
    except (TypeError, ValueError) as error:
        raise kernel_error("layer_norm_of_sum", error, a, b, gamma, beta) from None
    return normed.reshape(total.shape), (rows, gamma, mean, rstd, shapes, divisor)


def _layer_norm_of_sum_vjp(dy: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    rows, gamma, mean, rstd, (a_shape, b_shape), divisor = residuals
    dtotal, dgamma, dbeta = kernels.layer_norm_backward(
        dy.reshape(rows.shape), rows, gamma, mean, rstd, residuals_checked=True
    )
    dtotal = dtotal.reshape(dy.shape)
    if divisor is None:
        return unbroadcast(dtotal, a_shape), unbroadcast(dtotal, b_shape), dgamma, dbeta
    return unbroadcast(dtotal, a_shape), unbroadcast(dtotal, b_shape) / divisor, dgamma, dbeta, None


layer_norm_of_sum = defprimitive("layer_norm_of_sum", _layer_norm_of_sum_fwd, _layer_norm_of_sum_vjp)


def _normed_sum_attention_fwd(
    a: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    wq: np.ndarray,
    bq: np.ndarray,
    wk: np.ndarray,
    bk: np.ndarray,
    wv: np.ndarray,
    bv: np.ndarray,
    wo: np.ndarray,
    bo: np.ndarray,
    skip_scale: Any = None,
    *,
    eps: float = 1e-5,
    n_heads: int,
    causal: bool = False,
) -> tuple[np.ndarray, Any]:
    """y = LN(a + A(a)): the LayerNorm (``gamma``, ``beta``) of the stream ``a`` plus its
    self-attention branch. A replayed pass puts it in the place of the three primitives
    ``attention_sublayer``, ``add`` and ``layer_norm`` (``autograd/fusion.py``). With
    ``skip_scale`` w, a number or an array of a's last axis, the skip is scaled,
    y = LN(w * a + A(a)): the fusion of ``mul`` too.

    VJP, with t = a + A(a):
        dt, dgamma, dbeta = ``layer_norm``'s VJP at dy
        da_A, dW, db = ``attention_sublayer``'s VJP at dt
        da = dt + da_A
    and with t = w * a + A(a):
        da = w * dt + da_A,   dw = sum of dt * a over a's leading axes (none for a number)
    """
    weights = (wq, bq, wk, bk, wv, bv, wo, bo)
    scale = None if skip_scale is None else _skip_scale("normed_sum_attention", skip_scale, a)
    try:
        if scale is None:
            y, total, mean, rstd, q, k, v, probs, heads = kernels.normed_sum_attention_forward(
                a, gamma, beta, eps, weights, n_heads, causal
            )
        else:
            y, total, mean, rstd, q, k, v, probs, heads = kernels.normed_scaled_sum_attention_forward(
                a, scale, gamma, beta, eps, weights, n_heads, causal
            )
    except (TypeError, ValueError) as error:
        raise kernel_error("normed_sum_attention", error, a, gamma, beta, *weights) from None
    return y, ((a, gamma, total, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads), scale, skip_scale)


def _normed_sum_attention_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    # (da, dgamma, dbeta, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo[, dskip_scale]): the op's inputs in order.
    (a, *kept), scale, skip_scale = residuals
    if scale is None:
        return tuple(kernels.normed_sum_attention_backward(dout, a, *kept))
    da, dtotal, *grads = kernels.normed_scaled_sum_attention_backward(dout, a, scale, *kept)
    return (da, *grads, _skip_scale_cotangent(dtotal, a, skip_scale))


normed_sum_attention = defprimitive("normed_sum_attention", _normed_sum_attention_fwd, _normed_sum_attention_vjp)


def _normed_sum_feed_forward_fwd(
    a: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    skip_scale: Any = None,
    *,
    eps: float = 1e-5,
    activation: str = "relu",
) -> tuple[np.ndarray, Any]:
    """y = LN(a + F(a)): the LayerNorm (``gamma``, ``beta``) of the stream ``a`` plus its FFN
    branch; the fusion of ``feed_forward``, ``add`` and ``layer_norm``. With ``skip_scale`` w,
    a number or an array of a's last axis, y = LN(w * a + F(a)): the fusion of ``mul`` too.

    VJP, with t = a + F(a):
        dt, dgamma, dbeta = ``layer_norm``'s VJP at dy
        da_F, dW1, db1, dW2, db2 = ``feed_forward``'s VJP at dt
        da = dt + da_F
    and with t = w * a + F(a):
        da = w * dt + da_F,   dw = sum of dt * a over a's leading axes (none for a number)
    """
    weights = (w1, b1, w2, b2)
    scale = None if skip_scale is None else _skip_scale("normed_sum_feed_forward", skip_scale, a)
    try:
        if scale is None:
            y, total, mean, rstd, hidden, acted = kernels.normed_sum_feed_forward_forward(
                a, gamma, beta, eps, weights, activation
            )
        else:
            y, total, mean, rstd, hidden, acted = kernels.normed_scaled_sum_feed_forward_forward(
                a, scale, gamma, beta, eps, weights, activation
            )
    except (TypeError, ValueError) as error:
        raise kernel_error("normed_sum_feed_forward", error, a, gamma, beta, *weights) from None
    return y, ((a, gamma, total, mean, rstd, w1, w2, hidden, acted, activation), scale, skip_scale)


def _normed_sum_feed_forward_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    (a, *kept), scale, skip_scale = residuals
    if scale is None:
        return tuple(kernels.normed_sum_feed_forward_backward(dout, a, *kept))
    da, dtotal, *grads = kernels.normed_scaled_sum_feed_forward_backward(dout, a, scale, *kept)
    return (da, *grads, _skip_scale_cotangent(dtotal, a, skip_scale))


def _skip_scale(op: str, skip_scale: Any, a: Any) -> np.ndarray:
    """The skip's scale as an array of a's last axis: a number's d copies (of a's dtype, as a
    product with the number rounds it), an array of that shape itself; or an error."""
    d = np.shape(a)[-1] if np.ndim(a) else 0
    if is_number(skip_scale):
        return np.full(d, skip_scale, dtype=getattr(a, "dtype", None))
    if type(skip_scale) is not np.ndarray or skip_scale.shape != (d,):
        raise ValueError(
            f"{op}: skip_scale must be a number or an array of shape ({d},), got shape {np.shape(skip_scale)}"
        )
    return skip_scale


def _skip_scale_cotangent(dtotal: np.ndarray, a: np.ndarray, skip_scale: Any) -> np.ndarray | None:
    """The cotangent of the scale in w * a: ``mul``'s, summed as it sums it (none for a number)."""
    return None if is_number(skip_scale) else unbroadcast(dtotal * a, skip_scale.shape)


normed_sum_feed_forward = defprimitive(
    "normed_sum_feed_forward", _normed_sum_feed_forward_fwd, _normed_sum_feed_forward_vjp
)
