"""Fusing a replayed pass: a residual branch and its LayerNorm become one step.

A recorded pass (``replay.Program``) is a list of steps over numbered slots. With S the
self-attention sublayer or the FFN, :func:`fuse` finds the two shapes a LayerNorm takes around
a residual branch,

    norm first (Pre-LN):   n = layer_norm(a, gamma, beta)   s = S(n, W...)   y = add(a, s)
    norm last (Post-LN):   s = S(a, W...)   t = add(a, s)   y = layer_norm(t, gamma, beta)

(the add's operands in either order), and puts one step in the place of the three:
y = residual_normed_S(a, gamma, beta, W...) or y = normed_sum_S(a, gamma, beta, W...)
(``fused_branches.py``). It does so only where the result has the same bits as the three steps:

* each of the two intermediate results is read by the next of the three alone, and a by the
  two of them that read it alone. Nothing else needs the intermediates, and a's cotangent is
  the sum of two terms, which the fused VJP forms in the order the tape does;
* no other step between the first and the last of the three reads gamma, beta or a weight:
  the fused step hands back their cotangents at the last one's place in the backward order,
  and nothing comes between.

Then, among the steps left, a norm-last branch whose skip is scaled by w (a number, or an input
of the pass, a parameter, that broadcasts against a over its last axis: the fused step takes
those; a value computed in the pass could have another shape),

    scaled skip:    m = mul(a, w)   s = S(a, W...)   t = add(m, s)   y = layer_norm(t, gamma, beta)

(the mul's and the add's operands in either order) becomes y = normed_sum_S(a, gamma, beta,
W..., w), where m is read by the add alone, a by the mul and S alone, and no step between the
first and the last of the four reads w, gamma, beta or a weight (w's cotangent then comes at the
norm's place, with nothing between; a's is the sum of two terms, in either order the same).

Then, among the steps left, a norm-first branch whose output is scaled by w (LayerScale's
diag(lambda)),

    scaled branch:  n = layer_norm(a, gamma, beta)   s = S(n, W...)   m = mul(s, w)   y = add(a, m)

(the mul's and the add's operands in either order) becomes y = residual_normed_S(a, gamma,
beta, W..., w), on the same conditions on w (a number, or an input of the pass that the norm
and S do not read), where n, s and m are each read by the next step alone, a by the norm and
the add alone (its cotangent is the sum of two terms), and no step between the first and the
last of the four reads w, gamma, beta or a weight.

Then, among the steps left, a branch whose skip is the norm's output (HybridNorm's Post-Norm
FFN), for S one of ``NORMED_SKIP``,

    normed skip:    n = layer_norm(a, gamma, beta)   s = S(n, W...)   y = add(n, s)

becomes y = residual_normed_S(a, gamma, beta, W..., normed_skip=True), where n is read by the
two alone, s by the add alone, and no step between the three reads a or a parameter (n's
cotangent is the sum of the add's term and S's, which the fused VJP forms in the tape's order).

Then, among the steps left, a normed branch whose output goes anywhere else,

    normed input:   n = layer_norm(a, gamma, beta)   s = S(n, W...)

becomes s = residual_normed_S(a, gamma, beta, W..., residual=False), where n has no other
reader and no step between the two reads a, gamma, beta or a weight (a's cotangent from the
norm then joins its other terms at the sublayer's place, with nothing between).

The fused kernels compute with the kernels' own loops in their order. Pre-LN's and Post-LN's
branches take the first two shapes, and so does any scheme's branch written as
``x + branch(norm(x))`` or ``norm(x + branch(x))``; ``branch(norm(x))`` anywhere else (a
weighted skip, a second stream, a norm after the branch) takes the third.

The sublayers with pieces inside, S = ``heads_pieces_attention`` (norms and scales around the
attention's core) or ``normed_feed_forward`` (a norm on the FFN's hidden units), take the norm
first and normed input shapes (they have no norm-last form). The attention with pieces has
one more, matched before all others: a norm on the branch's output too (NormFormer's),

    both norms:     n = layer_norm(a, g, b)   s = S(n, W...)   t = layer_norm(s, g2, b2)   y = add(a, t)

which becomes y = residual_normed_S(a, g, b, W..., g2, b2) on the same conditions.

Last, among the steps left, a norm whose output is added to another value and read by
nothing else,

    added norm:     t = layer_norm(b, gamma, beta)   y = add(a, t)

becomes y = add_layer_norm(a, b, gamma, beta), where no step between the two reads b, gamma
or beta (their cotangents then come at the add's place, with nothing between); and a norm of
a sum that nothing else reads,

    normed total:   t = add(a, b)   y = layer_norm(t, gamma, beta)

becomes y = layer_norm_of_sum(a, b, gamma, beta), where no step between the two reads a, b,
gamma or beta (the add's cotangents then come at the norm's place, with nothing between); the
same with a term divided by a number first (SiameseNorm's Post-Norm stream),

    divided total:  q = div(b, c)   t = add(a, q)   y = layer_norm(t, gamma, beta)

becomes y = layer_norm_of_sum(a, b, gamma, beta, c), where q is read by the add alone and no
step between the div and the norm reads a, gamma or beta, nor b unless b has one reader
besides the div (its cotangent is then a sum of two terms, the same in either order).

After all those, among the steps left, the element-wise shapes of ``pointwise_shapes.py``
(GPAS's scaled-down value, a value times a sigmoid, DeepScaleLM's sum of two products).

A replay then reads the copies of a stack as the stack where mixtures of them all (and a
concatenate of them all) are their only readers, and fuses each sublayer between two such
mixtures (the width and depth connections of hyper-connections and mHC, their weights shared or
one set per token) into one step: ``stacked_copies.py`` lists those shapes and conditions; then
each such mHC sublayer with the mappings that give its weights from the stack, one step again
(``mapped_copies.py``).
Before that, a run of sublayers that each read two streams and add to both through the shapes
above (SiameseNorm's) becomes one step a sublayer on the streams stacked: ``two_streams.py``.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any

from lnref.autograd import pointwise_shapes
from lnref.autograd.checks import is_number
from lnref.autograd.primitive import DEFINED, PRIMITIVES
from lnref.autograd.steps import Step

# Each sublayer's primitive -> how many of its leading arguments the fused step drops (its
# input, and attention's memory), the fused primitives of the two shapes (None: no fused form
# of that shape), and the name the fused step gives the norm's eps (the sublayers with pieces
# have an eps of their own).
SUBLAYERS = {
    "attention_sublayer": (2, "residual_normed_attention", "normed_sum_attention", "eps"),
    "feed_forward": (1, "residual_normed_feed_forward", "normed_sum_feed_forward", "eps"),
    "heads_pieces_attention": (1, "residual_normed_heads_pieces_attention", None, "norm_eps"),
    "normed_feed_forward": (1, "residual_normed_normed_feed_forward", None, "norm_eps"),
}
# The sublayers whose norm-first fused step also takes a norm of the branch's output, and those
# whose fused step can take the skip from the norm's output.
OUTPUT_NORMED = ("heads_pieces_attention",)
NORMED_SKIP = ("feed_forward",)
# The sublayers whose norm-first fused step can take a scale of the branch (LayerScale's).
SCALED_BRANCH = ("attention_sublayer", "feed_forward")
# The primitives a fused step stands for (a fused primitive itself is looked up by name when
# its step runs, as every primitive is).
PRIMITIVE_NAMES = (
    *("layer_norm", "add", *SUBLAYERS, "stop_gradient", "mul", "sub", "sigmoid", "div"),
    *("index", "weighted_sum", "mix_streams", "concatenate"),  # the copies read as their stack (``stacked_copies.py``)
    *("scaled_linear", "reshape", "sinkhorn"),  # mHC's mappings (``mapped_copies.py``)
)


def fuse(steps: list[Step], fixed: dict[int, Any], output_slot: int) -> list[Step]:
    """``steps`` with every branch of the three shapes as one step; ``fixed`` maps the slots whose
    values the pass takes as given (constants) to them: attention's memory must be one of them,
    None."""
    uses = Counter(slot for _, args, _, _ in steps for slot in args)
    uses[output_slot] += 1
    maker = {out: index for index, (_, _, _, out) in enumerate(steps)}
    fused: dict[int, Step] = {}
    taken: set[int] = set()
    for index, (name, args, _, out) in enumerate(steps):
        both = _output_normed(steps, maker, uses, fixed, index) if name == "add" and len(args) == 2 else None
        if both is None:
            continue
        norm_index, sublayer_index, out_norm_index, _ = both
        (_, (stream, gamma, beta), norm_params, _), (_, (_, out_gamma, out_beta), out_params, _) = (
            steps[norm_index],
            steps[out_norm_index],
        )
        sublayer, sublayer_args, sublayer_params, _ = steps[sublayer_index]
        out_statics = {f"out_{key}": value for key, value in out_params.items()}
        statics = {**_norm_statics(sublayer, norm_params), **sublayer_params, **out_statics}
        arguments = (stream, gamma, beta, *sublayer_args[SUBLAYERS[sublayer][0] :], out_gamma, out_beta)
        fused[index] = (SUBLAYERS[sublayer][1], arguments, statics, out)
        taken.update(both)
    for index, (name, args, _, out) in enumerate(steps):
        match = None
        if name == "add" and len(args) == 2:
            match = _norm_first(steps, maker, uses, fixed, index)
        elif name == "layer_norm" and len(args) == 3:
            match = _norm_last(steps, maker, uses, fixed, index)
        if match is None or taken.intersection(match) or _read_between(steps, match):
            continue
        norm_index, sublayer_index, _ = match
        stream = steps[min(norm_index, sublayer_index)][1][0]  # the first of the two reads it
        _, (_, gamma, beta), norm_params, _ = steps[norm_index]
        sublayer, sublayer_args, sublayer_params, _ = steps[sublayer_index]
        dropped, norm_first, norm_last, _ = SUBLAYERS[sublayer]
        fused_name = norm_first if norm_index < sublayer_index else norm_last
        if fused_name is None:
            continue
        weights = sublayer_args[dropped:]
        statics = {**_norm_statics(sublayer, norm_params), **sublayer_params}
        fused[index] = (fused_name, (stream, gamma, beta, *weights), statics, out)
        taken.update(match)
    _fuse_scaled_skips(steps, maker, uses, fixed, fused, taken)
    _fuse_scaled_branches(steps, maker, uses, fixed, fused, taken)
    for index, (name, _, _, out) in enumerate(steps):
        match = _normed_skip(steps, maker, uses, fixed, index) if name == "add" and index not in taken else None
        if match is None or taken.intersection(match):
            continue
        norm_index, sublayer_index, _ = match
        _, (stream, gamma, beta), norm_params, _ = steps[norm_index]
        sublayer, sublayer_args, sublayer_params, _ = steps[sublayer_index]
        statics = {**_norm_statics(sublayer, norm_params), **sublayer_params, "normed_skip": True}
        weights = sublayer_args[SUBLAYERS[sublayer][0] :]
        fused[index] = (SUBLAYERS[sublayer][1], (stream, gamma, beta, *weights), statics, out)
        taken.update(match)
    for index, (name, args, params, out) in enumerate(steps):
        input_norm = None if index in taken else _normed_input(steps, maker, uses, fixed, index)
        if input_norm is None or input_norm in taken:
            continue
        _, (stream, gamma, beta), norm_params, _ = steps[input_norm]
        weights = args[SUBLAYERS[name][0] :]
        statics = {**_norm_statics(name, norm_params), **params, "residual": False}
        fused[index] = (SUBLAYERS[name][1], (stream, gamma, beta, *weights), statics, out)
        taken.update((input_norm, index))
    for index, (name, _, _, out) in enumerate(steps):
        normed_sum = None if index in taken or name != "add" else _added_norm(steps, maker, uses, index)
        if normed_sum is None or normed_sum[0] in taken:
            continue
        norm_index, other = normed_sum
        _, norm_args, norm_params, _ = steps[norm_index]
        fused[index] = ("add_layer_norm", (other, *norm_args), norm_params, out)
        taken.update((norm_index, index))
    _fuse_divided_totals(steps, maker, uses, fixed, fused, taken)
    for index, (name, args, params, out) in enumerate(steps):
        add_index = None if index in taken or name != "layer_norm" else _normed_total(steps, maker, uses, index)
        if add_index is None or add_index in taken:
            continue
        fused[index] = ("layer_norm_of_sum", (*steps[add_index][1], *args[1:]), params, out)
        taken.update((add_index, index))
    pointwise_shapes.fuse_pointwise(steps, maker, uses, fused, taken)
    return [fused.get(index, step) for index, step in enumerate(steps) if index in fused or index not in taken]


def _norm_statics(sublayer: str, norm_params: dict[str, Any]) -> dict[str, Any]:
    """The norm's static parameters as the fused step of ``sublayer`` names them."""
    eps_name = SUBLAYERS[sublayer][3]
    return {eps_name if key == "eps" else key: value for key, value in norm_params.items()}


