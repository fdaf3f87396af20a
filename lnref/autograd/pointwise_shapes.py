"""The element-wise shapes a replayed pass fuses, after every shape of ``fusion.py`` (the fused
primitives are in ``fused_pointwise.py``), among the steps left. Two come first: a value
scaled by s, its gradient stopped, taken from another (from itself, GPAS's
x - SiLU(a) sg(x)),

    scaled down:    t = stop_gradient(b)   p = mul(s, t)   y = sub(a, p)

becomes y = sub_scaled_stop_gradient(a, s, b), and a value times the sigmoid of another,

    gated:          t = sigmoid(g)   y = mul(x, t)

becomes y = mul_sigmoid(x, g) (SiLU when g is x), the mul's operands in either order, each
intermediate read by the next step alone and no step between the mul and the sub reading s,
or between the sigmoid and the mul reading g (their cotangents then come at the last step's
place, with nothing between; sg gives b none, and the mul's term of x and the sigmoid's of g
reach a slot given twice in the order the tape adds them).

Last, among the steps left, a sum of two products (DeepScaleLM's weighted skip and branch),

    products:       p = mul(a, u)   q = mul(b, w)   y = add(p, q)

becomes y = sum_of_products(a, u, b, w), the add's operands in either order, where p and q are
read by the add alone and a, u, b and w are four slots. Each operand's cotangent then comes at
the add's place instead of its mul's: where a step between its mul and the add reads it too,
the operand must have no reader but those two (a sum of two terms, the same in either order).
"""

from __future__ import annotations

from collections import Counter

from lnref.autograd.steps import Step


def fuse_pointwise(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], fused: dict[int, Step], taken: set[int]
) -> None:
    """Put in ``fused`` each of the element-wise shapes among the steps not ``taken`` as one
    step, at its last step's index, and add the steps it stands for to ``taken``."""
    for index, (name, _, _, out) in enumerate(steps):
        pointwise = None if index in taken or name not in ("sub", "mul") else _pointwise(steps, maker, uses, index)
        if pointwise is None or taken.intersection(pointwise[0]):
            continue
        stood_for, fused_name, arguments = pointwise
        fused[index] = (fused_name, arguments, {}, out)
        taken.update((*stood_for, index))
    for index, (name, _, _, out) in enumerate(steps):
        products = None if index in taken or name != "add" else _sum_of_products(steps, maker, uses, index)
        if products is None or taken.intersection(products):
            continue
        first, second = products
        fused[index] = ("sum_of_products", (*steps[first][1], *steps[second][1]), {}, out)
        taken.update((first, second, index))


def _pointwise(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], index: int
) -> tuple[tuple[int, ...], str, tuple[int, ...]] | None:
    """(the indices of the steps it stands for, the fused primitive, its argument slots) if the
    step at ``index`` is a - s sg(b) (a ``sub`` of a ``mul`` of a ``stop_gradient``) or
    x sigmoid(g) (a ``mul`` of a ``sigmoid``), each intermediate read by the next step alone and
    no step between them reading s (or g): its cotangent then comes at the last one's place."""
    name, args = steps[index][0], steps[index][1]
    if len(args) != 2:
        return None
    if name == "sub":
        stream, scaled = args
        mul_index = maker.get(scaled)
        if mul_index is None or uses[scaled] != 1 or steps[mul_index][0] != "mul":
            return None
        for scale, stopped in (steps[mul_index][1], steps[mul_index][1][::-1]):
            stop_index = maker.get(stopped)
            if stop_index is None or uses[stopped] != 1 or steps[stop_index][0] != "stop_gradient":
                continue
            if not any(scale in steps[between][1] for between in range(mul_index + 1, index)):
                return (stop_index, mul_index), "sub_scaled_stop_gradient", (stream, scale, *steps[stop_index][1])
        return None
    for value, gate in (args, args[::-1]):
        sigmoid_index = maker.get(gate)
        if sigmoid_index is None or uses[gate] != 1 or steps[sigmoid_index][0] != "sigmoid":
            continue
        (gated,) = steps[sigmoid_index][1]
        if not any(gated in steps[between][1] for between in range(sigmoid_index + 1, index)):
            return (sigmoid_index,), "mul_sigmoid", (value, gated)
    return None


def _sum_of_products(
    steps: list[Step], maker: dict[int, int], uses: Counter[int], add_index: int
) -> tuple[int, int] | None:
    """(the first mul's index, the second's) if the step at ``add_index`` adds two products read
    by it alone, of four operand slots, each operand read by a step between its mul and the add
    only where it has no other reader (see the module)."""
    args = steps[add_index][1]
    if len(args) != 2 or any(uses[product] != 1 or product not in maker for product in args):
        return None
    first, second = sorted(maker[product] for product in args)
    if steps[first][0] != "mul" or steps[second][0] != "mul":
        return None
    operands = (*steps[first][1], *steps[second][1])
    if len(operands) != 4 or len(set(operands)) != 4:
        return None
    for mul_index in (first, second):
        for operand in steps[mul_index][1]:
            read_between = any(operand in steps[between][1] for between in range(mul_index + 1, add_index))
            if read_between and uses[operand] != 2:
                return None
    return first, second
