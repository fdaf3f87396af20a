"""Copies of a stack's rows, replayed as the stack: the index steps that hand them on go.

Hyper-connections and mHC keep n copies of the stream stacked, X (n, ..., d), within a layer,
and the layer hands them on one by one, h_j = index(X, j), j = 0..n-1; the next layer's width
and depth connections (``weighted_sum`` and ``mix_streams``) take the n copies as their terms,
and so does the concatenate that gives the dynamic connections' (and mHC's mappings') vec(x).
The three primitives take the terms stacked as well (``stacked=True``), with the bits of the
terms taken apart. Where a replay (``replay.py``) finds, among the fused steps,

    copies:    h_0 = index(X, 0)   ...   h_{n-1} = index(X, n-1)
    readers:   weighted_sum(w, h_0, ..., h_{n-1}),   mix_streams(a, b, s, h_0, ..., h_{n-1}),
               concatenate(h_0, ..., h_{n-1})

:func:`read_as_stacks` gives each reader X itself, stacked, and drops the n index steps. It
does so where the cotangents come out as the tape forms them:

* X is made by a step and read by the n index steps alone, one for each row 0..n-1 in order,
  and each h_j is read by the same readers alone, each taking h_0, ..., h_{n-1} as its terms,
  in that order, and none of them elsewhere. On the tape each h_j's cotangent is then the sum
  of the readers' terms j, in the backward order, and each index VJP adds it into zeros of X's
  shape, which X's cotangent sums: row j is h_j's cotangent plus zeros. The stacked readers'
  VJPs hand X the same terms as rows, summed in the same order (a stacked concatenate's rows
  are the views of its cotangent that it hands the copies apart);
* the one difference is the sign of a zero: an index VJP adds its cotangent into +0.0, which
  turns a -0.0 into +0.0. A replay adds +0.0 to X's cotangent before X's own step takes it
  (the slots :func:`read_as_stacks` returns), which changes nothing else.

A reader of other terms (the readout's sum of the copies) keeps the index steps. The program
does not know X's number of rows: a stacked mixture of an X of more rows than copies refuses it
(its weights count the copies), and the replay then runs the recorded steps; a concatenate
counts nothing, so the readers must include a mixture.

Then :func:`fuse_mixed_sublayers` puts one step in the place of each sublayer between the
stack's connections,

    sublayer:  h = weighted_sum(a_m, X, stacked)   s = residual_normed_S(h, gamma, beta, W...,
               residual=False)   Y = mix_streams(a_r, b, s, X, stacked[, transpose])

which becomes Y = mixed_normed_S(X, a_m, a_r, b, gamma, beta, W...[, transpose])
(``fused_copies.py``). The weights are inputs of the pass, shared by every token (static
hyper-connections: a_m (n,), a_r (n, n), b (n,)), or computed in it, one set per token (dynamic
hyper-connections, mHC's H_pre, H_res (transposed: its rows are the weights) and H_post:
(B, T, n), (B, T, n, n), (B, T, n)); their cotangents then come at the fused step's place,
which is where the tape has them complete. It does so where the fused step gives the bits of
the three:

* h and s are read by the next step alone; a_m, a_r, b and X are four slots, none of them among
  the sublayer's arguments;
* X is read by the two connections and otherwise by steps before the width connection alone
  (mHC's concatenate). On the tape its cotangent is the depth connections' term plus the
  width connection's, then the earlier readers' terms in the backward order; the fused VJP
  forms the first sum in that order, and the replay adds the rest after it. A reader after the
  depth connections would come first on the tape, a sum the fused step cannot split;
* no step between the first and the last of the three reads a_m, a_r, b, X, gamma, beta or a
  weight: their cotangents then come at the last one's place, with nothing between. A weight
  read elsewhere before or after takes the fused step's term where it took the connection's.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from lnref.autograd.steps import Step

# Each reader the copies may have -> how many of its leading arguments come before its terms.
READERS = {"weighted_sum": 1, "mix_streams": 3, "concatenate": 0}
# The readers that refuse a stack of more rows than copies (their weights count the copies).
MIXTURES = ("weighted_sum", "mix_streams")
# Each normed sublayer's fused step -> the fused step of it between the stack's connections.
MIXED_SUBLAYERS = {
    "residual_normed_attention": "mixed_normed_attention",
    "residual_normed_feed_forward": "mixed_normed_feed_forward",
}


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
    readers_of = steps_reading(steps)
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
        if not any(steps[i][0] in MIXTURES for i in readers):
            continue
        for i in readers:
            name, args, params, out = steps[i]
            rewritten[i] = (name, (*args[: READERS[name]], stack), {**params, "stacked": True}, out)
        dropped.update(index_steps)
        stacks.append(stack)
    kept = [rewritten.get(index, step) for index, step in enumerate(steps) if index not in dropped]
    return kept, frozenset(stacks)


def steps_reading(steps: Sequence[Step]) -> dict[int, list[int]]:
    """Each slot -> the indices of the steps reading it, in order (a step reading it twice once)."""
    readers_of: dict[int, list[int]] = defaultdict(list)
    for index, (_, args, _, _) in enumerate(steps):
        for slot in set(args):
            readers_of[slot].append(index)
    return readers_of


def _takes_as_terms(step: Step, copies: tuple[int, ...]) -> bool:
    """Whether ``step`` is a reader of terms given apart whose terms are ``copies``, in order."""
    name, args, params, _ = step
    leading = READERS.get(name)
    return leading is not None and not params.get("stacked") and args[leading:] == copies


def fuse_mixed_sublayers(steps: Sequence[Step], output_slot: int) -> list[Step]:
    """``steps`` with each sublayer between a stack's connections (see the module) as one step,
    at the depth connections' place."""
    uses = Counter(slot for _, args, _, _ in steps for slot in args)
    uses[output_slot] += 1
    maker = {out: index for index, (_, _, _, out) in enumerate(steps)}
    readers_of = steps_reading(steps)
    fused: dict[int, Step] = {}
    taken: set[int] = set()
    for index, (name, args, params, out) in enumerate(steps):
        match = _mixed_sublayer(steps, maker, uses, index) if name == "mix_streams" else None
        if match is None or taken.intersection(match):
            continue
        width_index, sublayer_index = match
        (_, (a_m, stack), _, _), (sublayer, (_, *branch), branch_params, _) = steps[width_index], steps[sublayer_index]
        a_r, b = args[:2]
        read = {a_m, stack, a_r, b, *branch}
        if (
            len({a_m, a_r, b, stack}.difference(branch)) != 4
            or any(reader > width_index for reader in readers_of[stack] if reader not in (width_index, index))
            or any(
                read.intersection(steps[between][1])
                for between in range(width_index + 1, index)
                if between != sublayer_index
            )
        ):
            continue
        statics = {key: value for key, value in branch_params.items() if key not in ("residual", "normed_skip")}
        if params.get("transpose"):
            statics["transpose"] = True
        fused[index] = (MIXED_SUBLAYERS[sublayer], (stack, a_m, a_r, b, *branch), statics, out)
        taken.update((width_index, sublayer_index, index))
    return [fused.get(index, step) for index, step in enumerate(steps) if index in fused or index not in taken]


