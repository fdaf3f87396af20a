"""Check a model's hand-written gradients against finite differences.

The loss is L = sum(y * dy) for a seeded cotangent dy. For a tensor theta and a unit direction
v, the analytic directional derivative <dL/dtheta, v> is compared with the fourth-order
central difference of f(t) = L(theta + t v), under the noise-aware rule of
``lnref.finite_diff``: a check fails beyond atol + rtol |numeric| + 10 noise, and is
*unresolved* (never passed) when both values lie under 10 noise, the rounding noise of f
being estimated from the same five values (never below eps_machine * sum|y * dy|). A layer's
parameter left unresolved by a check of the whole model is checked again with its layer on its
own (blockwise); a parameter whose gradient is zero by the structure of attention (the key
biases) and that stays unresolved is reported as such, never as passed.

Smoothness. ReLU has kinks; a move can push a unit across zero and spoil any difference
quotient. The checker records every ReLU's on/off pattern at the point and evaluates f(t)
with that pattern held: the piece of the network that contains the point, where function and
gradient are those of the real network (``point.py``).

Modes:
    directional  one seeded direction per tensor (every parameter, the input, the memory)
    entries      k sampled elements per tensor
    blockwise    each block (embedding stage, layer, readout) on its own: the VJP of the block
                 (its parameters and its input states) against a random cotangent on its
                 output, one seeded direction per tensor (``blocks.py``)
    full         every element of every tensor, block by block as in blockwise mode
Every tensor has its own seeded probes. In directional and entries mode the tensors whose moves
re-run the same stages (a layer's parameters, say) share batched runs: the moved states stacked
along the batch axis go through the layers above once for all of them. These groups (and the
blocks) are independent, so forked workers share them out and the report is the same, bit for
bit, for any number of workers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lnref.finite_diff import DEFAULTS, STATUSES, STENCIL, difference_from_values, step_and_rtol
from lnref.gradcheck.blocks import block_specs, check_block_elements, check_blockwise
from lnref.gradcheck.lm import gradcheck_lm
from lnref.gradcheck.point import Point, jitter_params
from lnref.gradcheck.report import Check, Report, TensorResult, compare, confirmed, layers_text, summarize
from lnref.gradcheck.vjp import check_vjp
from lnref.nn import ZERO_BY_STRUCTURE
from lnref.process.workers import available_cpus, map_in_order

__all__ = [
    "DEFAULTS",
    "STATUSES",
    "Check",
    "Report",
    "TensorResult",
    "check_vjp",
    "default_workers",
    "gradcheck",
    "gradcheck_lm",
    "jitter_params",
]

MODES = ("directional", "blockwise", "entries", "full")
# Directional and entries modes: probes (of one run group's tensors) whose moves share a run.
PROBES_PER_RUN = 16
# Directional and entries modes: tensors x layers (a measure of the check's work, whose runs
# grow with both) from which the checks run in forked workers unless told otherwise.
PARALLEL_LAYER_RUNS = 16_000

Progress = Callable[[str], None] | None


def default_workers() -> int:
    """The CPUs this process may run on."""
    return available_cpus()


def probes(rng: np.random.Generator, shape: tuple[int, ...], mode: str, entries: int) -> list[tuple[str, np.ndarray]]:
    """The moves to try for one tensor: (label, unit direction) pairs."""
    size = int(np.prod(shape))
    if mode in ("directional", "blockwise"):
        direction = rng.standard_normal(shape)
        return [("direction", direction / np.linalg.norm(direction))]
    flat = rng.choice(size, size=min(entries, size), replace=False) if mode == "entries" else range(size)
    found = []
    for i in flat:
        unit = np.zeros(size)
        unit[i] = 1.0
        found.append((str(tuple(int(j) for j in np.unravel_index(i, shape))), unit.reshape(shape)))
    return found


def _check_group(
    point: Point, group: list[tuple[int, str]], mode: str, entries: int, h: float, rtol: float, atol: float, seed: int
) -> list[TensorResult]:
    """The checks of the tensors ``group`` (index, name) whose moves re-run the same stages
    (``Point.run_group``): their probes, PROBES_PER_RUN at a time, share one batched run."""
    eps = np.finfo(point.model.dtype).eps
    floor = eps * point.scale
    probed = [
        (index, name, label, direction.astype(point.grads[name].dtype))
        for index, name in group
        for label, direction in probes(np.random.default_rng([seed, 3, index]), point.grads[name].shape, mode, entries)
    ]
    checks: dict[str, list[Check]] = {name: [] for _, name in group}
    for first in range(0, len(probed), PROBES_PER_RUN):
        piece = probed[first : first + PROBES_PER_RUN]
        moves = [(name, t * h * direction) for _, name, _, direction in piece for t in STENCIL]
        values = point.losses(moves).reshape(len(piece), len(STENCIL))
        for (_, name, label, direction), row in zip(piece, values):
            numeric, sigma = difference_from_values(row, h)
            analytic = float(np.sum(point.grads[name] * direction))
            check = compare(name, point.where(name), label, analytic, numeric, max(sigma, floor), h, rtol, atol)

            def values_at(step: float, name: str = name, direction: np.ndarray = direction) -> list[float]:
                return list(point.losses([(name, t * step * direction) for t in STENCIL]))

            checks[name].append(confirmed(check, values_at, floor, h, rtol, atol))
    return [summarize(name, point.where(name), checks[name]) for _, name in group]


def _check_tolerances(h: float, rtol: float, atol: float) -> None:
    for label, value in (("step", h), ("rtol", rtol), ("atol", atol)):
        if not (math.isfinite(value) and value >= 0) or (label == "step" and value == 0):
            bound = "> 0" if label == "step" else ">= 0"
            raise ValueError(f"gradcheck: {label} must be finite and {bound}, got {value}")


def _recheck_unresolved(
    at: Point, results: list[TensorResult], h: float, rtol: float, atol: float, seed: int, generic: bool
) -> list[TensorResult]:
    """The layers' parameters that a check of the whole model left unresolved, checked again with
    their layer on its own (blockwise): below the top of a deep stack the gradient of the
    whole loss can lie under the noise of the whole loss, while the layer's own VJP does not."""
    unresolved = {r.tensor for r in results if r.status == "unresolved" and at.model.layer_of(r.tensor) is not None}
    if not unresolved:
        return results
    rechecked = {r.tensor: r for r in check_blockwise(at, h, rtol, atol, seed, generic, only=unresolved)}
    return [rechecked.get(r.tensor, r) for r in results]


