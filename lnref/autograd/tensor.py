"""The tape: a Tensor that wraps an array, and a list of records replayed in reverse.

A primitive (see ``ops.py``) computes its forward on plain arrays and, when a tape is
recording and one of its inputs needs a gradient, appends one record to the tape:

    (vjp, residuals, inputs, output)   with   vjp(doutput, residuals) -> one cotangent per input

``residuals`` is whatever the forward kept for its backward. ``Tape.backward`` walks the
records newest first, hands each output's accumulated cotangent to its ``vjp`` and adds
the results into the inputs' ``grad`` (a cotangent of None means "no gradient"). Gradients are
accumulated, never assigned: a residual stream feeds the same tensor to two places.
The tape knows nothing about any particular op.
"""

from __future__ import annotations

import contextlib
import gc

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
_FLOAT64, _FLOAT32 = FLOAT_DTYPES


class Tensor:
    """An array with a slot for its gradient.

    ``requires_grad`` marks the leaves we differentiate with respect to; a primitive's
    output requires a gradient when any of its inputs does.
    """

    __slots__ = ("value", "grad", "requires_grad", "retain_grad")
    __array_priority__ = 100  # so that ndarray <op> Tensor defers to Tensor's operators

    def __init__(self, value, requires_grad: bool = False, dtype=None):
        if type(value) is not np.ndarray or dtype is not None:
            value = np.asarray(value, dtype=dtype)
        kind = value.dtype
        if kind is not _FLOAT64 and kind is not _FLOAT32 and kind.kind == "f" and kind not in FLOAT_DTYPES:
            raise ValueError(f"Tensor: unsupported dtype {value.dtype} (use float64 or float32)")
        self.value = value
        self.grad = None
        self.requires_grad = requires_grad
        self.retain_grad = False  # keep an intermediate's gradient (probes read hidden states')

    @classmethod
    def wrap(cls, value, requires_grad=False):
        """A Tensor around an array that is already a valid float array (no checks, no copy)."""
        tensor = cls.__new__(cls)
        tensor.value, tensor.grad, tensor.requires_grad, tensor.retain_grad = value, None, requires_grad, False
        return tensor

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    @property
    def ndim(self):
        return self.value.ndim

    def __repr__(self):
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{flag})"

    # Operators delegate to the primitives; imported late because ops imports this module.
    def __add__(self, other):
        return _ops.add(self, other)

    def __radd__(self, other):
        return _ops.add(other, self)

    def __sub__(self, other):
        return _ops.sub(self, other)

    def __rsub__(self, other):
        return _ops.sub(other, self)

    def __mul__(self, other):
        return _ops.mul(self, other)

    def __rmul__(self, other):
        return _ops.mul(other, self)

    def __truediv__(self, other):
        return _ops.div(self, other)

    def __rtruediv__(self, other):
        return _ops.div(other, self)

    def __neg__(self):
        return _ops.neg(self)

    def __matmul__(self, other):
        return _ops.matmul(self, other)

    def __rmatmul__(self, other):
        return _ops.matmul(other, self)

    def __getitem__(self, index):
        return _ops.index(self, index=index)


@contextlib.contextmanager
def cyclic_gc_paused():
    """Pause CPython's cyclic garbage collector for the block (nests; restored after).

    A recorded pass creates thousands of small containers (records, Tensors, tuples of
    residuals), none in a reference cycle: reference counting frees them all. But their
    allocation alone would start several collections per pass, each walking the live ones,
    and every few passes a full one that walks every live object of the process (Numba
    keeps about 10^5). The collector counts allocations minus deallocations, so a pass that
    frees its tape before the pause ends leaves it nothing to do. Cycles made meanwhile are
    collected by the next collection after the pause.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Tape:
    """Records primitives while active (``with Tape() as tape:``) and replays them backwards.

    Recording and replaying run with the cyclic garbage collector paused (see
    :func:`cyclic_gc_paused`); a caller that frees the tape inside its own pause, as
    ``Model.gradients`` does, saves the collection that would follow.
    """

    def __init__(self):
        self.records = []
        self._gc_pause = None

    def __enter__(self):
        _ACTIVE_TAPES.append(self)
        self._gc_pause = cyclic_gc_paused()
        self._gc_pause.__enter__()
        return self

    def __exit__(self, *exc):
        _ACTIVE_TAPES.pop()
        self._gc_pause.__exit__(None, None, None)
        return False

    def record(self, vjp, residuals, inputs, output):
        self.records.append((vjp, residuals, inputs, output))

    def backward(self, output: Tensor, doutput=None):
        """Accumulate d(<output, doutput>)/d(leaf) into every leaf's ``grad``.

        ``doutput`` defaults to 1 for a scalar output. Intermediate gradients are freed as
        soon as their record has been processed, so memory stays at one layer's worth.
        (``replay.Program.run`` walks its steps in the same order and accumulates in the same
        order, which is what makes a replayed pass give this pass's bits: keep the two alike.)
        """
        if doutput is None:
            if output.value.size != 1:
                raise ValueError(f"backward: output of shape {output.shape} needs a cotangent")
            doutput = np.ones_like(output.value)
        doutput = np.asarray(doutput, dtype=output.dtype)
        if doutput.shape != output.shape:
            raise ValueError(
                f"backward: cotangent shape {doutput.shape} != output shape {output.shape}"
            )
        output.grad = doutput
        with cyclic_gc_paused():
            for vjp, residuals, inputs, out in reversed(self.records):
                dout = out.grad
                if dout is None:
                    continue  # this output does not reach the loss
                if not out.retain_grad:
                    out.grad = None
                for tensor, dinput in zip(inputs, vjp(dout, residuals)):
                    if tensor is None or dinput is None or not tensor.requires_grad:
                        continue
                    tensor.grad = dinput if tensor.grad is None else tensor.grad + dinput


_ACTIVE_TAPES: list[Tape] = []


def value_and_grad(fn):
    """Turn ``fn(*tensors) -> scalar Tensor`` into ``f(*arrays) -> (value, grads)``.

    ``grads`` is a tuple with one array per argument, the gradient of the scalar output.
    """

    def wrapped(*arrays):
        leaves = [Tensor(a, requires_grad=True) for a in arrays]
        with Tape() as tape:
            out = fn(*leaves)
        tape.backward(out)
        grads = tuple(
            leaf.grad if leaf.grad is not None else np.zeros_like(leaf.value) for leaf in leaves
        )
        return out.value.item(), grads

    return wrapped


from lnref.autograd import ops as _ops  # noqa: E402  (ops imports Tensor from here)