def _is_sublayer(steps: list[Step], index: int, fixed: dict[int, Any]) -> bool:
    """Whether step ``index`` is a self-attention sublayer (its memory the fixed None) or an FFN."""
    if steps[index][0] not in SUBLAYERS or not steps[index][1]:
        return False
    name, args = steps[index][0], steps[index][1]
    return name != "attention_sublayer" or (args[1] in fixed and fixed[args[1]] is None)


def _norm_first(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fixed: dict[int, Any], add_index: int
) -> tuple[int, int, int] | None:
    """(norm, sublayer, add) indices if the add at ``add_index`` is a + S(layer_norm(a))."""
    for stream, branch in (steps[add_index][1], steps[add_index][1][::-1]):
        sublayer_index = maker.get(branch)
        if sublayer_index is None or uses[branch] != 1 or uses[stream] != 2:
            continue
        if not _is_sublayer(steps, sublayer_index, fixed):
            continue
        normed = steps[sublayer_index][1][0]
        norm_index = maker.get(normed)
        if uses[normed] == 1 and norm_index is not None and steps[norm_index][0] == "layer_norm":
            norm_args = steps[norm_index][1]
            if len(norm_args) == 3 and norm_args[0] == stream:
                return norm_index, sublayer_index, add_index
    return None


def _output_normed(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fixed: dict[int, Any], add_index: int
) -> tuple[int, int, int, int] | None:
    """(norm, sublayer, output norm, add) indices if the add at ``add_index`` is
    a + layer_norm(S(layer_norm(a))) for S one of ``OUTPUT_NORMED``, each intermediate read by
    the next step alone, a by the first norm and the add alone, and no step between reading
    a parameter of the three."""
    for stream, branch in (steps[add_index][1], steps[add_index][1][::-1]):
        out_norm_index = maker.get(branch)
        if out_norm_index is None or uses[branch] != 1 or uses[stream] != 2:
            continue
        if steps[out_norm_index][0] != "layer_norm" or len(steps[out_norm_index][1]) != 3:
            continue
        attended = steps[out_norm_index][1][0]
        sublayer_index = maker.get(attended)
        if sublayer_index is None or uses[attended] != 1 or steps[sublayer_index][0] not in OUTPUT_NORMED:
            continue
        norm_index = _normed_input(steps, maker, uses, fixed, sublayer_index)
        if norm_index is None or steps[norm_index][1][0] != stream:
            continue
        match = (norm_index, sublayer_index, out_norm_index, add_index)
        parameters = {*steps[norm_index][1][1:], *steps[sublayer_index][1][1:], *steps[out_norm_index][1][1:]}
        if not any(
            parameters.intersection(steps[between][1])
            for between in range(norm_index + 1, add_index)
            if between not in match
        ):
            return match
    return None


