"""The mixtures' weights per token from a sublayer's stacked copies, one kernel each way: vec(x),
its norm, three gated maps and the Sinkhorn rounds that give H_pre, H_post and H_res (mHC's
mappings).

With the n copies of the stream stacked, ``xs`` (n, ..., d), the mapping norm's ``gamma`` and
``beta`` (n d,), and each map's phi (n d, q), alpha (0-d) and b (q,):

    forward:   flat = the copies side by side (..., n d)      (``concatenate``, stacked)
               u = LN(flat)                                   (``layer_norm``)
               h_pre, h_post, res = alpha (u phi) + b each, with its sigmoid and gain where it has
                                    one                       (``scaled_linear``, in that order)
               h_res = the Sinkhorn rounds of res as (..., m, m)   (``reshape``, ``sinkhorn``)
    backward:  dres = Sinkhorn's backward at dh_res,
               du_res, du_post, du_pre and each map's dphi, dalpha, db = the maps' backwards,
                                    the res map's first, then the post map's, then the pre map's,
               du = (du_res + du_post) + du_pre   (the order in which a replay sums them),
               dflat, dgamma, dbeta = LN's backward at du,
               dxs = dflat's copies as rows (the stacked concatenate's VJP: a view)

A replayed pass runs these as part of one step with the mixed sublayer that reads them
(``autograd/mapped_copies.py``); here each way is one compiled call calling the parts' own loops
in that order, so the step has the parts' bits. The forward alone is two: Sinkhorn's part takes
NumPy's exponential of the logits (a compiled exp may differ from it in the last bit), so the
rounds' kernel runs after it, apart from the norm's and the maps' kernel. The backward
recomputes the rounds from exp(logits), as Sinkhorn's own backward loop does: kept from the
forward, they would be 2 K m^2 values a token (K rounds) held across the whole pass, which
costs more in cache than the divisions cost again. Past the maps' loop
limit (the smallest of the parts'; the norm's and Sinkhorn's loops have none), or while a test
or a benchmark has put another implementation in the place of one of the parts, the NumPy twin
runs the parts' public kernels in turn, which then pick their own paths as the taped pass's do.

The forward returns ``(h_pre, h_post, h_res, flat, mean, rstd, u, z_pre, gate_pre, z_post,
gate_post, z_res, gate_res, exp_logits)``: the three mappings, then what the backward takes
(each map's z = u phi and, with the sigmoid, its gate; None without). ``flat`` and ``u`` are
rows (rows, n d), the maps' outputs and residuals (rows, q) and ``exp_logits`` (rows, m, m);
the public forward gives the mappings the copies' leading axes. The backward returns ``(dxs,
dgamma, dbeta, dphi_pre, dalpha_pre, db_pre, dphi_post, dalpha_post, db_post, dphi_res,
dalpha_res, db_res)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import lnref.autograd.kernels as kernels
from lnref.autograd.kernels import norms, scaled_linear, sinkhorn
from lnref.autograd.kernels.branches import path
from lnref.autograd.kernels.checks import check_fit, cotangent, float_arrays
from lnref.autograd.kernels.norms import layer_norm_backward_kernel, layer_norm_forward_kernel
from lnref.autograd.kernels.scaled_linear import _scaled_linear_backward_kernel, _scaled_linear_forward_kernel
from lnref.autograd.kernels.seam import Twin, njit
from lnref.autograd.kernels.sinkhorn import _sinkhorn_backward_kernel

Arrays = tuple[Any, ...]
# The three maps, in the order the pass computes them.
MAPS = ("pre", "post", "res")


# ----- the NumPy twins: the parts' public kernels in turn ----------------------------------


def mixing_mappings_forward_reference(xs: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, maps: Arrays,
                                   sigmoids: tuple[bool, ...], gains: tuple[float, ...], side: int,
                                   iterations: int) -> Arrays:  # fmt: skip
    """NumPy twin; ``maps`` the three maps' (phi, alpha, b), b of q entries (q,)."""
    n, d = xs.shape[0], xs.shape[-1]
    lead = xs.shape[1:-1]
    flat = xs.transpose(*range(1, len(lead) + 1), 0, len(lead) + 1).reshape(-1, n * d)  # the copies side by side
    u, mean, rstd = kernels.layer_norm_forward(flat, gamma, beta, eps)
    ys, kept = [], []
    for k in range(3):
        phi, alpha, b = maps[3 * k : 3 * k + 3]
        y, (_, _, _, _, z, gate, _) = kernels.scaled_linear_forward(
            u.reshape(*lead, n * d), phi, alpha, b, sigmoids[k], gains[k]
        )
        ys.append(y.reshape(-1, phi.shape[1]))
        kept += [z.reshape(-1, phi.shape[1]), None if gate is None else gate.reshape(-1, phi.shape[1])]
    h_res, exp_logits = kernels.sinkhorn_forward(ys[2].reshape(-1, side, side), iterations)
    return (ys[0], ys[1], h_res, flat, mean, rstd, u, *kept, exp_logits)


