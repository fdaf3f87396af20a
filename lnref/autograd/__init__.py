"""A minimal tape-based reverse-mode autodiff over NumPy arrays.

Read in this order: ``tensor.py`` (the Tensor), ``tape.py`` (the records and the one backward
loop), ``primitive.py`` (the registry and the call that records), ``ops.py`` (every primitive,
forward beside its VJP), ``kernels/`` (the hand-written kernels: NumPy twin beside Numba loop).
Beside them: ``fused.py`` (whole sublayers as one primitive, the fast path), ``replay.py``
(a recorded pass replayed on new inputs), ``fusion.py`` and ``fused_branches.py`` (a replayed
residual branch and its norm as one step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lnref.autograd import ops
from lnref.autograd.primitive import PRIMITIVES, defprimitive
from lnref.autograd.tape import Tape
from lnref.autograd.tensor import Tensor

__all__ = ["PRIMITIVES", "Tape", "Tensor", "defprimitive", "ops", "value_and_grad"]


def value_and_grad(fn: Callable[..., Tensor]) -> Callable[..., tuple[float, tuple[np.ndarray, ...]]]:
    """Turn ``fn(*tensors) -> scalar Tensor`` into ``f(*arrays) -> (value, grads)``.

    ``grads`` is a tuple with one array per argument, the gradient of the scalar output.
    """

    def wrapped(*arrays: Sequence[Any]) -> tuple[float, tuple[np.ndarray, ...]]:
        leaves = [Tensor(a, requires_grad=True) for a in arrays]
        with Tape() as tape:
            out = fn(*leaves)
        tape.backward(out)
        return out.value.item(), tuple(leaf.grad_or_zeros() for leaf in leaves)

    return wrapped
