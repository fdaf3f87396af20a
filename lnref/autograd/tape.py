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

A tape prints itself: ``print(tape)`` (or ``tape.format(names={"x": x})``) lists the records
oldest first, each with its op, the shapes of its inputs and output and the residuals it
kept; ``tape.to_dot()`` is the same graph in Graphviz's language and ``tape.draw(path)``
renders it with Graphviz's ``dot`` where that program is installed.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
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

    # -- the tape made visible --

    def format(self, names: Mapping[str, Tensor] | None = None) -> str:
        """The records as a table, oldest first (the backward pass walks them from the last).

        An input is shown as the record that produced it (``#3``), a name from ``names``, a
        leaf (``leaf0``: a Tensor that requires a gradient and no record produced), ``const``
        (a Tensor that does not) or a plain value; arrays as dtype and shape, ``f64[2,8]``.
        """
        labels = _Labels(self.records, names)
        rows = [("#", "op", "inputs", "output", "residuals kept")]
        for index, (primitive, args, params, residuals, out) in enumerate(self.records):
            settings = ", ".join(f"{key}={_describe(value)}" for key, value in params.items())
            op = f"{primitive.name}({settings})" if settings else primitive.name
            inputs = ", ".join(" ".join(filter(None, (labels.of(arg), _describe(arg)))) for arg in args)
            rows.append((str(index), op, inputs, _describe(out), _describe_residuals(residuals)))
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        lines = ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[4]]).rstrip() for row in rows]
        kept = _kept_buffers(self.records)
        size = _bytes(sum(array.nbytes for array in kept))
        return "\n".join([*lines, f"{len(self.records)} records; the residuals hold {len(kept)} arrays, {size}"])

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        return f"<Tape of {len(self.records)} records>"

    def to_dot(self, names: Mapping[str, Tensor] | None = None) -> str:
        """The records as a Graphviz digraph: a box per record (op and output shape), an
        ellipse per named or leaf input, an edge per input that requires a gradient."""
        labels = _Labels(self.records, names)
        lines = ["digraph tape {", "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];']
        drawn: set[str] = set()
        for index, (primitive, args, _, _, out) in enumerate(self.records):
            lines.append(f'  r{index} [shape=box, label="#{index} {primitive.name}\\n{_describe(out)}"];')
            for arg in args:
                label = labels.of(arg)
                if type(arg) is not Tensor or not arg.requires_grad or not label:
                    continue
                if not label.startswith("#"):
                    node = f'"{label}"'
                    if label not in drawn:
                        drawn.add(label)
                        lines.append(f'  {node} [shape=ellipse, label="{label}\\n{_describe(arg)}"];')
                else:
                    node = f"r{label[1:]}"
                lines.append(f"  {node} -> r{index};")
        lines.append("}")
        return "\n".join(lines)

    def draw(self, path: str | Path, names: Mapping[str, Tensor] | None = None) -> Path:
        """Render :meth:`to_dot` with Graphviz's ``dot`` to ``path``, in the format of its suffix
        (``.svg``, ``.png``, ``.pdf``). RuntimeError where ``dot`` is not installed."""
        path = Path(path)
        dot = shutil.which("dot")
        if dot is None:
            raise RuntimeError("Tape.draw needs Graphviz's dot program on the PATH (e.g. apt-get install graphviz)")
        fmt = path.suffix.lstrip(".") or "svg"
        command = [dot, f"-T{fmt}", "-o", str(path)]
        done = subprocess.run(command, input=self.to_dot(names), text=True, capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"dot failed on {path}: {done.stderr.strip()}")
        return path


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


# ----- how a tape prints ------------------------------------------------------------------


class _Labels:
    """What to call each Tensor a tape's records read: its producing record, its name, or a leaf."""

    def __init__(self, records: list[Record], names: Mapping[str, Tensor] | None) -> None:
        self.known = {id(tensor): name for name, tensor in (names or {}).items()}
        self.known.update({id(record[4]): f"#{index}" for index, record in enumerate(records)})
        leaves = 0
        for record in records:
            for arg in record[1]:
                if type(arg) is Tensor and arg.requires_grad and id(arg) not in self.known:
                    self.known[id(arg)] = f"leaf{leaves}"
                    leaves += 1

    def of(self, value: Any) -> str:
        """The label of a Tensor ("" for anything else); every Tensor that requires a gradient has one."""
        if type(value) is not Tensor:
            return ""
        return self.known.get(id(value), "const")


_DTYPE_SHORT = {"float64": "f64", "float32": "f32", "int64": "i64", "int32": "i32", "bool": "bool"}


def _describe(value: Any, depth: int = 0) -> str:
    """A short text for a record's argument, parameter, output or residual."""
    if isinstance(value, Tensor):
        value = value.value
    if isinstance(value, (np.ndarray, np.generic)):
        dtype = _DTYPE_SHORT.get(value.dtype.name, value.dtype.name)
        return f"{dtype}[{','.join(map(str, value.shape))}]"
    if isinstance(value, (tuple, list)):
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            return str(tuple(int(v) for v in value))  # a shape or a tuple of axes
        if depth >= 2 or len(value) > 6:
            return f"({len(value)} items)"
        return "(" + ", ".join(_describe(v, depth + 1) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _describe_residuals(residuals: Any) -> str:
    if residuals is None:
        return "-"
    if isinstance(residuals, tuple) and residuals and not all(isinstance(v, (int, np.integer)) for v in residuals):
        return " ".join(_describe(value, 1) for value in residuals)
    return _describe(residuals)


def _kept_buffers(records: list[Record]) -> list[np.ndarray]:
    """The distinct memory the records' residuals hold: each array traced to the array that owns
    its memory, so that an array kept twice, or a view of one, counts once."""
    kept: dict[int, np.ndarray] = {}
    stack: list[Any] = [record[3] for record in records]
    while stack:
        value = stack.pop()
        if isinstance(value, np.ndarray):
            while isinstance(value.base, np.ndarray):
                value = value.base
            kept.setdefault(id(value), value)
        elif isinstance(value, (tuple, list)):
            stack.extend(value)
    return list(kept.values())


def _bytes(count: int) -> str:
    if count < 1000:
        return f"{count} B"
    return f"{count / 1e3:.1f} kB" if count < 1_000_000 else f"{count / 1e6:.1f} MB"