def mixing_mappings_backward_reference(dh_pre: np.ndarray, dh_post: np.ndarray, dh_res: np.ndarray, xs_shape: Any,
                                    gamma: np.ndarray, maps: Arrays, gains: tuple[float, ...], iterations: int,
                                    flat: np.ndarray, mean: np.ndarray, rstd: np.ndarray, u: np.ndarray,
                                    *kept: Any) -> Arrays:  # fmt: skip
    """NumPy twin; ``kept`` the forward's z and gate of each map, then ``exp_logits``."""
    *maps_kept, exp_logits = kept
    lead = xs_shape[1:-1]
    rows_u = u.reshape(*lead, u.shape[-1])  # the maps took u with the copies' leading axes
    dres = kernels.sinkhorn_backward(dh_res, exp_logits, iterations)
    grads: list[Any] = [None] * 9
    du = None
    for k, dy in ((2, dres), (1, dh_post), (0, dh_pre)):
        phi, alpha = maps[3 * k], maps[3 * k + 1]
        q = phi.shape[1]
        z, gate = maps_kept[2 * k], maps_kept[2 * k + 1]
        reshaped = (*lead, q)
        residuals = (rows_u, phi, alpha, (q,), z.reshape(reshaped), None if gate is None else gate.reshape(reshaped),
                     gains[k])  # fmt: skip
        du_k, *grads[3 * k : 3 * k + 3] = kernels.scaled_linear_backward(dy.reshape(reshaped), residuals)
        du = du_k if du is None else du + du_k
    du_rows = du.reshape(flat.shape)  # type: ignore[union-attr]
    dflat, dgamma, dbeta = kernels.layer_norm_backward(du_rows, flat, gamma, mean, rstd, residuals_checked=True)
    return (_as_rows(dflat, xs_shape), dgamma, dbeta, *grads)


def _as_rows(dflat: np.ndarray, xs_shape: Any) -> np.ndarray:
    """The cotangent of the copies side by side (rows, n d) as the copies (n, ..., d): a view."""
    n, d, lead = xs_shape[0], xs_shape[-1], len(xs_shape) - 2
    return dflat.reshape(*xs_shape[1:-1], n, d).transpose(lead, *range(lead), lead + 1)


# ----- the compiled kernels ---------------------------------------------------------------


@njit(cache=True)
def _maps_forward_kernel(
    xs: Any, gamma: Any, beta: Any, eps: float, phi_pre: Any, alpha_pre: float, b_pre: Any, gain_pre: float,
    sigmoid_pre: bool, phi_post: Any, alpha_post: float, b_post: Any, gain_post: float, sigmoid_post: bool,
    phi_res: Any, alpha_res: float, b_res: Any, gain_res: float, sigmoid_res: bool, flat: Any, u: Any, mean: Any,
    rstd: Any, z_pre: Any, y_pre: Any, gate_pre: Any, z_post: Any, y_post: Any, gate_post: Any, z_res: Any,
    y_res: Any, gate_res: Any,
) -> None:  # fmt: skip
    """The concatenate's copy, the norm's loop and the three maps' loops, in the pass's order."""
    n, d = xs.shape[0], xs.shape[-1]
    rows = flat.shape[0]
    copies = xs.reshape((n, rows, d))
    for r in range(rows):
        for i in range(n):
            for j in range(d):
                flat[r, i * d + j] = copies[i, r, j]
    layer_norm_forward_kernel(flat, gamma, beta, eps, u, mean, rstd)
    _scaled_linear_forward_kernel(u, phi_pre, alpha_pre, b_pre, gain_pre, z_pre, y_pre, gate_pre, sigmoid_pre)
    _scaled_linear_forward_kernel(u, phi_post, alpha_post, b_post, gain_post, z_post, y_post, gate_post, sigmoid_post)
    _scaled_linear_forward_kernel(u, phi_res, alpha_res, b_res, gain_res, z_res, y_res, gate_res, sigmoid_res)