def _zero_by_structure(model: Any, result: TensorResult) -> TensorResult:
    structural = any(result.tensor.endswith("." + suffix) for suffix in ZERO_BY_STRUCTURE)
    if result.status == "unresolved" and structural and model.layer_of(result.tensor) is not None:
        result.status = "zero"
    return result


def gradcheck(
    model: Any,
    mode: str = "directional",
    point: str = "generic",
    batch: int = 2,
    seq: int = 8,
    memory_len: int | None = None,
    entries: int = 4,
    step: float | None = None,
    rtol: float | None = None,
    atol: float = 0.0,
    seed: int | None = None,
    progress: Progress = None,
    workers: int | None = None,
    hold_stop_gradients: bool = True,
) -> Report:
    """Check every gradient of ``model`` (all parameters, the input, the memory).

    ``hold_stop_gradients`` (default): a stop-gradient's value is held at the point, so the
    finite differences are those of the function whose derivative the tape computes (the
    surrogate); False checks the function itself, which the tape's gradient does not follow
    where a stop-gradient acts. ``workers``: forked processes that share the checks out in directional, entries and full
    mode (the report is the same for any number); by default the CPUs available, except for
    directional and entries checks of small models (under ``PARALLEL_LAYER_RUNS`` tensors times
    layers), which run in this process. Returns a ``Report``; ``report.ok`` is False when any
    check failed.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if point not in ("generic", "init"):
        raise ValueError(f"unknown point {point!r}; valid: generic, init")
    h, rtol = step_and_rtol(model.config.dtype, step, rtol)
    _check_tolerances(h, rtol, atol)
    seed = model.config.seed if seed is None else seed
    started = time.perf_counter()
    x, dy, memory = model.sample_inputs(batch=batch, seq=seq, memory_len=memory_len, seed=seed)
    params = model.params if point == "init" else jitter_params(model.params, seed)
    if progress:
        progress(f"gradcheck: {model.config.scheme}, {layers_text(model.config)}, {len(params)} tensors, {mode} mode")
    at = Point(model, params, x, dy, memory, hold_stop_gradients)
    generic = point == "generic"
    if mode == "blockwise":
        results = check_blockwise(at, h, rtol, atol, seed, generic)
    elif mode == "full":
        specs = block_specs(at)

        def check_block(number: int) -> list[TensorResult]:
            return check_block_elements(at, specs, number, h, rtol, atol, seed, generic)

        results = []
        blocks = map_in_order(check_block, range(len(specs)), default_workers() if workers is None else workers)
        for done, block_results in enumerate(blocks, start=1):
            results.extend(block_results)
            if progress and done % 8 == 0:
                progress(f"  {done} of {len(specs)} blocks checked")
    else:
        names = list(params) + list(model.input_names) + (["memory"] if memory is not None else [])
        if workers is None:
            # Forking and feeding workers pays only when the checks re-run many layers.
            many = len(names) * model.n_blocks >= PARALLEL_LAYER_RUNS
            workers = default_workers() if many else 1

        grouped: dict[str | int, list[tuple[int, str]]] = {}
        for index, name in enumerate(names):
            grouped.setdefault(at.run_group(name), []).append((index, name))

        def check_group(group: list[tuple[int, str]]) -> list[TensorResult]:
            return _check_group(at, group, mode, entries, h, rtol, atol, seed)

        found = {r.tensor: r for rs in map_in_order(check_group, grouped.values(), workers) for r in rs}
        results = [found[name] for name in names]
        results = _recheck_unresolved(at, results, h, rtol, atol, seed, generic)
    results = [_zero_by_structure(model, result) for result in results]
    seconds = time.perf_counter() - started
    return Report(model.config.to_dict(), mode, point, h, rtol, atol, results, seconds, held=at.held)
