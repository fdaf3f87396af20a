"""The feed-forward sublayer (linear, activation, linear) as one kernel each way.

The model's FFN (``ops.feed_forward``; its docstring states the forward and the VJP):
F(x) = act(x W1 + b1) W2 + b2 on rows ``x`` (n, d), W1 (d, d_ff), W2 (d_ff, d), with act
one of :data:`FFN_ACTIVATIONS`, named as the model names them: ``relu``, ``gelu`` (the exact
erf form, PyTorch's default) and ``gelu_tanh`` (the tanh approximation). Up to the linear
loop kernels' size, one compiled call runs the whole forward and one the whole backward, with
the same loops in the same order as the composition (:func:`feed_forward_forward_reference`),
so the two agree to the bit; bigger FFNs take the composition. The residuals are ``hidden`` =
x W1 + b1 and ``acted`` = act(hidden). Only the GELUs' backward reads ``hidden``: for ReLU the
loops write ``acted`` over it and return that one array for both.

The two products of each direction go through one call site, in a loop of two steps: LLVM
inlines a callee once per call site, and a second copy of the product loops would lengthen
a first run's compilation for no speed (``docs/performance.md``).
"""

from __future__ import annotations

import numpy as np

# The NumPy twins call their parts by the package's public names, as ``ops`` calls kernels: a
# part put in a public name's place (a test's broken kernel) is the part they run.
import lnref.autograd.kernels as kernels
from lnref.autograd.kernels import linear
from lnref.autograd.kernels.activations import gelu_erf, gelu_erf_slope, gelu_tanh, gelu_tanh_slope
from lnref.autograd.kernels.checks import check_fit, cotangent, float_arrays, plain_arrays
from lnref.autograd.kernels.linear import linear_grads_kernel, matmul_kernel
from lnref.autograd.kernels.seam import Twin, njit

FFN_ACTIVATIONS = ("relu", "gelu", "gelu_tanh")
_FFN_RELU, _FFN_GELU, _FFN_GELU_TANH = 0, 1, 2  # their codes in the compiled kernels
FFN_CODES = {"relu": _FFN_RELU, "gelu": _FFN_GELU, "gelu_tanh": _FFN_GELU_TANH}
# The elementwise GELU kernels' name for each flavour.
_APPROXIMATE = {"gelu": "none", "gelu_tanh": "tanh"}


def activate(hidden: np.ndarray, activation: str) -> np.ndarray:
    """act(hidden) as the composition computes it (a new array)."""
    if activation == "relu":
        return kernels.relu_forward(hidden)
    return kernels.gelu_forward(hidden, _APPROXIMATE[activation])