@njit(cache=True)
def _mixing_mappings_backward_kernel(
    dh_pre: Any, dh_post: Any, dh_res: Any, exp_logits: Any, iterations: int, flat: Any, gamma: Any, mean: Any,
    rstd: Any, u: Any, phi_pre: Any, alpha_pre: float, z_pre: Any, gate_pre: Any, gain_pre: float, sigmoid_pre: bool,
    phi_post: Any, alpha_post: float, z_post: Any, gate_post: Any, gain_post: float, sigmoid_post: bool,
    phi_res: Any, alpha_res: float, z_res: Any, gate_res: Any, gain_res: float, sigmoid_res: bool, dres: Any,
    du_res: Any, dphi_res: Any, totals_res: Any, du_post: Any, dphi_post: Any, totals_post: Any, du_pre: Any,
    dphi_pre: Any, totals_pre: Any, du: Any, dflat: Any, dgamma: Any, dbeta: Any,
) -> None:  # fmt: skip
    """Sinkhorn's loop back, the three maps' (res, post, pre), u's sum and the norm's loop back."""
    _sinkhorn_backward_kernel(dh_res, exp_logits, iterations, dres)
    rows = u.shape[0]
    _scaled_linear_backward_kernel(
        dres.reshape((rows, z_res.shape[1])), u, phi_res, alpha_res, z_res, gate_res, gain_res, sigmoid_res, du_res,
        dphi_res, totals_res,
    )  # fmt: skip
    _scaled_linear_backward_kernel(
        dh_post, u, phi_post, alpha_post, z_post, gate_post, gain_post, sigmoid_post, du_post, dphi_post, totals_post
    )
    _scaled_linear_backward_kernel(
        dh_pre, u, phi_pre, alpha_pre, z_pre, gate_pre, gain_pre, sigmoid_pre, du_pre, dphi_pre, totals_pre
    )
    for r in range(rows):
        for j in range(u.shape[1]):
            du[r, j] = (du_res[r, j] + du_post[r, j]) + du_pre[r, j]
    layer_norm_backward_kernel(du, flat, gamma, mean, rstd, dflat, dgamma, dbeta)


# ----- the loop twins: each part's outputs allocated as its own loop twin allocates them ------


def _mixing_mappings_forward_loop(xs: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, maps: Arrays,
                               sigmoids: tuple[bool, ...], gains: tuple[float, ...], side: int,
                               iterations: int) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_maps_forward_kernel`` and Sinkhorn's loop twin)."""
    dtype, width = xs.dtype, xs.shape[0] * xs.shape[-1]
    rows = xs[0].size // xs.shape[-1]
    flat, u = np.empty((rows, width), dtype), np.empty((rows, width), dtype)
    mean, rstd = np.empty(rows, dtype), np.empty(rows, dtype)
    arguments: list[Any] = []
    outputs: list[Any] = []
    ys, kept = [], []
    for k in range(3):
        phi, alpha, b = maps[3 * k : 3 * k + 3]
        shape = (rows, phi.shape[1])
        z, y = np.empty(shape, dtype), np.empty(shape, dtype)
        gate = (y if gains[k] == 1.0 else np.empty(shape, dtype)) if sigmoids[k] else None
        arguments += [phi, float(alpha), b, gains[k], sigmoids[k]]
        outputs += [z, y, y if gate is None else gate]  # the kernel writes the gate into y without the sigmoid
        ys.append(y)
        kept += [z, gate]
    _maps_forward_kernel(*[xs, gamma, beta, eps, *arguments, flat, u, mean, rstd, *outputs])
    h_res, exp_logits = sinkhorn._sinkhorn_forward_loop(ys[2].reshape(rows, side, side), iterations)
    return (ys[0], ys[1], h_res, flat, mean, rstd, u, *kept, exp_logits)