def _normed_skip(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fixed: dict[int, Any], add_index: int
) -> tuple[int, int, int] | None:
    """(norm, sublayer, add) indices if the add at ``add_index`` is n + S(n), n = layer_norm(a),
    S one of ``NORMED_SKIP``, n read by the two alone, S's output by the add alone, and no step
    between reading a or a parameter."""
    if len(steps[add_index][1]) != 2:
        return None
    for skip, branch in (steps[add_index][1], steps[add_index][1][::-1]):
        sublayer_index = maker.get(branch)
        if sublayer_index is None or uses[branch] != 1 or steps[sublayer_index][0] not in NORMED_SKIP:
            continue
        norm_index = maker.get(skip)
        if not _is_sublayer(steps, sublayer_index, fixed) or steps[sublayer_index][1][0] != skip or uses[skip] != 2:
            continue
        if norm_index is None or steps[norm_index][0] != "layer_norm" or len(steps[norm_index][1]) != 3:
            continue
        match = (norm_index, sublayer_index, add_index)
        if not _read_between(steps, match, steps[norm_index][1][0]):
            return match
    return None


def _norm_last(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fixed: dict[int, Any], norm_index: int
) -> tuple[int, int, int] | None:
    """(norm, sublayer, add) indices if the norm at ``norm_index`` is layer_norm(a + S(a))."""
    total = steps[norm_index][1][0]
    add_index = maker.get(total)
    if uses[total] != 1 or add_index is None or steps[add_index][0] != "add" or len(steps[add_index][1]) != 2:
        return None
    for stream, branch in (steps[add_index][1], steps[add_index][1][::-1]):
        sublayer_index = maker.get(branch)
        if sublayer_index is None or uses[branch] != 1 or uses[stream] != 2:
            continue
        if _is_sublayer(steps, sublayer_index, fixed) and steps[sublayer_index][1][0] == stream:
            return norm_index, sublayer_index, add_index
    return None


