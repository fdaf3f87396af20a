"""The replay's fused element-wise steps: a few element-wise primitives as one.

``fusion.py`` puts each in the place of the recorded steps it stands for:

    y = a - s sg(b)    ``sub_scaled_stop_gradient``, for sub(a, mul(s, stop_gradient(b)))
    y = x sigma(g)     ``mul_sigmoid``, for mul(x, sigmoid(g))
    y = a u + b w      ``sum_of_products``, for add(mul(a, u), mul(b, w))

(with b = a, the first scales a value down going forward and passes its gradient back as it
is; with g = x, the second is SiLU; the third is a weighted skip and branch, DeepScaleLM's
lambda x + beta S(N(x))). Each computes what the steps compute, with their
expressions, so it gives their bits, and its VJP gives the cotangents their VJPs give, in the
order the tape would run them: an argument slot given twice (a and b, x and g) receives its
terms in the order the tape adds them. The arrays are small and the work is one or two NumPy
expressions: what a fused step saves is the calls, not arithmetic, so there is no kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lnref.autograd import ops  # noqa: F401 (defines the sigmoid read below)
from lnref.autograd.checks import binary_shapes, is_number, unbroadcast
from lnref.autograd.primitive import DEFINED, defprimitive

Residuals = Any
Cotangents = tuple[Any, ...]


def _sub_scaled_stop_gradient_fwd(a: Any, s: Any, b: Any) -> tuple[Any, Residuals]:
    """y = a - s sg(b): ``b`` scaled by ``s`` and taken from ``a``, no gradient reaching ``b``.
    A replayed pass puts it in the place of ``stop_gradient``, ``mul`` and ``sub`` (either
    order of the mul's operands gives the same product).

    VJP (the sub's, then the mul's at the sub's cotangent of the product p = s sg(b)):
        da = dy,   dp = -dy,   ds = sum(dp * b) over the axes s was broadcast along,   db = none
    """
    binary_shapes("sub_scaled_stop_gradient", s, b)
    scaled = s * b
    shapes = binary_shapes("sub_scaled_stop_gradient", a, scaled)
    return a - scaled, (s, b, shapes)


def _sub_scaled_stop_gradient_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    s, b, (a_shape, scaled_shape) = residuals
    dscaled = unbroadcast(-dout, scaled_shape)
    ds = None if is_number(s) else unbroadcast(dscaled * b, np.shape(s))
    return unbroadcast(dout, a_shape), ds, None


sub_scaled_stop_gradient = defprimitive(
    "sub_scaled_stop_gradient", _sub_scaled_stop_gradient_fwd, _sub_scaled_stop_gradient_vjp
)


# The primitives as ``ops`` defines them, whatever a test puts in the registry: a fused step
# stands for the defined ones (a replay with a swapped one runs the recorded steps).
_SIGMOID, _MUL, _ADD = DEFINED["sigmoid"], DEFINED["mul"], DEFINED["add"]


def _mul_sigmoid_fwd(x: Any, g: Any) -> tuple[Any, Residuals]:
    """y = x sigma(g), sigma(g) = 1 / (1 + e^-g) as ``sigmoid`` computes it: a gate on ``x``,
    or SiLU with g = x. A replayed pass puts it in the place of ``sigmoid`` and ``mul``.

    VJP (the mul's, then the sigmoid's at the mul's cotangent of the gate):
        dx = dy sigma(g),   dgate = dy x,   dg = dgate sigma(g) (1 - sigma(g))
    """
    binary_shapes("mul_sigmoid", x, g)
    gate, _ = _SIGMOID.forward(g)
    return x * gate, (x, gate, np.shape(x))


def _mul_sigmoid_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    x, gate, x_shape = residuals
    dx = None if is_number(x) else unbroadcast(dout * gate, x_shape)
    (dg,) = _SIGMOID.vjp(unbroadcast(dout * x, np.shape(gate)), gate)
    return dx, dg


mul_sigmoid = defprimitive("mul_sigmoid", _mul_sigmoid_fwd, _mul_sigmoid_vjp)


def _sum_of_products_fwd(a: Any, u: Any, b: Any, w: Any) -> tuple[Any, Residuals]:
    """y = a u + b w: two products and their sum, each operand an array or a number. A replayed
    pass puts it in the place of two ``mul`` steps and the ``add`` of their outputs.

    VJP (the add's, then each mul's at its product's cotangent, as ``ops`` defines them):
        dp, dq = dy unbroadcast to the shapes of p = a u and q = b w
        da = dp u,   du = dp a,   db = dq w,   dw = dq b   (each summed over the axes it was
                                                            broadcast along; none for a number)
    """
    binary_shapes("sum_of_products", a, u)
    binary_shapes("sum_of_products", b, w)
    first, second = a * u, b * w
    shapes = binary_shapes("sum_of_products", first, second)
    return first + second, (a, u, b, w, shapes)


def _sum_of_products_vjp(dout: np.ndarray, residuals: Residuals) -> Cotangents:
    a, u, b, w, shapes = residuals
    dfirst, dsecond = _ADD.vjp(dout, shapes)
    return (*_MUL.vjp(dfirst, (a, u)), *_MUL.vjp(dsecond, (b, w)))


sum_of_products = defprimitive("sum_of_products", _sum_of_products_fwd, _sum_of_products_vjp)