def _mixing_mappings_backward_loop(dh_pre: np.ndarray, dh_post: np.ndarray, dh_res: np.ndarray, xs_shape: Any,
                                gamma: np.ndarray, maps: Arrays, gains: tuple[float, ...], iterations: int,
                                flat: np.ndarray, mean: np.ndarray, rstd: np.ndarray, u: np.ndarray,
                                *kept: Any) -> Arrays:  # fmt: skip
    """Loop twin (allocates, then runs ``_mixing_mappings_backward_kernel``)."""
    *maps_kept, exp_logits = kept
    dtype, (rows, width) = u.dtype, u.shape
    arguments: list[Any] = []
    outputs: list[Any] = []
    for k in range(3):
        phi, alpha = maps[3 * k], maps[3 * k + 1]
        z, gate = maps_kept[2 * k], maps_kept[2 * k + 1]
        arguments += [phi, float(alpha), z, z if gate is None else gate, gains[k], gate is not None]
        outputs.append((np.empty((rows, width), dtype), np.empty(phi.shape, dtype), np.zeros(phi.shape[1] + 1)))
    dres = np.empty(exp_logits.shape, dtype)
    du, dflat = np.empty((rows, width), dtype), np.empty((rows, width), dtype)
    dgamma, dbeta = np.zeros(width), np.zeros(width)  # float64 accumulators, as LayerNorm's loop keeps them
    _mixing_mappings_backward_kernel(*[
        dh_pre.reshape(rows, -1), dh_post.reshape(rows, -1), dh_res, exp_logits, iterations, flat, gamma, mean, rstd,
        u, *arguments, dres, *outputs[2], *outputs[1], *outputs[0], du, dflat, dgamma, dbeta,
    ])  # fmt: skip
    grads: list[Any] = []
    for k in range(3):
        _, dphi, totals = outputs[k]
        q = dphi.shape[1]
        if dtype != totals.dtype:
            totals = totals.astype(dtype)  # rounded once, as the maps' loop twin rounds them
        grads += [dphi, totals[q:].reshape(()), totals[:q]]
    dgamma, dbeta = dgamma.astype(dtype, copy=False), dbeta.astype(dtype, copy=False)
    return (_as_rows(dflat, xs_shape), dgamma, dbeta, *grads)


MIXING_MAPPINGS_FORWARD = Twin(
    "mixing_mappings_forward",
    reference=mixing_mappings_forward_reference,
    loop=_mixing_mappings_forward_loop,
    loop_pays_up_to=scaled_linear.LOOP_PAYS_UP_TO,
)
MIXING_MAPPINGS_BACKWARD = Twin(
    "mixing_mappings_backward",
    reference=mixing_mappings_backward_reference,
    loop=_mixing_mappings_backward_loop,
    loop_pays_up_to=scaled_linear.LOOP_PAYS_UP_TO,
)
# The parts each fused kernel stands for, each way: while one of them is overridden, its NumPy twin runs.
PARTS = {
    MIXING_MAPPINGS_FORWARD: (
        norms.LAYER_NORM_FORWARD, scaled_linear.SCALED_LINEAR_FORWARD, sinkhorn.SINKHORN_FORWARD,
    ),
    MIXING_MAPPINGS_BACKWARD: (
        sinkhorn.SINKHORN_BACKWARD, scaled_linear.SCALED_LINEAR_BACKWARD, norms.LAYER_NORM_BACKWARD,
    ),
}  # fmt: skip


# ----- the public kernels ------------------------------------------------------------------


def _work(rows: int, width: int, maps: Any) -> int:
    """The largest map's multiply-adds, the measure of the maps' loop limit."""
    return rows * width * max(maps[0].shape[1], maps[3].shape[1], maps[6].shape[1])


