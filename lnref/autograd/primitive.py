"""A primitive: a forward and its vector-Jacobian product over plain arrays, registered by name.

    forward(*inputs, **params) -> (output, residuals)
    vjp(doutput, residuals)    -> one cotangent per input (None where there is none)

Positional arguments are the differentiable inputs (Tensors, arrays or Python numbers); keyword
arguments are static parameters (axis, eps, causal, ...). :func:`defprimitive` registers the
pair in :data:`PRIMITIVES` and returns the function users call. Every call goes through
:func:`call`: it looks the primitive up in the registry (so a test can swap a broken VJP in),
unwraps Tensors, runs the forward, and, while a tape is active and an input needs a
gradient, appends the call to the tape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from lnref.autograd.tape import _ACTIVE_TAPES
from lnref.autograd.tensor import Tensor


class Primitive(NamedTuple):
    name: str
    forward: Callable[..., tuple[Any, Any]]
    vjp: Callable[[Any, Any], tuple[Any, ...]]


PRIMITIVES: dict[str, Primitive] = {}
# Each primitive as lnref defines it, whatever a test has since put in its place in PRIMITIVES.
DEFINED: dict[str, Primitive] = {}


def call(name: str, args: tuple[Any, ...], params: dict[str, Any]) -> Tensor:
    """Run primitive ``name`` on ``args``; record the call on the active tape, if any, when a
    gradient flows through it."""
    primitive = PRIMITIVES[name]
    values = []
    needs_grad = False
    for arg in args:
        if type(arg) is Tensor:
            values.append(arg.value)
            needs_grad = needs_grad or arg.requires_grad
        else:
            values.append(arg)
    out, residuals = primitive.forward(*values, **params)
    result = Tensor.wrap(out, needs_grad)
    if needs_grad and _ACTIVE_TAPES:
        _ACTIVE_TAPES[-1].records.append((primitive, args, params, residuals, result))
    return result


def defprimitive(name: str, forward: Callable[..., tuple[Any, Any]], vjp: Callable[..., tuple[Any, ...]]) -> Callable:
    """Register ``forward``/``vjp`` under ``name`` and return the callable primitive."""
    PRIMITIVES[name] = DEFINED[name] = Primitive(name, forward, vjp)

    def apply(*args: Any, **params: Any) -> Tensor:
        return call(name, args, params)

    apply.__name__ = name
    apply.__doc__ = forward.__doc__
    return apply
