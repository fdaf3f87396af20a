"""Fusing a replayed pass: a residual branch with a LayerNorm on its input becomes one step.

A recorded pass (``replay.Program``) is a list of steps over numbered slots. Wherever it reads

    n = layer_norm(a, gamma, beta)     s = SUBLAYER(n, weights...)     y = add(a, s)  (or add(s, a))

with SUBLAYER the self-attention sublayer or the FFN, :func:`fuse` puts one step in the add's
place, y = residual_normed_SUBLAYER(a, gamma, beta, weights...) (``fused.py``), and drops the
other two. It does so only where the result has the same bits as the three steps:

* n is read by the sublayer alone, s by the add alone, and a by the norm and the add alone.
  The three steps' outputs are then needed nowhere else, and a's cotangent is the sum of two
  terms, dy + da_ln, which the fused VJP forms as the tape does;
* no step between the norm and the add reads gamma, beta or a weight: the fused step adds
  their cotangents at the add's place in the backward order instead of the norm's and the
  sublayer's, and nothing comes between.

The fused kernels compute with the three kernels' own loops in their order. Pre-LN's two
branches take this shape, and so does any scheme's branch written as ``x + branch(norm(x))``.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any

from lnref.autograd.primitive import PRIMITIVES, Primitive

# A step: (primitive name, argument slots, static parameters, output slot).
Step = tuple[str, tuple[int, ...], dict[str, Any], int]

# The sublayer's primitive -> (the fused primitive, how many of the sublayer's leading
# arguments the fused one drops: its input, and attention's memory).
FUSIONS = {
    "attention_sublayer": ("residual_normed_attention", 2),
    "feed_forward": ("residual_normed_feed_forward", 1),
}
# The primitives a fused step stands for (a fused primitive itself is looked up by name when
# its step runs, as every primitive is).
PRIMITIVE_NAMES = ("layer_norm", "add", *FUSIONS)


def fuse(steps: list[Step], fixed: dict[int, Any], output_slot: int) -> list[Step]:
    """``steps`` with every residual branch of the shape above as one step; ``fixed`` maps the
    slots whose values the pass takes as given (constants) to them: attention's memory must be
    one of them, None."""
    uses = Counter(slot for _, args, _, _ in steps for slot in args)
    uses[output_slot] += 1
    maker = {out: index for index, (_, _, _, out) in enumerate(steps)}
    fused: dict[int, Step] = {}
    dropped: set[int] = set()
    for index, (name, args, _, out) in enumerate(steps):
        if name != "add" or len(args) != 2:
            continue
        for stream, branch in (args, args[::-1]):
            match = _branch(steps, maker, uses, fixed, stream, branch)
            if match is not None and not _read_between(steps, match, index):
                norm_index, sublayer_index = match
                _, (_, gamma, beta), norm_params, _ = steps[norm_index]
                sublayer, sublayer_args, sublayer_params, _ = steps[sublayer_index]
                fused_name, dropped_args = FUSIONS[sublayer]
                weights = sublayer_args[dropped_args:]
                fused[index] = (fused_name, (stream, gamma, beta, *weights), {**norm_params, **sublayer_params}, out)
                dropped |= {norm_index, sublayer_index}
                break
    return [fused.get(index, step) for index, step in enumerate(steps) if index not in dropped]


def _branch(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fixed: dict[int, Any], stream: int, branch: int
) -> tuple[int, int] | None:
    """(the norm's index, the sublayer's) if ``branch`` is SUBLAYER(layer_norm(stream)) with the
    uses the module requires; else None."""
    sublayer_index = maker.get(branch)
    if sublayer_index is None or uses[branch] != 1 or uses[stream] != 2:
        return None
    sublayer, sublayer_args, _, _ = steps[sublayer_index]
    if sublayer not in FUSIONS or not sublayer_args or uses[sublayer_args[0]] != 1:
        return None
    if sublayer == "attention_sublayer" and (sublayer_args[1] not in fixed or fixed[sublayer_args[1]] is not None):
        return None  # cross-attention: its memory is a second input
    norm_index = maker.get(sublayer_args[0])
    if norm_index is None or steps[norm_index][0] != "layer_norm" or len(steps[norm_index][1]) != 3:
        return None
    return (norm_index, sublayer_index) if steps[norm_index][1][0] == stream else None


def _read_between(steps: list[Step], match: tuple[int, int], add_index: int) -> bool:
    """Whether a step between the norm and the add, other than the sublayer, reads one of the
    norm's or the sublayer's parameters."""
    norm_index, sublayer_index = match
    parameters = {*steps[norm_index][1][1:], *steps[sublayer_index][1][1:]}
    return any(
        parameters.intersection(steps[between][1])
        for between in range(norm_index + 1, add_index)
        if between != sublayer_index
    )


def registered() -> dict[str, Primitive]:
    """The primitives a fused pass stands for, as registered now."""
    return {name: PRIMITIVES[name] for name in PRIMITIVE_NAMES if name in PRIMITIVES}


def still_registered(primitives: dict[str, Primitive]) -> bool:
    """Whether the registry still holds ``primitives`` (or timers around them): a fused pass
    must not run in the place of a primitive a test has swapped for a broken one."""
    for name, primitive in primitives.items():
        now = PRIMITIVES.get(name)
        if now is primitive:
            continue
        if now is None or inspect.unwrap(now.forward) is not primitive.forward:
            return False
        if inspect.unwrap(now.vjp) is not primitive.vjp:
            return False
    return True