def mixing_mappings_forward(xs: Any, gamma: Any, beta: Any, eps: float, maps: Arrays, sigmoids: tuple[bool, ...],
                         gains: tuple[float, ...], side: int, iterations: int) -> Arrays:  # fmt: skip
    """H_pre, H_post and H_res of the copies ``xs`` (n, ..., d) (see the module): the mapping
    norm's ``gamma`` and ``beta`` (n d,) and ``eps``, ``maps`` the pre, post and res maps'
    (phi, alpha, b), each map's sigmoid and gain, H_res's ``side`` m (the res map's q = m^2) and
    Sinkhorn's ``iterations``; returns ``(h_pre (..., q), h_post (..., q), h_res (..., m, m),
    flat, mean, rstd, u, z_pre, gate_pre, z_post, gate_post, z_res, gate_res, exp_logits)``."""
    xs, gamma, beta, *arrays = float_arrays(xs, gamma, beta, *maps)
    lead, width = xs.shape[1:-1], xs.shape[0] * xs.shape[-1] if xs.ndim >= 2 else -1
    fits = xs.ndim >= 2 and gamma.shape == beta.shape == (width,) and side >= 1
    for k in range(3):
        phi, alpha, b = arrays[3 * k : 3 * k + 3]
        fits = fits and phi.ndim == 2 and phi.shape[0] == width and alpha.ndim == 0 and b.size == phi.shape[-1]
        if b.ndim != 1:
            arrays[3 * k + 2] = b.reshape(-1)
    if not (fits and arrays[6].shape[1] == side * side):
        phis = (value for name, phi in zip(MAPS, arrays[0::3]) for value in (f"phi_{name}", phi))
        check_fit(False, "xs", xs, "gamma", gamma, "beta", beta, *phis)
    sinkhorn._check_iterations(iterations)
    rows = math.prod(lead)
    fused = MIXING_MAPPINGS_FORWARD
    forward = path(fused, PARTS[fused], _work(rows, width, arrays))
    h_pre, h_post, h_res, *kept = forward(
        xs, gamma, beta, float(eps), tuple(arrays), tuple(map(bool, sigmoids)), tuple(map(float, gains)), side,
        int(iterations),
    )  # fmt: skip
    return (h_pre.reshape(*lead, -1), h_post.reshape(*lead, -1), h_res.reshape(*lead, side, side), *kept)


def mixing_mappings_backward(dh_pre: Any, dh_post: Any, dh_res: Any, xs: np.ndarray, gamma: np.ndarray, maps: Arrays,
                          gains: tuple[float, ...], iterations: int, *kept: Any) -> Arrays:  # fmt: skip
    """The VJP of :func:`mixing_mappings_forward` at ``dh_pre``, ``dh_post`` and ``dh_res`` from its
    ``xs``, ``gamma``, ``maps``, gains, iterations and the arrays it returned after the
    mappings (unchanged); returns ``(dxs, dgamma, dbeta, dphi_pre, dalpha_pre, db_pre,
    dphi_post, dalpha_post, db_post, dphi_res, dalpha_res, db_res)``, dxs a view, each db
    shaped as its b."""
    lead, dtype = xs.shape[1:-1], xs.dtype
    flat, mean, rstd, u, *maps_kept = kept
    exp_logits = maps_kept[-1]
    dh_pre = cotangent(dh_pre, dtype, (*lead, maps[0].shape[1]))
    dh_post = cotangent(dh_post, dtype, (*lead, maps[3].shape[1]))
    dh_res = cotangent(dh_res, dtype, (*lead, *exp_logits.shape[1:])).reshape(exp_logits.shape)
    fused = MIXING_MAPPINGS_BACKWARD
    backward = path(fused, PARTS[fused], _work(flat.shape[0], flat.shape[1], maps))
    dxs, dgamma, dbeta, *grads = backward(
        dh_pre, dh_post, dh_res, xs.shape, gamma, maps, tuple(gains), iterations, flat, mean, rstd, u, *maps_kept
    )
    for k in range(3):
        if np.ndim(maps[3 * k + 2]) != 1:
            grads[3 * k + 2] = grads[3 * k + 2].reshape(np.shape(maps[3 * k + 2]))
    return (dxs, dgamma, dbeta, *grads)
