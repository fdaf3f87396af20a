"""Copies of a stack's rows, replayed as the stack: the index steps that hand them on go.

Hyper-connections keep n copies of the stream stacked, X (n, ..., d), within a layer, and the
layer hands them on one by one, h_j = index(X, j), j = 0..n-1; the next layer's width and
depth connections (``weighted_sum`` and ``mix_streams``) take the n copies as their terms.
Both primitives take the terms stacked as well (``stacked=True``), with the bits of the terms
taken apart. Where a replay (``replay.py``) finds, among the fused steps,

    copies:    h_0 = index(X, 0)   ...   h_{n-1} = index(X, n-1)
    readers:   weighted_sum(w, h_0, ..., h_{n-1}),   mix_streams(a, b, s, h_0, ..., h_{n-1})

:func:`read_as_stacks` gives each reader X itself, stacked, and drops the n index steps. It
does so where the cotangents come out as the tape forms them:

* X is made by a step and read by the n index steps alone, one for each row 0..n-1 in order,
  and each h_j is read by the same readers alone, each taking h_0, ..., h_{n-1} as its terms,
  in that order, and none of them elsewhere. On the tape each h_j's cotangent is then the sum
  of the readers' terms j, in the backward order, and each index VJP adds it into zeros of X's
  shape, which X's cotangent sums: row j is h_j's cotangent plus zeros. The stacked readers'
  VJPs hand X the same terms as rows, summed in the same order;
* the one difference is the sign of a zero: an index VJP adds its cotangent into +0.0, which
  turns a -0.0 into +0.0. A replay adds +0.0 to X's cotangent before X's own step takes it
  (the slots :func:`read_as_stacks` returns), which changes nothing else.

A reader of other terms (the readout's sum of the copies, the dynamic connections' concatenate)
keeps the index steps. The program does not know X's number of rows: a stacked reader of an X
of more rows than copies refuses it, and the replay then runs the recorded steps.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from lnref.autograd.fusion import Step

# Each reader the copies may have -> how many of its leading arguments come before its terms.
READERS = {"weighted_sum": 1, "mix_streams": 3}


def read_as_stacks(steps: Sequence[Step], output_slot: int) -> tuple[list[Step], frozenset[int]]:
    """``steps`` with the copies of each stack that fits (see the module) read as the stack,
    and the slots of those stacks, whose cotangents take +0.0 before their steps' VJPs."""
    uses = Counter(slot for _, args, _, _ in steps for slot in args)
    uses[output_slot] += 1
    makers = {out for _, _, _, out in steps}
    copies_of: dict[int, list[int]] = defaultdict(list)  # each stack's slot -> its index steps' indices
    for index, (name, args, params, _) in enumerate(steps):
        if name == "index" and len(args) == 1 and type(params.get("index")) is int and len(params) == 1:
            copies_of[args[0]].append(index)
    readers_of: dict[int, list[int]] = defaultdict(list)  # each slot -> the indices of the steps reading it
    for index, (_, args, _, _) in enumerate(steps):
        for slot in set(args):
            readers_of[slot].append(index)
    rewritten: dict[int, Step] = {}
    dropped: set[int] = set()
    stacks = []
    for stack, index_steps in copies_of.items():
        copies = tuple(steps[i][3] for i in index_steps)
        readers = readers_of[copies[0]]
        if stack not in makers or uses[stack] != len(copies) or not readers:
            continue
        if [steps[i][2]["index"] for i in index_steps] != list(range(len(copies))):
            continue
        if any(uses[copy] != len(readers) or readers_of[copy] != readers for copy in copies):
            continue
        if not all(_takes_as_terms(steps[i], copies) for i in readers):
            continue
        for i in readers:
            name, args, params, out = steps[i]
            rewritten[i] = (name, (*args[: READERS[name]], stack), {**params, "stacked": True}, out)
        dropped.update(index_steps)
        stacks.append(stack)
    kept = [rewritten.get(index, step) for index, step in enumerate(steps) if index not in dropped]
    return kept, frozenset(stacks)


def _takes_as_terms(step: Step, copies: tuple[int, ...]) -> bool:
    """Whether ``step`` is a reader of terms given apart whose terms are ``copies``, in order."""
    name, args, params, _ = step
    leading = READERS.get(name)
    return leading is not None and not params.get("stacked") and args[leading:] == copies