def activation_backward(dacted: np.ndarray, hidden: np.ndarray, acted: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return kernels.relu_backward(dacted, acted)
    return kernels.gelu_backward(dacted, hidden, _APPROXIMATE[activation])


def feed_forward_forward_reference(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    activation: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FFN's forward as the linear maps around the activation; NumPy twin; returns
    ``(out, hidden, acted)``::

        hidden = x W1 + b1,   acted = act(hidden),   out = acted W2 + b2
    """
    hidden = kernels.linear_forward(x, w1, b1)
    acted = activate(hidden, activation)
    return kernels.linear_forward(acted, w2, b2), hidden, acted


def feed_forward_backward_reference(
    dout: np.ndarray,
    x: np.ndarray,
    w1: np.ndarray,
    w2: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    activation: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The FFN's VJP as the linear maps' around the activation's; NumPy twin; returns
    ``(dx, dw1, db1, dw2, db2)``::

        dacted, dW2, db2 = linear VJP at dout     (dacted = dout W2^T, dW2 = acted^T dout)
        dhidden = act'(hidden) * dacted           (ReLU: where acted > 0; GELU: its slope
                                                   at hidden, see kernels.gelu_backward)
        dx, dW1, db1 = linear VJP at dhidden
    """
    dacted, dw2, db2 = kernels.linear_backward(dout, acted, w2)
    dhidden = activation_backward(dacted, hidden, acted, activation)
    dx, dw1, db1 = kernels.linear_backward(dhidden, x, w1)
    return dx, dw1, db1, dw2, db2


@njit(cache=True)
def activate_rows(hidden: np.ndarray, acted: np.ndarray, activation: int) -> None:
    """acted = act(hidden), element by element (``acted`` may be ``hidden``: ReLU in place)."""
    h, a = hidden.ravel(), acted.ravel()
    for i in range(h.size):
        if activation == _FFN_RELU:
            v = h[i]
            a[i] = v if v > 0 or v != v else 0.0  # np.maximum(h, 0): NaN kept, -0.0 to 0.0
        elif activation == _FFN_GELU_TANH:
            a[i] = gelu_tanh(float(h[i]))
        else:
            a[i] = gelu_erf(float(h[i]))


@njit(cache=True)
def activation_backward_rows(dacted: np.ndarray, hidden: np.ndarray, acted: np.ndarray, activation: int) -> None:
    """In place: dacted -> dhidden = act'(hidden) * dacted (ReLU reads ``acted``)."""
    d, h, a = dacted.ravel(), hidden.ravel(), acted.ravel()
    for i in range(d.size):
        if activation == _FFN_RELU:
            d[i] = d[i] if a[i] > 0 else 0.0
        elif activation == _FFN_GELU_TANH:
            d[i] = d[i] * gelu_tanh_slope(float(h[i]))
        else:
            d[i] = d[i] * gelu_erf_slope(float(h[i]))


@njit(cache=True)
def _feed_forward_forward_kernel(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    activation: int,
    hidden: np.ndarray,
    acted: np.ndarray,
    out: np.ndarray,
) -> None:
    """The whole forward of :func:`_feed_forward_forward_loop`: writes ``hidden``, ``acted``
    (which may be ``hidden`` itself) and ``out``."""
    for step in range(2):  # one call site of the product (see the module's docstring)
        if step == 0:
            rows, weight, bias, dest = x, w1, b1, hidden
        else:
            activate_rows(hidden, acted, activation)
            rows, weight, bias, dest = acted, w2, b2, out
        matmul_kernel(rows, weight, bias, dest)


@njit(cache=True)
def _feed_forward_backward_kernel(
    dout: np.ndarray,
    x: np.ndarray,
    w1: np.ndarray,
    w2: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    activation: int,
    dacted: np.ndarray,
    dx: np.ndarray,
    dw1: np.ndarray,
    db1: np.ndarray,
    dw2: np.ndarray,
    db2: np.ndarray,
) -> None:
    """The whole backward of :func:`_feed_forward_backward_loop`, writing every gradient
    (``dacted`` is scratch: dacted, then dhidden in place)."""
    for step in range(2):  # one call site of the product's gradients (as in the forward)
        if step == 0:
            drows, rows, weight, drows_in, dweight, dbias = dout, acted, w2, dacted, dw2, db2
        else:
            activation_backward_rows(dacted, hidden, acted, activation)
            drows, rows, weight, drows_in, dweight, dbias = dacted, x, w1, dx, dw1, db1
        linear_grads_kernel(drows, rows, weight, drows_in, dweight, dbias)


def _feed_forward_forward_loop(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    activation: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loop twin of :func:`feed_forward_forward_reference` (allocates, then runs the kernel)."""
    dtype, rows = x.dtype, x.shape[0]
    hidden = np.empty((rows, w1.shape[1]), dtype)
    acted = hidden if activation == "relu" else np.empty_like(hidden)  # ReLU in place
    out = np.empty((rows, w2.shape[1]), dtype)
    _feed_forward_forward_kernel(x, w1, b1, w2, b2, FFN_CODES[activation], hidden, acted, out)
    return out, hidden, acted


def _feed_forward_backward_loop(
    dout: np.ndarray,
    x: np.ndarray,
    w1: np.ndarray,
    w2: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    activation: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loop twin of :func:`feed_forward_backward_reference` (allocates, then runs the kernel)."""
    dtype = x.dtype
    dacted, dx = np.empty(acted.shape, dtype), np.empty(x.shape, dtype)
    dw1, db1 = np.empty(w1.shape, dtype), np.empty(w1.shape[1], dtype)
    dw2, db2 = np.empty(w2.shape, dtype), np.empty(w2.shape[1], dtype)
    code = FFN_CODES[activation]
    _feed_forward_backward_kernel(dout, x, w1, w2, hidden, acted, code, dacted, dx, dw1, db1, dw2, db2)
    return dx, dw1, db1, dw2, db2


# The FFN's loops are the linear map's, and pay as far: its limit, on the work of the first
# product (rows * d * d_ff). The model reads a ReLU pattern off ``linear_forward``'s product,
# which takes the same path as the FFN's first product at every size.
FEED_FORWARD_FORWARD: Twin = Twin(
    "feed_forward_forward",
    reference=feed_forward_forward_reference,
    loop=_feed_forward_forward_loop,
    loop_pays_up_to=linear.LOOP_PAYS_UP_TO,
)
FEED_FORWARD_BACKWARD: Twin = Twin(
    "feed_forward_backward",
    reference=feed_forward_backward_reference,
    loop=_feed_forward_backward_loop,
    loop_pays_up_to=linear.LOOP_PAYS_UP_TO,
)


def check_activation(activation: str) -> None:
    if activation not in FFN_ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(FFN_ACTIVATIONS)}, got {activation!r}")


def feed_forward_forward(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    activation: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FFN's forward on rows ``x`` (n, d); returns ``(out, hidden, acted)``. See
    :func:`feed_forward_forward_reference`."""
    check_activation(activation)
    x, w1, b1, w2, b2 = float_arrays(x, w1, b1, w2, b2)
    check_fit(
        x.ndim == 2
        and w1.ndim == 2
        and w2.ndim == 2
        and x.shape[1] == w1.shape[0]
        and b1.shape == w1.shape[1:]
        and w2.shape[0] == w1.shape[1]
        and b2.shape == w2.shape[1:],
        "x",
        x,
        "w1",
        w1,
        "b1",
        b1,
        "w2",
        w2,
        "b2",
        b2,
    )
    forward = FEED_FORWARD_FORWARD.pick(x.shape[0] * w1.size)
    return forward(x, w1, b1, w2, b2, activation)


def feed_forward_backward(
    dout: np.ndarray,
    x: np.ndarray,
    w1: np.ndarray,
    w2: np.ndarray,
    hidden: np.ndarray,
    acted: np.ndarray,
    activation: str,
    *,
    residuals_checked: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The FFN's VJP; returns ``(dx, dw1, db1, dw2, db2)``. The arguments after ``dout`` are
    the forward's inputs and residuals (``residuals_checked``: unchanged, see
    :func:`~lnref.autograd.kernels.checks.cotangent`). See :func:`feed_forward_backward_reference`."""
    if residuals_checked and plain_arrays(x, w1, w2):
        dout = cotangent(dout, x.dtype, (x.shape[0], w2.shape[1]))
    else:
        check_activation(activation)
        dout, x, w1, w2, hidden, acted = float_arrays(dout, x, w1, w2, hidden, acted)
        hidden_shape = (x.shape[0], w1.shape[1]) if x.ndim == 2 and w1.ndim == 2 else None
        check_fit(
            hidden_shape is not None
            and w2.ndim == 2
            and x.shape[1] == w1.shape[0]
            and w2.shape[0] == w1.shape[1]
            and dout.shape == (x.shape[0], w2.shape[1])
            and hidden.shape == acted.shape == hidden_shape,
            "dout",
            dout,
            "x",
            x,
            "w1",
            w1,
            "w2",
            w2,
            "hidden",
            hidden,
            "acted",
            acted,
        )
    backward = FEED_FORWARD_BACKWARD.pick(x.shape[0] * w1.size)
    return backward(dout, x, w1, w2, hidden, acted, activation)