def _fuse_scaled_skips(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fixed: dict[int, Any], fused: dict[int, Step],
    taken: set[int],
) -> None:  # fmt: skip
    """Put in ``fused`` each branch LN(w * a + S(a)) of the steps not ``taken`` as one step, at
    the norm's index, and add the four steps' indices to ``taken``."""
    for index, (name, args, params, out) in enumerate(steps):
        match = None if index in taken or name != "layer_norm" else _scaled_norm_last(steps, maker, uses, fixed, index)
        if match is None or taken.intersection(match[:3]):
            continue
        mul_index, sublayer_index, add_index, scale = match
        sublayer, sublayer_args, sublayer_params, _ = steps[sublayer_index]
        dropped, _, norm_last, _ = SUBLAYERS[sublayer]
        if norm_last is None:
            continue
        weights = sublayer_args[dropped:]
        statics = {**_norm_statics(sublayer, params), **sublayer_params}
        fused[index] = (norm_last, (sublayer_args[0], *args[1:], *weights, scale), statics, out)
        taken.update((mul_index, sublayer_index, add_index, index))


def _scaled_norm_last(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fixed: dict[int, Any], norm_index: int
) -> tuple[int, int, int, int] | None:
    """(mul, sublayer, add indices, the scale's slot) if the norm at ``norm_index`` is
    layer_norm(mul(a, w) + S(a)) (either operand order of each), the product read by the add
    alone, a by the mul and S alone, w an input of the pass or a number (no step's output, no
    other fixed value), and no step between the first and the last of the four reading w or a
    parameter of the norm or S."""
    norm_args = steps[norm_index][1]
    add_index = maker.get(norm_args[0]) if len(norm_args) == 3 else None
    if add_index is None or uses[norm_args[0]] != 1 or steps[add_index][0] != "add" or len(steps[add_index][1]) != 2:
        return None
    for product, branch in (steps[add_index][1], steps[add_index][1][::-1]):
        sublayer_index, mul_index = maker.get(branch), maker.get(product)
        if sublayer_index is None or mul_index is None or uses[branch] != 1 or uses[product] != 1:
            continue
        if not _is_sublayer(steps, sublayer_index, fixed):
            continue
        stream, mul_args = steps[sublayer_index][1][0], steps[mul_index][1]
        if steps[mul_index][0] != "mul" or len(mul_args) != 2 or stream not in mul_args or uses[stream] != 2:
            continue
        scale = mul_args[1] if mul_args[0] == stream else mul_args[0]
        if scale == stream or scale in maker or (scale in fixed and not is_number(fixed[scale])):
            continue
        match = (mul_index, sublayer_index, add_index, norm_index)
        read = {scale, *norm_args[1:], *steps[sublayer_index][1][1:]}
        if not any(read.intersection(steps[between][1]) for between in range(min(match) + 1, norm_index)
                   if between not in match):  # fmt: skip
            return mul_index, sublayer_index, add_index, scale
    return None


