"""Two streams stacked, replayed as one step a sublayer: SiameseNorm's sublayers.

SiameseNorm's sublayer reads both streams and adds its output to both; among the fused steps
(``fusion.py``) it is four,

    entry:     xn = layer_norm_of_sum(xn_prev, z_prev, gamma_x, beta_x, c_prev)   (x's norm)
               u = add_layer_norm(xn, y, gamma_y, beta_y)                        (y's norm)
    sublayer:  z = residual_normed_S(u, gamma, beta, W..., residual=False)
               y' = add(y, z)

and the next sublayer's entry reads xn, z (x' = xn + z / c) and y'. A step has one output, so
:func:`fuse_two_streams` hands the two streams on stacked, [x', y'] (2, B, T, d), made by one
step, ``two_stream_normed_S([x, y], gamma_x, beta_x, gamma_y, beta_y, gamma, beta, W...,
divisor=c)`` (``fused_streams.py``), which computes the four steps' values but the sum x, which
the step before computed, and the next entry's sum x' = xn + z / c. The first sublayer's entry
is xn = layer_norm(x, gamma_x, beta_x) with y = x, and its step takes x itself. The readout's
entry, u = LN_x(x) + LN_y(y) read by anything, becomes ``two_stream_merge([x, y], gamma_x,
beta_x, gamma_y, beta_y)``.

It does so for a whole run of sublayers, from the first one's entry to the merge, where each
fused step's cotangents come out as the tape forms them:

* xn is read by u's add and the next entry alone, z by y''s add and the next entry alone, u by
  the sublayer alone, y by its sublayer's two steps alone (x, in the first, by those and the
  first norm), and y' by the next sublayer's; each cotangent of a stream is then a sum of two
  terms (the same in either order), which the fused VJPs form from the stack's rows, and the
  first x's is the sum of three, which its step adds in the tape's order. The rows reach the
  stack from one VJP each, the next step's, so no +0.0 enters (no ``index`` step runs);
* the norms share one eps, the streams' norms' parameters are four slots that no other
  argument of the step repeats, and no step between the first and the last of those a fused
  step stands for reads one of its parameters: their cotangents come at its place, with
  nothing between.

A run that breaks anywhere (a probe of an intermediate, a norm of another kind, a sublayer
without a fused form) keeps its steps as they were.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from lnref.autograd.checks import is_number
from lnref.autograd.steps import Step

# Each normed sublayer's fused step -> the fused step of it between the two streams.
TWO_STREAM_SUBLAYERS = {
    "residual_normed_attention": "two_stream_normed_attention",
    "residual_normed_feed_forward": "two_stream_normed_feed_forward",
}


def fuse_two_streams(steps: Sequence[Step], fixed: dict[int, Any], output_slot: int) -> list[Step]:
    """``steps`` with each run of two streams' sublayers (see the module) as one step a
    sublayer and one for the merge, each at the place of the last step it stands for."""
    uses = Counter(slot for _, args, _, _ in steps for slot in args)
    uses[output_slot] += 1
    readers: dict[int, list[int]] = defaultdict(list)
    for index, (_, args, _, _) in enumerate(steps):
        for slot in dict.fromkeys(args):
            readers[slot].append(index)
    fused: dict[int, Step] = {}
    taken: set[int] = set()
    for index, (name, args, _, _) in enumerate(steps):
        if name == "layer_norm" and len(args) == 3 and uses[args[0]] == 3 and index not in taken:
            for stood_for, step in _run(steps, fixed, uses, readers, index) or ():
                fused[max(stood_for)] = step
                taken.update(stood_for)
    return [fused.get(index, step) for index, step in enumerate(steps) if index in fused or index not in taken]


def _run(
    steps: Sequence[Step], fixed: dict[int, Any], uses: Counter[int], readers: dict[int, list[int]], first: int
) -> list[tuple[tuple[int, ...], Step]] | None:
    """(the indices each fused step stands for, the step) for the run of sublayers whose first
    entry is the norm at ``first``, ending with the merge; None if any link fails."""
    state = y = steps[first][1][0]  # the slot the next fused step reads, and the stream y's
    entry = first
    run: list[tuple[tuple[int, ...], Step]] = []
    while True:
        _, entry_args, entry_params, xn = steps[entry]
        gamma_x, beta_x = entry_args[2:4] if run else entry_args[1:]
        added = _reader(steps, readers[xn], "add_layer_norm", 4, xn, y)
        if added is None or entry_params != steps[added][2] or not set(entry_params) <= {"eps"}:
            return None
        _, (_, _, gamma_y, beta_y), _, u = steps[added]
        norms = (gamma_x, beta_x, gamma_y, beta_y)
        link = _sublayer(steps, fixed, uses, readers, added, y, not run)
        if link is None:
            merged = bool(run) and uses[xn] == uses[y] == 1 and _fits(steps, (entry, added), norms, ())
            return [*run, ((entry, added), ("two_stream_merge", (state, *norms), entry_params, u))] if merged else None
        sublayer, add, next_entry = link
        name, (_, *branch), params, _ = steps[sublayer]
        stood_for = (entry, added, sublayer, add)
        if params.get("eps") != entry_params.get("eps") or not _fits(steps, stood_for, norms, branch):
            return None
        statics = {key: value for key, value in params.items() if key != "residual"}
        statics["divisor"] = fixed[steps[next_entry][1][4]]
        out = steps[add][3]
        step = (TWO_STREAM_SUBLAYERS[name], (state, *norms, *branch), statics, out)
        run.append((stood_for, step))
        state = y = out
        entry = next_entry


def _reader(steps: Sequence[Step], indices: list[int], name: str, n_args: int, *leading: int) -> int | None:
    """The index of the step among ``indices`` that is ``name`` of ``n_args`` arguments, the first
    of them ``leading``, or None."""
    for index in indices:
        step_name, args, _, _ = steps[index]
        if step_name == name and len(args) == n_args and args[: len(leading)] == leading:
            return index
    return None


def _sublayer(
    steps: Sequence[Step], fixed: dict[int, Any], uses: Counter[int], readers: dict[int, list[int]], added: int,
    y: int, first: bool,
) -> tuple[int, int, int] | None:  # fmt: skip
    """(sublayer, add, next entry) indices if u, the output of ``added``, is read by a normed
    sublayer alone, whose output z' is read by add(y, z') and the next entry alone, xn by
    ``added`` and that entry alone, and y by ``added`` and the add alone (and the first norm,
    in the ``first`` sublayer)."""
    _, (xn, _, _, _), _, u = steps[added]
    sublayer = readers[u][0] if uses[u] == 1 else None
    if sublayer is None or steps[sublayer][0] not in TWO_STREAM_SUBLAYERS:
        return None
    _, args, params, z = steps[sublayer]
    if args[0] != u or params.get("residual") is not False or params.get("normed_skip"):
        return None
    if uses[z] != 2 or uses[xn] != 2 or uses[y] != (3 if first else 2):
        return None
    add = next((i for i in readers[z] if steps[i][0] == "add" and sorted(steps[i][1]) == sorted((y, z))), None)
    next_entry = _reader(steps, readers[z], "layer_norm_of_sum", 5, xn, z)
    if add is None or next_entry is None or y == z:
        return None
    divisor = steps[next_entry][1][4]
    return (sublayer, add, next_entry) if divisor in fixed and is_number(fixed[divisor]) else None


def _fits(steps: Sequence[Step], stood_for: tuple[int, ...], norms: tuple[int, ...], branch: Sequence[int]) -> bool:
    """Whether the streams' norms' parameters are four slots that ``branch`` does not repeat, and
    no step between the first and the last of ``stood_for``, not one of them, reads a parameter."""
    parameters = {*norms, *branch}
    if len(set(norms)) != 4 or len(parameters) != 4 + len(set(branch)):
        return False
    return not any(
        parameters.intersection(steps[between][1])
        for between in range(min(stood_for) + 1, max(stood_for))
        if between not in stood_for
    )
