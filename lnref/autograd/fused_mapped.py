"""The replay's fused steps of an mHC sublayer with its mappings: vec(x), its norm, the three
maps, Sinkhorn and the sublayer between the copies' width and depth connections as one primitive.

``mapped_copies.py`` puts each in the place of the eight steps it stands for, on copies stacked
(n, B, T, d):

    flat = concatenate(xs, axis=-1, stacked=True)      u = layer_norm(flat, mix_gamma, mix_beta)
    h_pre = scaled_linear(u, phi_pre, alpha_pre, b_pre, ...)    h_post = scaled_linear(u, phi_post, ...)
    res = scaled_linear(u, phi_res, ...)   h_res = sinkhorn(reshape(res, shape=(B, T, n, n)), ...)
    y = mixed_normed_S(xs, h_pre, h_res, h_post, gamma, beta, W..., transpose=...)

the last itself the fusion of the width connection, the normed sublayer S (the attention or
the FFN) and the depth connections (``fused_copies.py``). The maps' activations and gains, the
reshape's shape, Sinkhorn's iterations and the mapping norm's eps are static parameters, as
they were the steps'. The forward runs the mappings' kernels (``kernels/mixing_mappings.py``),
then the mixed sublayer's (``kernels/mixed_normed.py``), each calling the parts' own loops in
the parts' order; the VJP runs the mixed sublayer's backward, then the mappings' (Sinkhorn,
the res map, the post map, the pre map, u's cotangent summed in that order, the norm, the
concatenate), and hands the copies the mixed sublayer's term (its depth term plus its width
term) plus the concatenate's: the order in which a replay of the eight steps sums them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lnref.autograd import kernels
from lnref.autograd.checks import kernel_error, plain_float_arrays
from lnref.autograd.fused_copies import depth_weights
from lnref.autograd.primitive import defprimitive

Arrays = tuple[Any, ...]
# The three maps' parameters among a fused step's arguments: after xs, mix_gamma and mix_beta.
N_MAP_ARGUMENTS = 9


def _map_statics(statics: dict[str, Any]) -> tuple[tuple[bool, ...], tuple[float, ...]]:
    """Each map's (sigmoid, gain), from its activation and gain, as ``scaled_linear`` takes them."""
    sigmoids, gains = [], []
    for name in ("pre", "post", "res"):
        activation, gain = statics[f"{name}_activation"], statics[f"{name}_gain"]
        if activation not in (None, "sigmoid") or (activation is None and gain != 1.0):
            raise ValueError(f"the {name} map's activation must be None or 'sigmoid' (a gain goes with it), "
                             f"got {activation!r} and gain {gain}")  # fmt: skip
        sigmoids.append(activation == "sigmoid")
        gains.append(float(gain))
    return tuple(sigmoids), tuple(gains)


def _mappings(op: str, xs: Any, mix_gamma: Any, mix_beta: Any, maps: Arrays, statics: dict[str, Any]) -> Arrays:
    """(h_pre, h_post, h_res, (the mappings' residuals)) of the copies ``xs``, or the op's error."""
    if not plain_float_arrays(xs, mix_gamma, mix_beta, *maps):
        raise TypeError(f"{op}: the copies and the mappings' parameters must be float arrays of one dtype")
    shape, eps = tuple(statics["shape"]), statics["mix_eps"]
    if len(shape) < 2 or shape[:-2] != xs.shape[1:-1] or shape[-2] != shape[-1]:
        raise ValueError(f"{op}: the res map's shape {shape} is not one square matrix per row of copies {xs.shape}")
    if not 0 < eps < math.inf:
        raise ValueError(f"{op}: the mapping norm's eps must be finite and > 0, got {eps}")
    sigmoids, gains = _map_statics(statics)
    try:
        h_pre, h_post, h_res, *kept = kernels.mixing_mappings_forward(
            xs, mix_gamma, mix_beta, eps, maps, sigmoids, gains, shape[-1], statics["iterations"]
        )
    except (TypeError, ValueError) as error:
        raise kernel_error(op, error, xs, mix_gamma, mix_beta, *maps) from None
    return h_pre, h_post, h_res, (mix_gamma, maps, gains, statics["iterations"], kept)