def _fuse_scaled_branches(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fixed: dict[int, Any], fused: dict[int, Step],
    taken: set[int],
) -> None:  # fmt: skip
    """Put in ``fused`` each branch a + w * S(LN(a)) of the steps not ``taken`` as one step, at
    the add's index, and add the four steps' indices to ``taken``."""
    for index, (name, _, _, out) in enumerate(steps):
        match = None if index in taken or name != "add" else _scaled_norm_first(steps, maker, uses, fixed, index)
        if match is None or taken.intersection(match[:3]):
            continue
        norm_index, sublayer_index, mul_index, scale = match
        _, (stream, gamma, beta), norm_params, _ = steps[norm_index]
        sublayer, sublayer_args, sublayer_params, _ = steps[sublayer_index]
        dropped, norm_first, _, _ = SUBLAYERS[sublayer]
        statics = {**_norm_statics(sublayer, norm_params), **sublayer_params}
        fused[index] = (norm_first, (stream, gamma, beta, *sublayer_args[dropped:], scale), statics, out)
        taken.update((norm_index, sublayer_index, mul_index, index))


def _scaled_norm_first(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fixed: dict[int, Any], add_index: int
) -> tuple[int, int, int, int] | None:
    """(norm, sublayer, mul indices, the scale's slot) if the add at ``add_index`` is
    a + mul(w, S(layer_norm(a))) (either operand order of each), S one of ``SCALED_BRANCH``,
    the norm's output read by S alone, S's by the mul alone, the product by the add alone, a
    by the norm and the add alone, w an input of the pass or a number that neither the norm
    nor S reads, and no step between the first and the last of the four reading w or a
    parameter of the norm or S."""
    add_args = steps[add_index][1]
    if len(add_args) != 2:
        return None
    for stream, product in (add_args, add_args[::-1]):
        mul_index = maker.get(product)
        if mul_index is None or uses[product] != 1 or uses[stream] != 2 or steps[mul_index][0] != "mul":
            continue
        mul_args = steps[mul_index][1]
        for branch, scale in (mul_args, mul_args[::-1]) if len(mul_args) == 2 else ():
            sublayer_index = maker.get(branch)
            if sublayer_index is None or uses[branch] != 1 or steps[sublayer_index][0] not in SCALED_BRANCH:
                continue
            normed, *parameters = steps[sublayer_index][1]
            norm_index = maker.get(normed)
            if norm_index is None or uses[normed] != 1 or not _is_sublayer(steps, sublayer_index, fixed):
                continue
            norm_name, norm_args = steps[norm_index][0], steps[norm_index][1]
            if norm_name != "layer_norm" or len(norm_args) != 3 or norm_args[0] != stream:
                continue
            read = {*norm_args[1:], *parameters}
            if scale == stream or scale in read or scale in maker or (scale in fixed and not is_number(fixed[scale])):
                continue
            match = (norm_index, sublayer_index, mul_index, add_index)
            read.add(scale)
            if not any(read.intersection(steps[between][1]) for between in range(min(match) + 1, add_index)
                       if between not in match):  # fmt: skip
                return norm_index, sublayer_index, mul_index, scale
    return None


