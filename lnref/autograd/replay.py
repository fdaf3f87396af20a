"""A recorded pass, replayed: the same primitive calls on new inputs, without the code that made them.

A model's pass runs Python at every step: the scheme's layer function, the layer view, the
sublayer helpers. When the sequence of primitive calls depends only on the configuration and
the inputs' shapes, as it does for every scheme of lnref, that Python computes the same list
of calls on every pass. A :class:`Program` is that list, read off a tape: each call's
primitive, which earlier values it takes (numbered slots) and its static parameters.
:meth:`Program.run` calls the same primitives, in the same order, on the active tape, so the
tape's own backward pass follows. :meth:`Program.value_and_grad`, what a :class:`Replayer`
runs, does what the tape would do with those records without making them: plain arrays in
the slots, each call's residuals in a list, then the tape's backward loop over the steps
(newest first, each cotangent handed to the same VJP, accumulated into the same slots in the
same order), with no Tensor, record or tape made per call. Where weighted sums each take a
first part of one list of slots (an average over every earlier layer's output, one a layer;
:mod:`mixture_rows`), those slots' values are copied, each once, into the rows of one array
whose first rows each weighted sum takes, and the cotangents they gather are the rows of
another, into which each later weighted sum's VJP adds its own with one addition: the bits of
the terms taken apart and of one addition a slot, with no per-term work. Both give the same
bits as a pass that ran the Python; each looks every primitive up by name when it runs (a
test's broken VJP is the one it calls).

A replayed pass also fuses: each residual branch with its LayerNorm, a + S(LN(a)), LN(a + S(a))
or LN(w * a + S(a)), S the attention sublayer or the FFN, runs as one step with one compiled
kernel each way, and so do a few shapes of norms, sums and element-wise steps (``fusion.py``
lists them), each with the bits of the steps it stands for; where the copies of a stack,
handed on one by one, are read by mixtures of them all alone (hyper-connections' and mHC's
between layers, with the concatenate their dynamic weights are computed from), the readers
take the stack, the steps that took it apart go, and each sublayer between the mixtures is one
step (``stacked_copies.py``), with mHC's mappings that give its weights, where they are computed
from the stack (``mapped_copies.py``);
and where sublayers read two streams and add to both (SiameseNorm's), the streams go from one
sublayer's step to the next stacked (``two_streams.py``).

The contract is that of a JAX ``jit``: the recorded code computes on Tensors only through
primitives, and whatever else it passes them is a constant of the configuration (a number, a
string, None). A Tensor or array argument that is neither an input nor the output of a
recorded call (a value computed on the side from ``.value``), or an array among a call's
static parameters, makes the pass unreplayable: :meth:`Program.from_records` returns None and
the caller keeps running the Python. (A number computed from ``.value`` cannot be told from a
constant and would be replayed frozen; to the tape it is a constant too, so such code already
has a wrong gradient, which ``lnref gradcheck`` reports.)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from lnref.autograd import (
    fused_branches,  # noqa: F401 (defines the fused steps that fusion.py names; a replay looks each up by name)
    fused_copies,  # noqa: F401 (defines those that stacked_copies.py names)
    fused_mapped,  # noqa: F401 (defines those that mapped_copies.py names)
    fused_streams,  # noqa: F401 (defines those that two_streams.py names)
    fusion,
    mapped_copies,
    mixture_rows,
    stacked_copies,
    two_streams,
)
from lnref.autograd.dtypes import FLOAT32, FLOAT64
from lnref.autograd.primitive import PRIMITIVES, call
from lnref.autograd.steps import Step
from lnref.autograd.tape import Record, Tape, gc_paused
from lnref.autograd.tensor import Tensor


class Program:
    """The calls of a recorded pass as steps over numbered slots: the inputs first, then one
    slot per call's output, then the constants.

    :meth:`value_and_grad` runs ``fused_steps``, the steps with each residual branch that has
    a fused primitive as one step (``fusion.py``: the same bits, fewer calls), unless the
    registry no longer holds a primitive they stand for as lnref defines it (a test's broken
    VJP), or a fused step raises: then it runs the recorded steps, which call it."""

    def __init__(self, steps: list[Step], inputs: list[Any], constants: list[Any], output_slot: int) -> None:
        self.steps = steps
        self.inputs = inputs  # the recorded pass's input Tensors, given new values by each run
        self.constants = constants
        self.output_slot = output_slot
        first_constant = len(inputs) + len(steps)
        # What the fusion may take as fixed: the constants, and the inputs that were None (a
        # one-stack model's memory), which a run must leave None to run the fused steps.
        self._none_inputs = [slot for slot, value in enumerate(inputs) if value is None]
        fixed = {**dict.fromkeys(self._none_inputs), **dict(enumerate(constants, first_constant))}
        fused_steps = two_streams.fuse_two_streams(fusion.fuse(steps, fixed, output_slot), fixed, output_slot)
        fused_steps, self._stacks = stacked_copies.read_as_stacks(fused_steps, output_slot)
        fused_steps = stacked_copies.fuse_mixed_sublayers(fused_steps, output_slot)
        self.fused_steps = mapped_copies.fuse_mapped_sublayers(fused_steps, fixed, output_slot)
        self._mixtures_in_rows = mixture_rows.mixtures_in_rows(self.fused_steps, output_slot)
        self._needs_of: dict[tuple[bool, tuple[bool, ...]], list[bool]] = {}

    @classmethod
    def from_records(cls, records: Sequence[Record], inputs: Sequence[Any], output: Tensor) -> Program | None:
        """The program mapping ``inputs`` (Tensors, or None) to ``output`` through ``records``;
        None if they are not replayable."""
        slot_of = {id(value): slot for slot, value in enumerate(inputs)}
        constants: list[Any] = []
        steps: list[list[Any]] = []
        for index, (primitive, args, params, _, result) in enumerate(records):
            name: str = primitive.name
            if PRIMITIVES.get(name) is not primitive:
                return None  # no longer the registered primitive: a replay would not find it
            if any(isinstance(value, (Tensor, np.ndarray)) for value in params.values()):
                return None
            arg_slots = []
            for arg in args:
                slot = slot_of.get(id(arg))
                if slot is None:
                    if isinstance(arg, (Tensor, np.ndarray)):
                        return None  # made outside the recorded calls
                    slot = -1 - len(constants)  # numbered once the number of calls is known
                    constants.append(arg)
                arg_slots.append(slot)
            slot_of[id(result)] = len(inputs) + index
            steps.append([name, arg_slots, params])
        output_slot = slot_of.get(id(output))
        if output_slot is None:
            return None
        first_constant = len(inputs) + len(records)
        return cls(
            [
                (name, tuple(first_constant - 1 - s if s < 0 else s for s in slots), params, len(inputs) + index)
                for index, (name, slots, params) in enumerate(steps)
            ],
            list(inputs),
            constants,
            output_slot,
        )

    def value_and_grad(
        self, arrays: Sequence[Any], differentiate: Sequence[bool]
    ) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """(the output's value, d output / d input for each input flagged in ``differentiate``,
        None for the others) at ``arrays``, the inputs' new values; the output is a scalar.
        What a tape gives for :meth:`run`'s records, computed without them (see the module)."""
        if fusion.defined_primitives_in_place() and all(arrays[slot] is None for slot in self._none_inputs):
            try:
                return self._value_and_grad(True, arrays, differentiate)
            except (TypeError, ValueError):
                pass  # the recorded steps raise it again, named after the primitive a taped pass names
        return self._value_and_grad(False, arrays, differentiate)

    def _value_and_grad(
        self, fused: bool, arrays: Sequence[Any], differentiate: Sequence[bool]
    ) -> tuple[np.ndarray, list[np.ndarray | None]]:
        n_inputs = len(self.inputs)
        steps = self.fused_steps if fused else self.steps
        values: list[Any] = [
            a if type(a) is np.ndarray and (a.dtype is FLOAT64 or a.dtype is FLOAT32) else _float_array(a)
            for a in arrays
        ]
        needs = self._needs(fused, tuple([d and a is not None for a, d in zip(values, differentiate)]))
        values += [None] * len(self.steps) + self.constants
        primitives, kept = [], []
        in_rows = self._mixtures_in_rows if fused and mixture_rows.weighted_sum_as_defined() else ()
        stacks = self._stacks if fused else ()
        rows = None  # the cotangents of the slots the mixtures in rows take, once one has run
        terms = mixture_rows.TermsInRows(steps[max(in_rows)][1][1:]) if in_rows else None
        with gc_paused():
            for index, (name, arg_slots, params, slot) in enumerate(steps):
                primitive = PRIMITIVES[name]
                if index in in_rows:
                    values[slot], residuals = terms.forward(primitive, values, arg_slots)  # type: ignore[union-attr]
                else:
                    values[slot], residuals = primitive.forward(*[values[s] for s in arg_slots], **params)
                primitives.append(primitive)
                kept.append(residuals)
            output = values[self.output_slot]
            if np.size(output) != 1:
                raise ValueError(f"backward: output of shape {np.shape(output)} needs a cotangent")
            grads: list[Any] = [None] * (n_inputs + len(self.steps))
            if needs[self.output_slot]:
                grads[self.output_slot] = np.ones_like(output)
            for index in range(len(steps) - 1, -1, -1):
                slot = steps[index][3]
                dout, grads[slot] = grads[slot], None
                residuals, kept[index] = kept[index], None  # freed once used
                if dout is None:
                    continue  # this output does not reach the loss
                if slot in stacks:
                    dout = dout + 0.0  # as the index VJPs' sums into zeros give it: no -0.0
                if index in in_rows:
                    rows = mixture_rows.vjp_into_rows(rows, dout, residuals, steps[index][1], grads, needs)
                    continue
                for arg, darg in zip(steps[index][1], primitives[index].vjp(dout, residuals)):
                    if darg is None or not needs[arg]:
                        continue
                    grads[arg] = darg if grads[arg] is None else grads[arg] + darg
        return output, [
            (np.zeros_like(values[i]) if grads[i] is None else grads[i]) if needs[i] else None for i in range(n_inputs)
        ]

    def _needs(self, fused: bool, inputs_need: tuple[bool, ...]) -> list[bool]:
        """Whether each slot needs a gradient, given which inputs do: an input flagged, a
        call's output when one of its arguments does, never a constant (as the tape decides)."""
        needs = self._needs_of.get((fused, inputs_need))
        if needs is None:
            needs = [*inputs_need, *([False] * (len(self.steps) + len(self.constants)))]
            for _, arg_slots, _, slot in self.fused_steps if fused else self.steps:
                needs[slot] = any(needs[s] for s in arg_slots)
            self._needs_of[(fused, inputs_need)] = needs
        return needs

    def run(self) -> Tensor:
        """The recorded calls on the inputs' current values, recorded on the active tape."""
        values: list[Any] = [*self.inputs, *([None] * len(self.steps)), *self.constants]
        for name, arg_slots, params, slot in self.steps:
            values[slot] = call(name, tuple([values[s] for s in arg_slots]), params)
        output: Tensor = values[self.output_slot]
        return output


