"""The Tensor: an array with a slot for its gradient.

A Tensor is what the tape differentiates with respect to (a leaf that ``requires_grad``) or
what a primitive returns. Its arithmetic operators (``+``, ``*``, ``@``, indexing, ...) are the
primitives of ``ops.py``, which binds them to this class when it is imported: this module
imports nothing of the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from lnref.autograd.dtypes import FLOAT_DTYPES


class Tensor:
    """An array with a slot for its gradient.

    ``requires_grad`` marks the leaves we differentiate with respect to; a primitive's output
    requires a gradient when any of its inputs does. ``retain_grad`` keeps an intermediate's
    gradient after the backward pass has used it (the probes read hidden states' gradients).
    """

    __slots__ = ("value", "grad", "requires_grad", "retain_grad")
    __array_priority__ = 100  # so that ndarray <op> Tensor defers to Tensor's operators

    value: np.ndarray
    grad: np.ndarray | None

    def __init__(self, value: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        if type(value) is not np.ndarray or dtype is not None:
            value = np.asarray(value, dtype=dtype)
        if value.dtype.kind == "f" and value.dtype not in FLOAT_DTYPES:
            raise ValueError(f"Tensor: unsupported dtype {value.dtype} (use float64 or float32)")
        self.value = value
        self.grad = None
        self.requires_grad = requires_grad
        self.retain_grad = False

    @classmethod
    def wrap(cls, value: np.ndarray, requires_grad: bool = False) -> Tensor:
        """A Tensor around an array already known to be a valid float array (no checks, no copy)."""
        tensor = cls.__new__(cls)
        tensor.value, tensor.grad, tensor.requires_grad, tensor.retain_grad = value, None, requires_grad, False
        return tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype

    @property
    def ndim(self) -> int:
        return self.value.ndim

    def grad_or_zeros(self) -> np.ndarray:
        """The gradient, or zeros where no gradient reached this tensor."""
        return self.grad if self.grad is not None else np.zeros_like(self.value)

    if TYPE_CHECKING:  # bound to the primitives by ops.py

        def __add__(self, other: Any) -> Tensor: ...
        def __radd__(self, other: Any) -> Tensor: ...
        def __sub__(self, other: Any) -> Tensor: ...
        def __rsub__(self, other: Any) -> Tensor: ...
        def __mul__(self, other: Any) -> Tensor: ...
        def __rmul__(self, other: Any) -> Tensor: ...
        def __truediv__(self, other: Any) -> Tensor: ...
        def __rtruediv__(self, other: Any) -> Tensor: ...
        def __matmul__(self, other: Any) -> Tensor: ...
        def __rmatmul__(self, other: Any) -> Tensor: ...
        def __neg__(self) -> Tensor: ...
        def __getitem__(self, key: Any) -> Tensor: ...

    def __repr__(self) -> str:
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{flag})"


def value_of(x: Any) -> np.ndarray:
    """The array of a Tensor, or ``x`` as an array."""
    return x.value if isinstance(x, Tensor) else np.asarray(x)