def _mappings_vjp(da_m: Any, db: Any, da_r: Any, xs: np.ndarray, residuals: Any) -> Arrays:
    """(the concatenate's term of the copies' cotangent, then the mapping norm's and the maps'
    cotangents), from those of h_pre, h_post and h_res."""
    mix_gamma, maps, gains, iterations, kept = residuals
    return kernels.mixing_mappings_backward(da_m, db, da_r, xs, mix_gamma, maps, gains, iterations, *kept)


def _split(args: Arrays) -> tuple[Any, Any, Any, Arrays, Any, Any, Arrays]:
    """(xs, mix_gamma, mix_beta, the maps' parameters, gamma, beta, the sublayer's weights)."""
    xs, mix_gamma, mix_beta, *rest = args
    maps, (gamma, beta, *weights) = tuple(rest[:N_MAP_ARGUMENTS]), rest[N_MAP_ARGUMENTS:]
    return xs, mix_gamma, mix_beta, maps, gamma, beta, tuple(weights)


def _mapped_normed_attention_fwd(
    *args: np.ndarray,
    mix_eps: float = 1e-5,
    pre_activation: str | None = None,
    pre_gain: float = 1.0,
    post_activation: str | None = None,
    post_gain: float = 1.0,
    res_activation: str | None = None,
    res_gain: float = 1.0,
    shape: tuple[int, ...],
    iterations: int,
    eps: float = 1e-5,
    n_heads: int,
    causal: bool = False,
    transpose: bool = False,
) -> tuple[np.ndarray, Any]:
    """y = mixed_normed_attention(xs, H_pre, H_res, H_post, gamma, beta, W...), the mappings
    computed from the copies ``xs`` (n, B, T, d); ``args``: ``xs``, the mapping norm's
    ``mix_gamma`` and ``mix_beta`` (n d,), the pre, post and res maps' (phi, alpha, b), then the
    attention sublayer's ``gamma``, ``beta`` and weights (wq, bq, wk, bk, wv, bv, wo, bo):

        u = LN(vec(x)),   H_pre = scaled_linear(u, phi_pre, alpha_pre, b_pre, pre_activation,
        pre_gain),   H_post likewise,   H_res = sinkhorn(reshape(scaled_linear(u, phi_res, ...),
        shape), iterations)

    With ``transpose=True`` H_res's rows are the depth connections' weights (mHC's).

    VJP: dxs_mixed, dH_pre, dH_res, dH_post, dgamma, dbeta, dW = the mixed sublayer's VJP at dy;
    dxs_maps, dmix_gamma, dmix_beta, dmaps = the mappings' VJP (Sinkhorn, the res map, the post
    map, the pre map, the norm, the concatenate); dxs = dxs_mixed + dxs_maps
    """
    statics = dict(mix_eps=mix_eps, pre_activation=pre_activation, pre_gain=pre_gain, post_activation=post_activation,
                   post_gain=post_gain, res_activation=res_activation, res_gain=res_gain, shape=shape,
                   iterations=iterations)  # fmt: skip
    xs, mix_gamma, mix_beta, maps, gamma, beta, weights = _split(args)
    h_pre, h_post, h_res, mapped = _mappings("mapped_normed_attention", xs, mix_gamma, mix_beta, maps, statics)
    a_r = depth_weights(h_res, transpose)
    try:
        y, h, s, *kept = kernels.mixed_normed_attention_forward(
            xs, h_pre, a_r, h_post, gamma, beta, eps, weights, n_heads, causal
        )
    except (TypeError, ValueError) as error:
        raise kernel_error("mapped_normed_attention", error, xs, gamma, beta, *weights) from None
    normed, mean, rstd, q, k, v, probs, heads = kept
    wq, _, wk, _, wv, _, wo, _ = weights
    mixed = (xs, h_pre, a_r, h_post, h, s, gamma, normed, mean, rstd, wq, wk, wv, wo, q, k, v, probs, heads)
    return y, (transpose, mapped, mixed)