class Replayer:
    """``value_and_grad`` of a function whose calls repeat: the first pass per key runs ``fn``
    on the tape, later passes of that key replay its calls (the caller's promise: same key,
    same calls). Keeps the programs of the ``limit`` most recent keys."""

    def __init__(self, limit: int = 8) -> None:
        self.limit = limit
        self.programs: dict[Hashable, Program | None] = {}

    def value_and_grad(
        self, key: Hashable, fn: Callable[..., Tensor], arrays: Sequence[Any], differentiate: Sequence[bool]
    ) -> tuple[Tensor, list[np.ndarray | None]]:
        """(fn(*arrays), the gradient of that scalar for each array flagged in ``differentiate``,
        None for the others). None entries of ``arrays`` are passed as None."""
        program = self.programs.get(key)
        if program is not None:
            value, gradients = program.value_and_grad(arrays, differentiate)
            return Tensor.wrap(value), gradients
        inputs = [None if a is None else Tensor(a, requires_grad=d) for a, d in zip(arrays, differentiate)]
        with Tape() as tape:
            output = fn(*inputs)
        if key not in self.programs:
            if len(self.programs) >= self.limit:
                del self.programs[next(iter(self.programs))]  # the oldest
            self.programs[key] = Program.from_records(tape.records, inputs, output)
        tape.backward(output)
        return output, [None if t is None or not t.requires_grad else t.grad_or_zeros() for t in inputs]


def _float_array(value: Any) -> np.ndarray | None:
    """``value`` as a Tensor would hold it, None as it is (a float array, the common case, is
    let through before this is called, once per input of every pass)."""
    return None if value is None else Tensor(value).value
