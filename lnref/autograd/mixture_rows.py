"""Weighted sums over every earlier output, replayed with their terms and cotangents in rows.

An average over every earlier layer's output (DLCL's and DenseFormer's, one a layer) is a
``weighted_sum`` whose terms are the first of the next one's: layer l takes n_0, ..., n_l. On
the tape each term is its own array, gathered anew by every weighted sum that takes it, and
each slot's cotangent is the sum of one VJP output per weighted sum that read it, one NumPy
addition each: about L^2 / 2 small calls a pass. A replay (``replay.py``) that finds this
shape (:func:`mixtures_in_rows`) runs it instead with

* the terms as the rows of one array (:class:`TermsInRows`): each value copied in once, when
  the pass has computed it, and each weighted sum taking the first rows as stacked terms,
  which its kernels sum with the bits of separate terms;
* the cotangents as the rows of another (:func:`vjp_into_rows`): the newest weighted sum's VJP,
  the first to run, hands each slot its row; each earlier one adds its own rows into the first
  rows with one in-place addition, so each slot receives the same additions in the same order
  as the tape's, one call a weighted sum.

Rows stand for the VJP of ``weighted_sum`` as lnref defines it (:func:`weighted_sum_as_defined`):
a VJP a test puts in its place runs as it is, through the replay's usual loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from lnref.autograd import mixing_ops
from lnref.autograd.primitive import DEFINED, PRIMITIVES
from lnref.autograd.steps import Step


def weighted_sum_as_defined() -> bool:
    """Whether the registry holds ``weighted_sum`` as lnref defines it, or timers around it
    (``lnref.autograd.timing``), not one a test has swapped in: rows stand for its VJP only."""
    now, defined = PRIMITIVES["weighted_sum"], DEFINED["weighted_sum"]
    return now is defined or (inspect.unwrap(now.forward) is defined.forward and inspect.unwrap(now.vjp) is defined.vjp)


def mixtures_in_rows(steps: Sequence[Step], output_slot: int) -> frozenset[int]:
    """The weighted sums whose VJPs can add into rows (:func:`vjp_into_rows`): the
    indices of the steps ``weighted_sum(w, *terms)`` when each one's terms are the first of
    the newest one's, no fewer than the one before takes, and a slot among them is read by
    no other step after the first weighted sum that takes it (so that its cotangents come
    from the weighted sums alone, one after the other, until it is needed); else none."""
    mixtures = [
        i for i, (name, _, params, _) in enumerate(steps) if name == "weighted_sum" and not params.get("stacked")
    ]
    if len(mixtures) < 2:
        return frozenset()
    terms = steps[mixtures[-1]][1][1:]
    first_reader = {}  # each term's slot: the first weighted sum that takes it
    taken = 0
    for i in mixtures:
        weights, *these = steps[i][1]
        if these != list(terms[: len(these)]) or len(these) < taken or weights in terms:
            return frozenset()
        for slot in terms[taken : len(these)]:
            first_reader[slot] = i
        taken = len(these)
    if len(set(terms)) != len(terms) or output_slot in first_reader:
        return frozenset()
    mixture_set = set(mixtures)
    for i, (_, arg_slots, _, _) in enumerate(steps):
        if i not in mixture_set and any(first_reader.get(slot, i + 1) < i for slot in arg_slots):
            return frozenset()
    return frozenset(mixtures)


class TermsInRows:
    """The values of the terms of the weighted sums in rows (:func:`mixtures_in_rows`), the newest
    one's slots ``slots``, as the rows of one array, each copied in once the pass has computed
    it: each weighted sum takes its terms as the first rows, with the bits of taking them apart
    (and none of the work of gathering them)."""

    def __init__(self, slots: tuple[int, ...]) -> None:
        self.slots = slots
        self.rows: np.ndarray | None = None
        self.filled = 0  # rows copied in; -1 once a value does not fit them

    def forward(self, primitive: Any, values: list[Any], arg_slots: tuple[int, ...]) -> tuple[Any, Any]:
        """``primitive.forward`` of the weighted sum of the values at ``arg_slots``: the weights,
        then the first of :attr:`slots`."""
        count = len(arg_slots) - 1
        if self._fill(values, count):
            return primitive.forward(values[arg_slots[0]], self.rows[:count], stacked=True)  # type: ignore[index]
        return primitive.forward(*[values[s] for s in arg_slots])

    def _fill(self, values: list[Any], count: int) -> bool:
        """Whether the first ``count`` rows hold the values of the first ``count`` slots: copies
        in those not yet copied, if every value so far is an array of the first one's shape and
        dtype."""
        if self.filled < 0:
            return False
        if self.rows is None:
            first = values[self.slots[0]]
            if type(first) is not np.ndarray:
                self.filled = -1
                return False
            self.rows = np.empty((len(self.slots), *first.shape), first.dtype)
        for row in range(self.filled, count):
            value = values[self.slots[row]]
            if type(value) is not np.ndarray or value.shape != self.rows.shape[1:] or value.dtype != self.rows.dtype:
                self.filled = -1
                return False
            self.rows[row] = value
        self.filled = max(self.filled, count)
        return True


def vjp_into_rows(
    rows: np.ndarray | None,
    dout: np.ndarray,
    residuals: Any,
    arg_slots: tuple[int, ...],
    grads: list[Any],
    needs: list[bool],
) -> np.ndarray:
    """The VJP of a weighted sum of :func:`mixtures_in_rows`, accumulated as the tape would:
    the first to run hands its terms' cotangents, the rows of one array ``rows``, to their
    slots (each slot a row); each later one adds its own rows into the first of ``rows`` in
    place, which adds each term's cotangent into its slot, in the order the tape adds them.
    Returns ``rows``."""
    dweights, dxs = mixing_ops.weighted_sum_vjp_rows(dout, residuals)
    weights, terms = arg_slots[0], arg_slots[1:]
    if needs[weights]:
        grads[weights] = dweights if grads[weights] is None else grads[weights] + dweights
    if rows is None:
        rows = dxs if dxs.flags.writeable else dxs.copy()
        for slot, row in zip(terms, rows):
            if needs[slot]:
                grads[slot] = row
        return rows
    if dxs.dtype != rows.dtype or dxs.shape[1:] != rows.shape[1:] or len(dxs) > len(rows):
        raise ValueError(f"weighted_sum: cotangents {dxs.dtype} {dxs.shape} do not fit those of {rows.shape}")
    head = rows[: len(dxs)]
    head += dxs
    return rows