def _mapped_vjp(mixed_backward: Any, dout: np.ndarray, residuals: Any) -> Arrays:
    """The mixed sublayer's VJP (``mixed_backward``), then the mappings', the copies' cotangent
    the mixed term plus the concatenate's."""
    transpose, mapped, mixed = residuals
    dxs, da_m, da_r, db, *grads = mixed_backward(dout, *mixed)
    dxs_maps, *dmaps = _mappings_vjp(da_m, db, depth_weights(da_r, transpose), mixed[0], mapped)
    return (dxs + dxs_maps, *dmaps, *grads)


def _mapped_normed_attention_vjp(dout: np.ndarray, residuals: Any) -> Arrays:
    # (dxs, dmix_gamma, dmix_beta, the maps' 9, dgamma, dbeta, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo)
    return _mapped_vjp(kernels.mixed_normed_attention_backward, dout, residuals)


mapped_normed_attention = defprimitive(
    "mapped_normed_attention", _mapped_normed_attention_fwd, _mapped_normed_attention_vjp
)


def _mapped_normed_feed_forward_fwd(
    *args: np.ndarray,
    mix_eps: float = 1e-5,
    pre_activation: str | None = None,
    pre_gain: float = 1.0,
    post_activation: str | None = None,
    post_gain: float = 1.0,
    res_activation: str | None = None,
    res_gain: float = 1.0,
    shape: tuple[int, ...],
    iterations: int,
    eps: float = 1e-5,
    activation: str = "relu",
    transpose: bool = False,
) -> tuple[np.ndarray, Any]:
    """y = mixed_normed_feed_forward(xs, H_pre, H_res, H_post, gamma, beta, w1, b1, w2, b2), the
    mappings computed from the copies ``xs`` as :func:`mapped_normed_attention` computes them;
    ``args`` as its, the FFN's weights last. The VJP is the mixed sublayer's, then the
    mappings', as its.
    """
    statics = dict(mix_eps=mix_eps, pre_activation=pre_activation, pre_gain=pre_gain, post_activation=post_activation,
                   post_gain=post_gain, res_activation=res_activation, res_gain=res_gain, shape=shape,
                   iterations=iterations)  # fmt: skip
    xs, mix_gamma, mix_beta, maps, gamma, beta, weights = _split(args)
    h_pre, h_post, h_res, mapped = _mappings("mapped_normed_feed_forward", xs, mix_gamma, mix_beta, maps, statics)
    a_r = depth_weights(h_res, transpose)
    try:
        y, h, s, normed, mean, rstd, hidden, acted = kernels.mixed_normed_feed_forward_forward(
            xs, h_pre, a_r, h_post, gamma, beta, eps, weights, activation
        )
    except (TypeError, ValueError) as error:
        raise kernel_error("mapped_normed_feed_forward", error, xs, gamma, beta, *weights) from None
    w1, _, w2, _ = weights
    mixed = (xs, h_pre, a_r, h_post, h, s, gamma, normed, mean, rstd, w1, w2, hidden, acted, activation)
    return y, (transpose, mapped, mixed)


def _mapped_normed_feed_forward_vjp(dout: np.ndarray, residuals: Any) -> Arrays:
    return _mapped_vjp(kernels.mixed_normed_feed_forward_backward, dout, residuals)


mapped_normed_feed_forward = defprimitive(
    "mapped_normed_feed_forward", _mapped_normed_feed_forward_fwd, _mapped_normed_feed_forward_vjp
)
