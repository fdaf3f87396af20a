"""Blockwise and full modes: each block of the stack (the embedding stage, a layer, the readout)
checked on its own, so the lower layers of a deep Post-LN stack are checked as sharply as the top.

A block's value is <u, stage(inputs)> for a seeded random cotangent u on its outputs. At a
generic point its input states are jittered as well: deep stacks can drive the tokens of a
state together (attention averages them), where some terms of a layer's VJP vanish. Its frozen
values (ReLU patterns) are recorded at its own input and held for every finite difference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lnref.autograd import Tape, Tensor, ops
from lnref.finite_diff import STATUSES, STENCIL, difference_from_values
from lnref.gradcheck.point import Point, jitter_params, linear_per_row
from lnref.gradcheck.report import (
    Check,
    TensorResult,
    compare,
    confirmed,
    confirmed_elements,
    summarize,
    summarize_elements,
)
from lnref.views import Run, record_frozen

STACKED_MOVES = 200  # moves (element, stencil point) per batched run in full mode
BATCHED_AGREEMENT = 64  # |batched f(0) - f(0)| allowed, in units of eps * sum|outputs * u|

Stage = Callable[[Run, tuple[Any, ...]], tuple[Tensor, ...]]
Spec = tuple[str, str, list[str], Stage, tuple[Any, ...], "int | None"]


def block_specs(point: Point) -> list[Spec]:
    """(label, where, parameter names, stage, input states, block index) for every block of
    the model, in order: the embedding stage (if it has parameters), each block (a stack's
    layers; an encoder-decoder model's encoder layers, bridge and decoder layers), the readout.
    ``stage(run, inputs)`` maps the block's input arrays/Tensors to its output tuple."""
    model = point.model
    specs: list[Spec] = []
    if point.embed_params:
        specs.append(
            (
                "embed",
                "stack",
                sorted(point.embed_params),
                lambda run, inputs: model.embed(run, point._model_input(inputs)),
                tuple(point.inputs.values()),
                None,
            )
        )
    for index in range(point.n_blocks):
        names = [n for n in point.params if point.start_of(n) == index]
        label, where = model.block_label(index)
        specs.append(
            (
                label,
                where,
                names,
                lambda run, inputs, index=index: model.layer(run, index, inputs),
                point.states[index],
                index,
            )
        )
    readout_only = sorted(point.readout_params - point.embed_params)
    specs.append(
        ("readout", "stack", readout_only, lambda run, inputs: (model.readout(run, inputs),), point.states[-1], None)
    )
    return specs


class Block:
    """One block at the point: its analytic VJP against a random cotangent, and its value
    under moves. ``targets`` lists what is moved: (name, kind, key, analytic gradient) with kind
    "param" (key: the parameter's name), "input" (key: the stream's index) or "memory"."""

    def __init__(
        self,
        point: Point,
        number: int,
        label: str,
        where: str,
        names: list[str],
        stage: Stage,
        inputs: tuple[Any, ...],
        layer_index: int | None,
        seed: int,
        generic: bool,
    ) -> None:
        model, params, memory = point.model, point.params, point.memory
        self.point, self.label, self.where, self.stage = point, label, where, stage
        self.rng = np.random.default_rng([seed, 4, number])
        if generic:
            inputs = tuple(jitter_params({"state": a}, seed + number + 1)["state"] for a in inputs)
        self.inputs = inputs
        self.uses_memory = memory is not None and layer_index is not None
        self._tiles: dict[int, tuple[Any, tuple[Any, ...]]] = {}
        self.freezer = record_frozen(model, lambda run: stage(run, inputs), params, memory)
        base_outputs = stage(self.frozen_run(params), inputs)
        self.cotangent = [self.rng.standard_normal(out.shape).astype(model.dtype) for out in base_outputs]
        self.scale = float(sum(np.abs(out.value * u).sum() for out, u in zip(base_outputs, self.cotangent)))
        self.f0 = self.value(base_outputs)

        # Analytic: the tape over this block alone, with its inputs (and the memory) as leaves,
        # the real ReLU here: its VJP is part of what is checked.
        leaves = {n: Tensor(params[n], requires_grad=True) for n in names}
        input_leaves = tuple(Tensor(a, requires_grad=True) for a in inputs)
        memory_leaf = Tensor(memory, requires_grad=True) if self.uses_memory else None
        with Tape() as tape:
            run = model.run({**params, **leaves}, memory_leaf if self.uses_memory else memory)
            total = _block_value(stage(run, input_leaves), self.cotangent)
        tape.backward(total)
        self.targets: list[tuple[str, str, Any, np.ndarray]] = [
            (n, "param", n, leaves[n].grad_or_zeros()) for n in names
        ]
        for j, leaf in enumerate(input_leaves):
            name = f"{label}.input" + (f".{j}" if len(inputs) > 1 else "")
            self.targets.append((name, "input", j, leaf.grad_or_zeros()))
        if memory_leaf is not None:
            self.targets.append((f"{label}.memory", "memory", None, memory_leaf.grad_or_zeros()))

    def frozen_run(self, params: dict[str, Any], memory: Any = None, count: int = 1, per_row: bool = False) -> Run:
        """A run with the block's frozen values (held ``count`` times along the batch axis);
        ``per_row``: linear maps take weights given one per batch row."""
        memory = self.point.memory if memory is None else memory
        options = {"linear": linear_per_row} if per_row else {}
        return self.point.model.run(params, memory, freeze=self.freezer.hold(count, self.point.release), **options)

    def value(self, outputs: tuple[Any, ...]) -> float:
        """<u, outputs> as a float: the block's scalar, the same sum for every evaluation."""
        return float(sum(np.vdot(out.value, u) for out, u in zip(outputs, self.cotangent)))

    def values_along(self, kind: str, key: Any, direction: np.ndarray, h: float) -> list[float]:
        """The block's value at the STENCIL points along ``direction`` (one target)."""
        params, memory, inputs = self.point.params, self.point.memory, self.inputs
        values = []
        for t in STENCIL:
            if t == 0.0:
                values.append(self.f0)
                continue
            move = t * h * direction
            if kind == "param":
                run = self.frozen_run({**params, key: params[key] + move})
                moved_inputs = inputs
            else:
                run = self.frozen_run(params, memory + move if kind == "memory" else None)
                moved_inputs = tuple(a + move if i == key else a for i, a in enumerate(inputs))
            values.append(self.value(self.stage(run, moved_inputs)))
        return values

    def element_values(self, kind: str, key: Any, h: float) -> np.ndarray:
        """(size, 5): the block's value at the STENCIL points along every element of a target.

        Moved states, memories and linear-map parameters are stacked along the batch axis (one
        moved copy per batch row): one run for many moves. Other parameters get one run per
        move, the moved tensor edited in place.
        """
        if kind == "param" and key not in self.point.linear_params:
            return self._looped_element_values(key, h)
        return self._stacked_element_values(kind, key, h)

    def _looped_element_values(self, name: str, h: float) -> np.ndarray:
        params = self.point.params
        base = params[name].reshape(-1)
        moved = base.copy()
        moved_params = {**params, name: moved.reshape(params[name].shape)}
        values = np.full((base.size, len(STENCIL)), self.f0)
        for i in range(base.size):
            for column, t in enumerate(STENCIL):
                if t != 0.0:
                    moved[i] = base[i] + t * h
                    values[i, column] = self.value(self.stage(self.frozen_run(moved_params), self.inputs))
            moved[i] = base[i]
        return values

    def _stacked_element_values(self, kind: str, key: Any, h: float) -> np.ndarray:
        if kind == "param":
            base = self.point.params[key]
        else:
            base = self.point.memory if kind == "memory" else self.inputs[key]
        moves = [(i, t) for i in range(base.size) for t in STENCIL]
        values = np.empty((base.size, len(STENCIL)))
        for first in range(0, len(moves), STACKED_MOVES):
            chunk = moves[first : first + STACKED_MOVES]
            stacked = np.repeat(base[None], len(chunk), axis=0)
            for row, (i, t) in enumerate(chunk):
                stacked[row].flat[i] += t * h
            run, inputs = self._stacked_run_and_inputs(kind, key, stacked)
            outputs = self.stage(run, inputs)
            batch = outputs[0].shape[0] // len(chunk)
            for row, (i, t) in enumerate(chunk):
                rows = slice(row * batch, (row + 1) * batch)
                values[i, STENCIL.index(t)] = self.value(tuple(Tensor.wrap(out.value[rows]) for out in outputs))
        return values

    def _stacked_run_and_inputs(self, kind: str, key: Any, stacked: np.ndarray) -> tuple[Run, tuple[Any, ...]]:
        """A frozen run and inputs for ``len(stacked)`` moves of one target, move after move
        along the batch axis; everything else tiled to match."""
        count, batch = len(stacked), self.inputs[0].shape[0]
        if count not in self._tiles:  # made once per size, shared by the runs of every target
            memory = self.point.memory
            self._tiles[count] = (
                None if memory is None else np.concatenate([memory] * count),
                tuple(np.concatenate([a] * count) for a in self.inputs),
            )
        memory, inputs = self._tiles[count]
        params = self.point.params
        if kind == "param":  # one copy of the moved tensor per batch row
            params = {**params, key: np.repeat(stacked, batch, axis=0)}
        elif kind == "memory":
            memory = stacked.reshape(count * batch, *stacked.shape[2:])
        else:
            inputs = tuple(
                stacked.reshape(count * batch, *stacked.shape[2:]) if i == key else a for i, a in enumerate(inputs)
            )
        return self.frozen_run(params, memory, count, per_row=kind == "param"), inputs


def _block_value(outputs: tuple[Any, ...], cotangent: list[np.ndarray]) -> Tensor:
    """<outputs, cotangent> summed over the block's output arrays (a Tensor, on the tape)."""
    total = None
    for out, u in zip(outputs, cotangent):
        term = ops.sum(ops.mul(out, u))
        total = term if total is None else ops.add(total, term)
    assert total is not None
    return total


def check_blockwise(
    point: Point, h: float, rtol: float, atol: float, seed: int, generic: bool, only: set[str] | None = None
) -> list[TensorResult]:
    """One seeded direction per target of every block (``only``: just the parameters named,
    in the blocks that hold them)."""
    eps = np.finfo(point.model.dtype).eps
    results = []
    for number, spec in enumerate(block_specs(point)):
        if only is not None and not only.intersection(spec[2]):
            continue
        block = Block(point, number, *spec, seed=seed, generic=generic)
        for name, kind, key, analytic_grad in block.targets:
            direction = block.rng.standard_normal(analytic_grad.shape)
            direction = (direction / np.linalg.norm(direction)).astype(point.model.dtype)
            if only is not None and name not in only:
                continue  # (its direction drawn all the same: the others' stay those of blockwise mode)
            numeric, sigma = difference_from_values(block.values_along(kind, key, direction, h), h)
            analytic = float(np.sum(analytic_grad * direction))
            probe = "direction" if only is None else "direction, its block alone"
            floor = eps * block.scale
            check = compare(name, block.where, probe, analytic, numeric, max(sigma, floor), h, rtol, atol)

            def values_at(
                step: float, block: Block = block, kind: str = kind, key: Any = key, direction: np.ndarray = direction
            ) -> list[float]:
                return block.values_along(kind, key, direction, step)

            check = confirmed(check, values_at, floor, h, rtol, atol)
            results.append(summarize(name, block.where, [check]))
    return results


def check_block_elements(
    point: Point, specs: list[Spec], number: int, h: float, rtol: float, atol: float, seed: int, generic: bool
) -> list[TensorResult]:
    """Every element of every target of one block."""
    eps = np.finfo(point.model.dtype).eps
    block = Block(point, number, *specs[number], seed=seed, generic=generic)
    results = []
    for name, kind, key, analytic_grad in block.targets:
        values = block.element_values(kind, key, h)
        # A batched run computes the unmoved point too: it must agree with the model's own
        # forward, or the differences would be those of another function.
        unmoved = values[:, STENCIL.index(0.0)]
        worst = int(np.argmax(np.abs(unmoved - block.f0)))
        limit = BATCHED_AGREEMENT * eps * block.scale
        if not abs(unmoved[worst] - block.f0) <= limit:
            check = Check(
                name, block.where, "unmoved point, batched run", block.f0, float(unmoved[worst]), 0.0, limit, "failed"
            )
            results.append(
                TensorResult(name, block.where, "failed", check, {**dict.fromkeys(STATUSES, 0), "failed": 1})
            )
            continue
        floor = eps * block.scale
        numeric, sigma = difference_from_values(values.T, h)

        def values_at(step: float, kind: str = kind, key: Any = key) -> np.ndarray:
            return block.element_values(kind, key, step).T

        numeric, sigma, steps = confirmed_elements(
            analytic_grad.reshape(-1), numeric, np.maximum(sigma, floor), values_at, h, rtol, atol, floor
        )
        results.append(summarize_elements(name, block.where, analytic_grad, numeric, sigma, steps, rtol, atol))
    return results