def _normed_input(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fixed: dict[int, Any], sublayer_index: int
) -> int | None:
    """The norm's index if the step at ``sublayer_index`` is S(layer_norm(a)), the norm's output
    read by S alone and nothing between the two reading a or their parameters."""
    if not _is_sublayer(steps, sublayer_index, fixed):
        return None
    normed = steps[sublayer_index][1][0]
    norm_index = maker.get(normed)
    if norm_index is None or uses[normed] != 1 or steps[norm_index][0] != "layer_norm":
        return None
    norm_args = steps[norm_index][1]
    if len(norm_args) != 3 or _read_between(steps, (norm_index, sublayer_index, sublayer_index), norm_args[0]):
        return None
    return norm_index


def _added_norm(steps: list[Step], maker: dict[int, int], uses: Counter[int], add_index: int) -> tuple[int, int] | None:
    """(the norm's index, the other operand's slot) if the add at ``add_index`` is
    a + layer_norm(b), the norm's output read by the add alone and no step between the two
    reading b or the norm's parameters."""
    args = steps[add_index][1]
    if len(args) != 2:
        return None
    for other, normed in (args, args[::-1]):
        norm_index = maker.get(normed)
        if norm_index is None or uses[normed] != 1 or steps[norm_index][0] != "layer_norm":
            continue
        norm_args = set(steps[norm_index][1])
        if len(steps[norm_index][1]) == 3 and not any(
            norm_args.intersection(steps[between][1]) for between in range(norm_index + 1, add_index)
        ):
            return norm_index, other
    return None