def _mixed_sublayer(
    steps: Sequence[Step], maker: dict[int, int], uses: Counter[int], mix_index: int
) -> tuple[int, int] | None:
    """(weighted sum, sublayer) indices if the step at ``mix_index`` is mix_streams(a_r, b, s,
    X, stacked), a's rows or columns the weights, s = residual_normed_S(h, ..., residual=False),
    h = weighted_sum(a_m, X, stacked), h and s read by the next step alone."""
    args, params = steps[mix_index][1], steps[mix_index][2]
    if len(args) != 4 or params.get("stacked") is not True or not set(params) <= {"stacked", "transpose"}:
        return None
    _, _, branch, stack = args
    sublayer_index = maker.get(branch)
    if sublayer_index is None or uses[branch] != 1:
        return None
    sublayer, sublayer_args, sublayer_params, _ = steps[sublayer_index]
    if sublayer not in MIXED_SUBLAYERS or sublayer_params.get("residual") is not False:
        return None
    if sublayer_params.get("normed_skip") or not sublayer_args:
        return None
    width = sublayer_args[0]
    width_index = maker.get(width)
    if width_index is None or uses[width] != 1:
        return None
    name, width_args, width_params, _ = steps[width_index]
    if name != "weighted_sum" or width_params != {"stacked": True} or len(width_args) != 2 or width_args[1] != stack:
        return None
    return width_index, sublayer_index
