"""The tape: a list of the primitive calls of a pass, walked backwards once.

While a tape is active (``with Tape() as tape:``), every primitive call through which a
gradient flows (one of its inputs requires one) appends one record

    Record(primitive, args, params, residuals, output)

``args`` are the arguments as passed (Tensors, arrays, numbers), ``params`` the static keyword
parameters, ``residuals`` whatever the forward kept for its backward. :func:`backprop` walks the
records newest first: it hands each output's accumulated cotangent to the primitive's VJP and
adds the results into the gradients of the arguments that require one. Gradients are
accumulated, never assigned: a residual stream feeds the same tensor to two places. The tape
knows no op; a replay (``replay.py``) is built from the same records.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import numpy as np

from lnref.autograd.tensor import Tensor

# (primitive, args, params, residuals, output): a plain tuple, made for every call of a pass;
# the tape needs only the primitive's ``vjp``.
Record = tuple[Any, tuple[Any, ...], dict[str, Any], Any, Tensor]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for the block (nests; restored after).

    A recorded pass creates thousands of small containers (records, Tensors, tuples of
    residuals), none in a reference cycle: reference counting frees them all. Their allocation
    alone would start collections that walk every live object of the process.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Tape:
    """Records the primitive calls made while active, and runs them backwards."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._pause: contextlib.AbstractContextManager[None] | None = None

    def __enter__(self) -> Tape:
        _ACTIVE_TAPES.append(self)
        self._pause = gc_paused()
        self._pause.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE_TAPES.pop()
        if self._pause is not None:
            self._pause.__exit__(None, None, None)

    def backward(self, output: Tensor, doutput: Any = None) -> None:
        """Accumulate d<output, doutput>/d(leaf) into every leaf's ``grad``.

        ``doutput`` defaults to 1 for a scalar output.
        """
        if doutput is None:
            if output.value.size != 1:
                raise ValueError(f"backward: output of shape {output.shape} needs a cotangent")
            doutput = np.ones_like(output.value)
        doutput = np.asarray(doutput, dtype=output.dtype)
        if doutput.shape != output.shape:
            raise ValueError(f"backward: cotangent shape {doutput.shape} != output shape {output.shape}")
        output.grad = doutput
        with gc_paused():
            backprop(self.records)


_ACTIVE_TAPES: list[Tape] = []


def active_tape() -> Tape | None:
    """The innermost active tape, if any."""
    return _ACTIVE_TAPES[-1] if _ACTIVE_TAPES else None


def backprop(records: list[Record]) -> None:
    """The backward pass: every record, newest first, from its output's gradient to its
    arguments' gradients. An intermediate's gradient is dropped once used (unless it is to be
    retained), so memory stays at about one layer's worth."""
    for primitive, args, _, residuals, out in reversed(records):
        dout = out.grad
        if dout is None:
            continue  # this output does not reach the loss
        if not out.retain_grad:
            out.grad = None
        for arg, darg in zip(args, primitive.vjp(dout, residuals)):
            if darg is None or type(arg) is not Tensor or not arg.requires_grad:
                continue
            arg.grad = darg if arg.grad is None else arg.grad + darg