def _fuse_divided_totals(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fixed: dict[int, Any], fused: dict[int, Step],
    taken: set[int],
) -> None:  # fmt: skip
    """Put in ``fused`` each norm of a sum with a divided term, LN(a + b / c), of the steps not
    ``taken`` as one step, at the norm's index, and add the three steps' indices to ``taken``."""
    for index, (name, args, params, out) in enumerate(steps):
        match = None if index in taken or name != "layer_norm" else _divided_total(steps, maker, uses, fixed, index)
        if match is None or taken.intersection(match[:2]):
            continue
        div_index, add_index, other = match
        dividend, divisor = steps[div_index][1]
        fused[index] = ("layer_norm_of_sum", (other, dividend, *args[1:], divisor), params, out)
        taken.update((div_index, add_index, index))


def _divided_total(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fixed: dict[int, Any], norm_index: int
) -> tuple[int, int, int] | None:
    """(div index, add index, the other term's slot) if the norm at ``norm_index`` is
    layer_norm(add(a, div(b, c))) (the add's operands in either order), c a number, the sum and
    the quotient read by the next step alone, and no step between the div and the norm reading
    a or the norm's parameters, nor b unless the div and one other step are b's only readers
    (its cotangent is then the sum of two terms, the same in either order)."""
    norm_args = steps[norm_index][1]
    add_index = maker.get(norm_args[0]) if len(norm_args) == 3 else None
    if add_index is None or uses[norm_args[0]] != 1 or steps[add_index][0] != "add" or len(steps[add_index][1]) != 2:
        return None
    for other, quotient in (steps[add_index][1], steps[add_index][1][::-1]):
        div_index = maker.get(quotient)
        if div_index is None or uses[quotient] != 1 or steps[div_index][0] != "div" or len(steps[div_index][1]) != 2:
            continue
        dividend, divisor = steps[div_index][1]
        if divisor not in fixed or not is_number(fixed[divisor]) or other == dividend:
            continue
        read = {other, *norm_args[1:], *([dividend] if uses[dividend] > 2 else [])}
        between = (i for i in range(div_index + 1, norm_index) if i != add_index)
        if not any(read.intersection(steps[i][1]) for i in between):
            return div_index, add_index, other
    return None


def _normed_total(steps: list[Step], maker: dict[int, int], uses: Counter[int], norm_index: int) -> int | None:
    """The add's index if the norm at ``norm_index`` is layer_norm(add(a, b)), the sum read by
    the norm alone and no step between the two reading a, b or the norm's parameters."""
    norm_args = steps[norm_index][1]
    add_index = maker.get(norm_args[0]) if len(norm_args) == 3 else None
    if add_index is None or uses[norm_args[0]] != 1 or steps[add_index][0] != "add" or len(steps[add_index][1]) != 2:
        return None
    read = {*steps[add_index][1], *norm_args[1:]}
    if any(read.intersection(steps[between][1]) for between in range(add_index + 1, norm_index)):
        return None
    return add_index


def _read_between(steps: list[Step], match: tuple[int, int, int], *also: int) -> bool:
    """Whether a step between the first and the last of ``match``, not one of them, reads one
    of the norm's or the sublayer's parameters (or a slot of ``also``)."""
    norm_index, sublayer_index, _ = match
    parameters = {*steps[norm_index][1][1:], *steps[sublayer_index][1][1:], *also}
    return any(
        parameters.intersection(steps[between][1])
        for between in range(min(match) + 1, max(match))
        if between not in match
    )


def defined_primitives_in_place() -> bool:
    """Whether the registry holds the primitives a fused step stands for as lnref defines them
    (or timers around them): a fused pass must not run in the place of one a test has swapped
    for a broken one."""
    for name in PRIMITIVE_NAMES:
        now, defined = PRIMITIVES.get(name), DEFINED[name]
        if now is defined:
            continue
        if now is None or inspect.unwrap(now.forward) is not defined.forward:
            return False
        if inspect.unwrap(now.vjp) is not defined.vjp:
            return False
    return True
