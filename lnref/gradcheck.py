"""Check a model's hand-written gradients against finite differences.

The loss is L = sum(y * dy) for a seeded cotangent dy. For a tensor theta and a unit
direction v, the analytic directional derivative <dL/dtheta, v> is compared with the
fourth-order central difference

    D(h) = [8 (f(h) - f(-h)) - (f(2h) - f(-2h))] / (12 h),     f(t) = L(theta + t v).

Tolerance that means something. Rounding makes each f(t) noisy with some standard
deviation sigma; D inherits sigma * sqrt(130) / (12 h). sigma is estimated from the same five
values: the fourth difference f(2h) - 4 f(h) + 6 f(0) - 4 f(-h) + f(-2h) is pure noise for
a smooth f (its smooth part is O(h^4 f'''')), with standard deviation sqrt(70) sigma; sigma
is never taken below eps_machine * sum|y * dy|. A check passes when

    |analytic - numeric| <= atol + rtol * |numeric| + 10 * noise,

and is *unresolved* (never passed) when both values lie under 10 * noise: a vanishing
gradient cannot be told from a wrong one there; blockwise mode resolves it.

Smoothness. ReLU has kinks; a perturbation can push a unit across zero and spoil any
difference quotient. The checker records every ReLU's on/off pattern at the point and
evaluates f(t) with that pattern frozen: the piece of the network that contains the point,
where function and gradient are those of the real network.

Structure. The model's per-layer states are kept, so a perturbation of layer l's
parameters re-runs only layers l..L, and the moves of one tensor share a batched run (the
moved states stacked along the batch axis). Modes:
    directional  one seeded direction per tensor (every parameter, the input, the memory)
    entries      k sampled elements per tensor
    blockwise    each block (embedding stage, layer, readout) on its own: the VJP of the
                 block (its parameters and its input states) against a random cotangent on
                 its output, one seeded direction per tensor, so lower layers of deep
                 Post-LN are checked as sharply as the top
    full         every element of every tensor, block by block as in blockwise mode. The
                 moves of one element (and of many elements) run together: states and the
                 memory stacked along the batch axis, FFN weights as one moved copy per batch
                 row (``linear`` accepts per-row weights); the other parameters are moved in
                 place, one run per move. Blocks are shared out among forked worker processes
                 (as are the tensors of directional and entries checks of big models).
"""

from __future__ import annotations

import gc
import json
import math
import multiprocessing
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from lnref.process import blas
from lnref.process.allocator import return_freed_memory
from lnref.autograd import Tape, Tensor, kernels, ops

STATUSES = ("passed", "failed", "unresolved")
NOISE_FACTOR = 10.0  # a difference this many noise standard deviations away is not noise
KEY_BIAS = ".bk"  # attention key biases: gradient exactly zero (softmax shift invariance)
JITTER = 0.1  # generic point: each tensor moves by JITTER * rms(tensor) * N(0, 1)
DEFAULTS = {  # dtype -> (step h along a unit direction, rtol)
    "float64": (1e-3, 1e-7),
    "float32": (3e-2, 1e-2),
}


@dataclass
class Check:
    """One comparison of an analytic and a numeric derivative."""

    tensor: str
    where: str  # "layer 3", "stack", "input"
    probe: str  # "direction" or the element index
    analytic: float
    numeric: float
    noise: float
    tolerance: float
    status: str

    @property
    def error(self):
        return abs(self.analytic - self.numeric)

    @property
    def ratio(self):
        return self.error / self.tolerance if self.tolerance > 0 else math.inf


@dataclass
class TensorResult:
    tensor: str
    where: str
    status: str
    worst: Check
    counts: dict = field(default_factory=dict)


@dataclass
class Report:
    config: dict
    mode: str
    point: str
    step: float
    rtol: float
    atol: float
    results: list
    seconds: float = 0.0

    @property
    def counts(self):
        return {status: sum(r.status == status for r in self.results) for status in STATUSES}

    @property
    def check_counts(self):
        """Counts over single checks (one per element in full and entries modes)."""
        return {status: sum(r.counts.get(status, 0) for r in self.results) for status in STATUSES}

    @property
    def ok(self):
        return self.counts["failed"] == 0

    def summary(self):
        counts = self.counts
        line = f"{counts['passed']} passed, {counts['failed']} failed"
        return line + (f", {counts['unresolved']} unresolved" if counts["unresolved"] else "")

    def by_place(self):
        places = {}
        for result in self.results:
            places.setdefault(result.where, []).append(result)
        return places

    def to_text(self, worst=5):
        cfg = self.config
        lines = [
            f"gradcheck {cfg['scheme']}: {cfg['n_layers']} layers, d_model {cfg['d_model']}, "
            f"{cfg['n_heads']} heads, d_ff {cfg['d_ff']}, {cfg['norm']}, {cfg['activation']}, "
            f"{cfg['dtype']}; mode {self.mode}, at {self.point}, step {self.step:g}, "
            f"rtol {self.rtol:g}, atol {self.atol:g}",
            "",
            f"{'where':10s} {'tensors':>7s} {'worst err/tol':>14s}  status",
        ]
        for where, results in self.by_place().items():
            worst_ratio = max(r.worst.ratio for r in results)
            statuses = [r.status for r in results]
            status = next((s for s in ("failed", "unresolved") if s in statuses), "passed")
            if status != "passed":
                status += f" ({statuses.count(status)})"
            lines.append(f"{where:10s} {len(results):7d} {worst_ratio:14.3g}  {status}")
        offenders = sorted(self.results, key=lambda r: -r.worst.ratio)[:worst]
        lines += ["", "worst offenders (error / tolerance):"]
        for r in offenders:
            c = r.worst
            lines.append(
                f"  {r.tensor} [{c.probe}] {r.status}: analytic {c.analytic:.12g} numeric {c.numeric:.12g} "
                f"error {c.error:.3g} tolerance {c.tolerance:.3g} noise {c.noise:.3g}"
            )
        unresolved = [r.tensor for r in self.results if r.status == "unresolved"]
        key_biases = [name for name in unresolved if name.endswith(KEY_BIAS)]
        if key_biases:
            lines.append(f"  {len(key_biases)} unresolved key biases (*{KEY_BIAS}): their gradient is exactly "
                         "zero, since adding q.bk to every score of a query leaves the softmax unchanged")
        if len(unresolved) > len(key_biases):
            hint = "" if self.mode in ("blockwise", "full") else "; --mode blockwise checks each layer on its own"
            lines.append(f"  {len(unresolved) - len(key_biases)} other unresolved: analytic and numeric both "
                         f"under the finite-difference noise floor{hint}")
        lines += ["", f"{self.seconds:.1f} s"]
        if self.mode in ("entries", "full"):
            checks = self.check_counts
            lines.append(f"elements: {sum(checks.values())} checked, {checks['passed']} passed, "
                         f"{checks['failed']} failed, {checks['unresolved']} unresolved")
            if checks["unresolved"]:
                lines.append("  (an unresolved element has analytic and numeric values both under the noise "
                             "floor, as exactly-zero gradients do: key biases, ReLU units off for every token)")
        lines.append(self.summary())
        return "\n".join(lines)

    def to_json(self):
        document = {
            "config": self.config,
            "mode": self.mode,
            "point": self.point,
            "step": self.step,
            "rtol": self.rtol,
            "atol": self.atol,
            "seconds": self.seconds,
            "counts": self.counts,
            "check_counts": self.check_counts,
            "ok": self.ok,
            "summary": self.summary(),
            "tensors": [
                {"tensor": r.tensor, "where": r.where, "status": r.status, "counts": r.counts,
                 "worst": {**asdict(r.worst), "error": r.worst.error, "ratio": r.worst.ratio}}
                for r in self.results
            ],
        }
        return json.dumps(document, indent=1, default=float)


# ----- finite differences ------------------------------------------------------------------

STENCIL = (-2.0, -1.0, 0.0, 1.0, 2.0)  # in units of the step h


def central_difference(f, h, f0):
    """(D, sigma): the 4th-order central difference of f at 0 and the estimated std of f."""
    return difference_from_values((f(-2 * h), f(-h), f0, f(h), f(2 * h)), h)


def difference_from_values(values, h):
    """(D, sigma) from f at the STENCIL points -2h, -h, 0, h, 2h."""
    fm2, fm1, f0, f1, f2 = values
    derivative = (8.0 * (f1 - fm1) - (f2 - fm2)) / (12.0 * h)
    fourth = f2 - 4.0 * f1 + 6.0 * f0 - 4.0 * fm1 + fm2
    return derivative, abs(fourth) / math.sqrt(70.0)


def judge(analytic, numeric, sigma, h, rtol, atol):
    """(noise, tolerance, status) for analytic/numeric pairs; arrays or numbers.

    The one rule of the module docstring: failed beyond atol + rtol |numeric| + 10 noise (or
    not finite), unresolved when both values lie under 10 noise, else passed. ``status`` holds
    indices into STATUSES.
    """
    analytic, numeric = np.asarray(analytic, dtype=float), np.asarray(numeric, dtype=float)
    noise = np.asarray(sigma, dtype=float) * math.sqrt(130.0) / (12.0 * h)
    floor = NOISE_FACTOR * noise
    tolerance = atol + rtol * np.abs(numeric) + floor
    with np.errstate(invalid="ignore"):
        failed = ~(np.isfinite(analytic) & np.isfinite(numeric)) | ~(np.abs(analytic - numeric) <= tolerance)
        unresolved = ~failed & (np.maximum(np.abs(analytic), np.abs(numeric)) <= floor)
    status = np.where(failed, STATUSES.index("failed"),
                      np.where(unresolved, STATUSES.index("unresolved"), STATUSES.index("passed")))
    return noise, tolerance, status


def compare(tensor, where, probe, analytic, numeric, sigma, h, rtol, atol):
    """Judge one analytic/numeric pair against the noise floor (see ``judge``)."""
    noise, tolerance, status = judge(analytic, numeric, sigma, h, rtol, atol)
    return Check(tensor, where, probe, float(analytic), float(numeric), float(noise), float(tolerance),
                 STATUSES[int(status)])


def summarize(tensor, where, checks):
    statuses = [c.status for c in checks]
    if "failed" in statuses:
        status = "failed"
    elif "passed" in statuses:
        status = "passed"
    else:
        status = "unresolved"
    worst = max(checks, key=lambda c: (c.status == "failed", c.ratio))
    return TensorResult(tensor, where, status, worst, {s: statuses.count(s) for s in STATUSES})


def summarize_elements(tensor, where, analytic, numeric, sigma, h, rtol, atol):
    """``summarize`` for one check per element of a tensor, judged at once: the counts and
    the worst element (only that one becomes a ``Check``)."""
    shape = np.shape(analytic)
    analytic = np.asarray(analytic, dtype=float).reshape(-1)
    noise, tolerance, status = judge(analytic, numeric, sigma, h, rtol, atol)
    counts = {s: int(np.count_nonzero(status == i)) for i, s in enumerate(STATUSES)}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(tolerance > 0, np.abs(analytic - numeric) / tolerance, np.inf)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    failed = status == STATUSES.index("failed")
    worst = int(np.argmax(np.where(failed, ratio, -np.inf) if failed.any() else ratio))
    index = tuple(int(j) for j in np.unravel_index(worst, shape))
    check = Check(tensor, where, str(index), float(analytic[worst]), float(numeric[worst]), float(noise[worst]),
                  float(tolerance[worst]), STATUSES[int(status[worst])])
    overall = "failed" if counts["failed"] else "passed" if counts["passed"] else "unresolved"
    return TensorResult(tensor, where, overall, check, counts)


def _probes(rng, shape, mode, entries):
    """The perturbations to try for one tensor: (label, unit direction) pairs."""
    size = int(np.prod(shape))
    if mode in ("directional", "blockwise"):
        direction = rng.standard_normal(shape)
        return [("direction", direction / np.linalg.norm(direction))]
    if mode == "entries":
        flat = rng.choice(size, size=min(entries, size), replace=False)
    else:  # full
        flat = range(size)
    probes = []
    for i in flat:
        unit = np.zeros(size)
        unit[i] = 1.0
        index = tuple(int(j) for j in np.unravel_index(i, shape))
        probes.append((str(index), unit.reshape(shape)))
    return probes


def jitter_params(params, seed):
    """The generic point: every tensor moved by JITTER * rms * N(0, 1) (rms 1 for zeros)."""
    rng = np.random.default_rng([seed, 2])
    jittered = {}
    for name, value in params.items():
        rms = float(np.sqrt(np.mean(np.square(value)))) if value.size else 0.0
        scale = JITTER * (rms if rms > 0 else 1.0)
        jittered[name] = (value + scale * rng.standard_normal(value.shape)).astype(value.dtype)
    return jittered


# ----- the evaluator ----------------------------------------------------------------------

class _UseRecorder(dict):
    """A parameter dict that remembers which names were read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.seen = set()

    def __getitem__(self, name):
        self.seen.add(name)
        return super().__getitem__(name)


class _Evaluator:
    """The loss of the model at its check point, re-running only what a change affects."""

    def __init__(self, model, params, x, dy, memory):
        self.model, self.params, self.x, self.dy, self.memory = model, params, x, dy, memory
        self.n_layers = model.config.n_layers
        self.relu_masks = {}
        self.grads, _, tensor_states = model.gradients(
            x, dy, memory, params=params, relu_masks=self.relu_masks, keep_states=True)
        self.states = [tuple(t.value for t in state) for state in tensor_states]
        self.scale = self._loss_scale()
        self.embed_params, self.readout_params = self._stage_params()
        self.per_row_params = model.per_row_params
        self._tiles = {}  # (what, count) -> tiled array, reused by every run of that size

    def _loss_scale(self):
        y = self.model.readout(self.frozen_run(self.params), self.states[-1]).value
        return float(np.abs(y * self.dy).sum())

    def frozen_run(self, params, memory=None):
        """A run with the ReLU patterns of the check point frozen (see the module docstring)."""
        memory = self.memory if memory is None else memory
        return self.model.run(params=params, memory=memory, relu_masks=self.relu_masks, freeze=True)

    def _stage_params(self):
        recorder = _UseRecorder(self.params)
        self.model.embed(self.frozen_run(recorder), self.x)
        embed = set(recorder.seen)
        recorder.seen.clear()
        self.model.readout(self.frozen_run(recorder), self.states[-1])
        return embed, set(recorder.seen)

    def start_of(self, name):
        """The first layer a change of ``name`` affects (n_layers: only the readout)."""
        if name.startswith("layers."):
            return int(name.split(".")[1])
        if name in self.readout_params and name not in self.embed_params:
            return self.n_layers
        return -1  # the input, the memory, embedding-stage parameters: everything

    def losses(self, name, moves):
        """The loss with ``name`` (a parameter, "input" or "memory") moved by each of ``moves``.

        Only layer ``start_of(name)`` needs its own run per move; from there on the moved
        states are stacked along the batch axis and the rest of the stack runs once for all
        of them (every op treats batch rows independently), which cuts the Python work of a
        finite difference several times over.
        """
        count, model, start = len(moves), self.model, self.start_of(name)
        params, memory = self.params, self.tiled("memory", count)
        run = self._batched_run(count, memory)
        if name == "input":
            y, _ = model.forward(run, np.concatenate([self.x + move for move in moves]))
        elif name == "memory":
            memory = np.concatenate([self.memory + move for move in moves])
            y, _ = model.forward(self._batched_run(count, memory), self.tiled("x", count))
        else:
            moved_runs = [self.frozen_run({**params, name: params[name] + move}) for move in moves]
            if start < 0:
                states = [model.embed(moved, self.x) for moved in moved_runs]
                y, _ = model.forward(run, state=_stack(states), start=0)
            elif start == self.n_layers:
                y = Tensor.wrap(np.concatenate([model.readout(moved, self.states[-1]).value for moved in moved_runs]))
            else:
                states = [model.layer(moved, start, self.states[start]) for moved in moved_runs]
                y, _ = model.forward(run, state=_stack(states), start=start + 1)
        products = y.value * self.tiled("dy", count)
        return products.reshape(count, -1).sum(axis=1)

    def tiled(self, what, count):
        """``count`` copies of the point's x, dy, memory or ReLU masks along the batch axis,
        made once per size: the many batched runs of a check share them."""
        key = (what, count)
        if key not in self._tiles:
            if what == "masks":
                self._tiles[key] = {layer: _tiled(mask, count) for layer, mask in self.relu_masks.items()}
            else:
                self._tiles[key] = _tiled(getattr(self, what), count)
        return self._tiles[key]

    def _batched_run(self, count, memory):
        return self.model.run(params=self.params, memory=memory, relu_masks=self.tiled("masks", count), freeze=True)


def _tiled(array, count):
    return None if array is None else np.concatenate([array] * count)


def _stack(states):
    """Concatenate per-move states (tuples of Tensors) stream by stream along the batch axis."""
    return tuple(Tensor.wrap(np.concatenate([state[j].value for state in states])) for j in range(len(states[0])))


def _grad(tensor):
    return tensor.grad if tensor.grad is not None else np.zeros_like(tensor.value)


def _where(name, evaluator):
    if name in ("input", "memory"):
        return "input"
    start = evaluator.start_of(name)
    return f"layer {start}" if 0 <= start < evaluator.n_layers else "stack"


# ----- the checks -------------------------------------------------------------------------

CHUNK = 8  # elements whose finite differences share one batched run in entries/full mode
# Directional and entries modes: tensors x layers from which the checks run in forked
# workers unless told otherwise (every tensor's checks re-run the layers above it).
PARALLEL_LAYER_RUNS = 4_000


def _check_global(evaluator, names, mode, entries, h, rtol, atol, seed, workers):
    """Each tensor of ``names`` along its seeded probes (one direction, or sampled elements).
    Tensors are independent (each has its own seeded probes), so with ``workers`` > 1 forked
    processes share them out and the report is the same, bit for bit."""
    def check_tensor(index):
        return _check_one_tensor(evaluator, index, names[index], mode, entries, h, rtol, atol, seed)

    return list(_in_order(check_tensor, range(len(names)), workers))


def _check_one_tensor(evaluator, index, name, mode, entries, h, rtol, atol, seed):
    eps = np.finfo(evaluator.model.dtype).eps
    analytic_grad = evaluator.grads[name]
    where = _where(name, evaluator)
    probes = _probes(np.random.default_rng([seed, 3, index]), analytic_grad.shape, mode, entries)
    checks = []
    for first in range(0, len(probes), CHUNK):
        chunk = [(label, direction.astype(analytic_grad.dtype)) for label, direction in probes[first:first + CHUNK]]
        moves = [t * h * direction for _, direction in chunk for t in STENCIL]
        values = evaluator.losses(name, moves).reshape(len(chunk), len(STENCIL))
        for (label, direction), row in zip(chunk, values):
            numeric, sigma = difference_from_values(row, h)
            sigma = max(sigma, eps * evaluator.scale)
            analytic = float(np.sum(analytic_grad * direction))
            checks.append(compare(name, where, label, analytic, numeric, sigma, h, rtol, atol))
    return summarize(name, where, checks)


class _Block:
    """One block of the stack (the embedding stage, a layer or the readout) checked on its own.

    The block's value is <u, stage(inputs)> for a seeded random cotangent u on its outputs.
    At a generic point its input states are jittered as well: deep stacks can drive the
    tokens of a state together (attention averages them), where some terms of a layer's VJP
    vanish. Its ReLU patterns are recorded at its own input and frozen for every finite
    difference. ``targets`` lists what is moved: (name, kind, key, analytic gradient) with
    kind "param" (key: the parameter's name), "input" (key: the stream's index) or "memory".
    """

    def __init__(self, evaluator, number, label, where, names, stage, inputs, layer_index, seed, generic):
        model, params, memory = evaluator.model, evaluator.params, evaluator.memory
        self.evaluator, self.label, self.where, self.stage = evaluator, label, where, stage
        self.rng = np.random.default_rng([seed, 4, number])
        if generic:
            inputs = tuple(jitter_params({"state": a}, seed + number + 1)["state"] for a in inputs)
        self.inputs, self.layer_index = inputs, layer_index
        self.uses_memory = memory is not None and layer_index is not None
        self.relu_masks, self._tiles = {}, {}
        stage(model.run(params=params, memory=memory, relu_masks=self.relu_masks), inputs)  # records them
        base_outputs = stage(self.frozen_run(params), inputs)
        self.cotangent = [self.rng.standard_normal(out.shape).astype(model.dtype) for out in base_outputs]
        self.scale = float(sum(np.abs(out.value * u).sum() for out, u in zip(base_outputs, self.cotangent)))
        self.f0 = self.value(base_outputs)

        # Analytic: the tape over this block alone, with its inputs (and the memory) as leaves.
        leaves = {n: Tensor(params[n], requires_grad=True) for n in names}
        input_leaves = tuple(Tensor(a, requires_grad=True) for a in inputs)
        memory_leaf = Tensor(memory, requires_grad=True) if self.uses_memory else None
        with Tape() as tape:  # the real ReLU here: its VJP is part of what is checked
            run = model.run(params={**params, **leaves}, memory=memory_leaf if self.uses_memory else memory)
            total = _block_value(stage(run, input_leaves), self.cotangent)
        tape.backward(total)
        self.targets = [(n, "param", n, _grad(leaves[n])) for n in names]
        for j, leaf in enumerate(input_leaves):
            name = f"{label}.input" + (f".{j}" if len(inputs) > 1 else "")
            self.targets.append((name, "input", j, _grad(leaf)))
        if self.uses_memory:
            self.targets.append((f"{label}.memory", "memory", None, _grad(memory_leaf)))

    def frozen_run(self, params, memory=None, relu_masks=None):
        memory = self.evaluator.memory if memory is None else memory
        relu_masks = self.relu_masks if relu_masks is None else relu_masks
        return self.evaluator.model.run(params=params, memory=memory, relu_masks=relu_masks, freeze=True)

    def value(self, outputs):
        """<u, outputs> as a float: the block's scalar, the same sum for every evaluation."""
        return float(sum(np.vdot(out.value, u) for out, u in zip(outputs, self.cotangent)))

    def values_along(self, kind, key, direction, h):
        """The block's value at the STENCIL points along ``direction`` (one target)."""
        params, memory, inputs = self.evaluator.params, self.evaluator.memory, self.inputs
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

    def element_values(self, kind, key, h):
        """(size, 5): the block's value at the STENCIL points along every element of a target.

        Moved states and memories, and moved parameters that the model accepts one per batch
        row (``Model.per_row_params``), are stacked along the batch axis: one run for many
        moves. Other parameters get one run per move, the moved tensor edited in place.
        """
        if kind == "param" and key not in self.evaluator.per_row_params:
            return self._looped_element_values(key, h)
        return self._stacked_element_values(kind, key, h)

    def _looped_element_values(self, name, h):
        params = self.evaluator.params
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

    def _stacked_element_values(self, kind, key, h):
        if kind == "param":
            base = self.evaluator.params[key]
        else:
            base = self.evaluator.memory if kind == "memory" else self.inputs[key]
        moves = [(i, t) for i in range(base.size) for t in STENCIL]
        values = np.empty((base.size, len(STENCIL)))
        for first in range(0, len(moves), STACKED_MOVES):
            chunk = moves[first:first + STACKED_MOVES]
            stacked = np.repeat(base[None], len(chunk), axis=0)
            for row, (i, t) in enumerate(chunk):
                stacked[row].flat[i] += t * h
            outputs = self.stage(*self._stacked_run_and_inputs(kind, key, stacked))
            batch = outputs[0].shape[0] // len(chunk)
            for row, (i, t) in enumerate(chunk):
                rows = slice(row * batch, (row + 1) * batch)
                values[i, STENCIL.index(t)] = self.value([Tensor.wrap(out.value[rows]) for out in outputs])
        return values

    def _stacked_run_and_inputs(self, kind, key, stacked):
        """A frozen run and inputs for ``len(stacked)`` moves of one target, move after move
        along the batch axis; everything else tiled to match."""
        count, batch = len(stacked), self.inputs[0].shape[0]
        if count not in self._tiles:  # made once per size, shared by the runs of every target
            self._tiles[count] = ({layer: _tiled(mask, count) for layer, mask in self.relu_masks.items()},
                                  _tiled(self.evaluator.memory, count), tuple(_tiled(a, count) for a in self.inputs))
        masks, memory, inputs = self._tiles[count]
        params = self.evaluator.params
        if kind == "param":  # one copy of the moved tensor per batch row
            params = {**params, key: np.repeat(stacked, batch, axis=0)}
        elif kind == "memory":
            memory = stacked.reshape(count * batch, *stacked.shape[2:])
        else:
            inputs = tuple(stacked.reshape(count * batch, *stacked.shape[2:]) if i == key else a
                           for i, a in enumerate(inputs))
        return self.frozen_run(params, memory, masks), inputs


STACKED_MOVES = 200  # moves (element, stencil point) per batched run in full mode
BATCHED_AGREEMENT = 64  # |batched f(0) - f(0)| allowed, in units of eps * sum|outputs * u|


def _block_specs(evaluator):
    """(label, where, parameter names, stage, input states, layer index) for every block of
    the stack, in order: the embedding stage (if it has parameters), each layer, the readout.
    ``stage(run, inputs)`` maps the block's input arrays/Tensors to its output tuple."""
    model, n_layers = evaluator.model, evaluator.n_layers
    specs = []
    if evaluator.embed_params:
        specs.append(("embed", "stack", sorted(evaluator.embed_params),
                      lambda run, inputs: model.embed(run, inputs[0]), (evaluator.x,), None))
    for index in range(n_layers):
        names = [n for n in evaluator.params if n.startswith(f"layers.{index}.")]
        specs.append((f"layers.{index}", f"layer {index}", names,
                      lambda run, inputs, index=index: model.layer(run, index, inputs),
                      evaluator.states[index], index))
    readout_only = sorted(evaluator.readout_params - evaluator.embed_params)
    specs.append(("readout", "stack", readout_only,
                  lambda run, inputs: (model.readout(run, inputs),), evaluator.states[-1], None))
    return specs


def _block_value(outputs, cotangent):
    """<outputs, cotangent> summed over the block's output arrays (a Tensor, on the tape)."""
    total = None
    for out, u in zip(outputs, cotangent):
        term = ops.sum(ops.mul(out, u))
        total = term if total is None else ops.add(total, term)
    return total


def _check_blockwise(evaluator, h, rtol, atol, seed, generic):
    """One seeded direction per target of every block."""
    dtype = evaluator.model.dtype
    eps = np.finfo(dtype).eps
    results = []
    for number, spec in enumerate(_block_specs(evaluator)):
        block = _Block(evaluator, number, *spec, seed=seed, generic=generic)
        for name, kind, key, analytic_grad in block.targets:
            direction = block.rng.standard_normal(analytic_grad.shape)
            direction = (direction / np.linalg.norm(direction)).astype(dtype)
            numeric, sigma = difference_from_values(block.values_along(kind, key, direction, h), h)
            analytic = float(np.sum(analytic_grad * direction))
            check = compare(name, block.where, "direction", analytic, numeric, max(sigma, eps * block.scale),
                            h, rtol, atol)
            results.append(summarize(name, block.where, [check]))
    return results


def _check_block_elements(evaluator, specs, number, h, rtol, atol, seed, generic):
    """Every element of every target of one block: a list of TensorResults."""
    eps = np.finfo(evaluator.model.dtype).eps
    block = _Block(evaluator, number, *specs[number], seed=seed, generic=generic)
    results = []
    for name, kind, key, analytic_grad in block.targets:
        values = block.element_values(kind, key, h)
        # A batched run computes the unmoved point too: it must agree with the model's own
        # forward, or the differences would be those of another function.
        unmoved = values[:, STENCIL.index(0.0)]
        worst = int(np.argmax(np.abs(unmoved - block.f0)))
        limit = BATCHED_AGREEMENT * eps * block.scale
        if not abs(unmoved[worst] - block.f0) <= limit:
            check = Check(name, block.where, "unmoved point, batched run", block.f0, float(unmoved[worst]), 0.0,
                          limit, "failed")
            results.append(TensorResult(name, block.where, "failed", check, {**dict.fromkeys(STATUSES, 0), "failed": 1}))
            continue
        numeric, sigma = difference_from_values(values.T, h)
        results.append(summarize_elements(name, block.where, analytic_grad, numeric,
                                          np.maximum(sigma, eps * block.scale), h, rtol, atol))
    return results


_FORKED_WORK = None  # the function forked workers apply: set just before the fork


def _forked_work(item):
    return _FORKED_WORK(item)


def _in_order(work, items, workers):
    """``work(item)`` for each of ``items``, yielded in order: here, or with ``workers`` > 1
    shared out among that many forked processes.

    The workers are forked after the point's analytic pass, so they start with the kernels
    compiled and the evaluator's states in memory; only the items and the results cross
    between processes. ``work`` must not depend on what another item did.
    """
    global _FORKED_WORK
    items = list(items)
    if workers <= 1 or len(items) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for item in items:
            yield work(item)
        return
    # What the workers would copy page by page as they write: the garbage a first run's
    # compilation leaves in reference cycles, the memory the heap keeps free, and the objects
    # a collection in a worker would walk (frozen: a worker's collections skip the parent's).
    # Measured on the 48-layer check with a cold cache: 313 MB for the three processes
    # without this, 266 MB with it; a single process, 255 MB.
    gc.collect()
    return_freed_memory()
    gc.freeze()
    _FORKED_WORK = work
    try:
        pool = multiprocessing.get_context("fork").Pool(min(workers, len(items)), initializer=_one_blas_thread)
    finally:
        _FORKED_WORK = None
        gc.unfreeze()
    try:
        yield from pool.imap(_forked_work, items, chunksize=max(1, len(items) // (workers * 16)))
    finally:
        pool.terminate()


def _one_blas_thread():
    """Limit a forked worker's OpenBLAS to one thread.

    The workers are the parallelism; BLAS threads on top of them oversubscribe the cores
    (measured on 2 cores: the 48-layer full check took 73 s instead of 31 s). OpenBLAS reads
    its thread count from the environment only when it loads, so this calls its own setter
    (``lnref.process.blas``). One thread gives the same bits as several.
    """
    blas.set_threads(1)  # (every OpenBLAS the process has mapped)


def default_workers():
    """The CPUs this process may run on."""
    return kernels.available_cpus()


def _check_every_element(evaluator, h, rtol, atol, seed, generic, workers, progress=None):
    """Every element of every target of every block. Blocks are independent (each has its own
    seeded cotangent and jitter), so ``workers`` forked processes share them out and the
    report is the same, bit for bit, for any number of workers."""
    specs = _block_specs(evaluator)

    def check_block(number):
        return _check_block_elements(evaluator, specs, number, h, rtol, atol, seed, generic)

    results = []
    for done, block_results in enumerate(_in_order(check_block, range(len(specs)), workers), start=1):
        results.extend(block_results)
        if progress and done % 8 == 0:
            progress(f"  {done} of {len(specs)} blocks checked")
    return results


def gradcheck_lm(lm, mode="directional", point="generic", batch=2, seq=8, entries=4, step=None, rtol=None,
                 atol=0.0, seed=None, progress=None):
    """Check every gradient of a language model (``lnref.lm``): embeddings, stack and head.

    The loss is the model's mean cross-entropy on seeded random tokens and targets; each
    tensor is moved along its probes and the whole model re-run (the wrapped stacks are
    small), with the ReLU patterns of the point frozen as for ``gradcheck``.
    """
    if mode not in ("directional", "entries", "full"):
        raise ValueError(f"mode {mode!r} is not available with the language-model head; "
                         "valid: directional, entries, full")
    if seq > lm.max_len:
        raise ValueError(f"seq {seq} exceeds the language model's max_len {lm.max_len}")
    dtype = lm.config.dtype
    default_step, default_rtol = DEFAULTS[dtype]
    h = default_step if step is None else step
    rtol = default_rtol if rtol is None else rtol
    seed = lm.config.seed if seed is None else seed
    started = time.perf_counter()
    rng = np.random.default_rng([seed, 5])
    tokens = rng.integers(0, lm.vocab_size, size=(batch, seq))
    targets = rng.integers(0, lm.vocab_size, size=(batch, seq))
    params = lm.params if point == "init" else jitter_params(lm.params, seed)
    if progress:
        progress(f"gradcheck: {lm.config.scheme} language model, {lm.config.n_layers} layers, "
                 f"{len(params)} tensors, {mode} mode")
    relu_masks = {}
    loss, grads = lm.value_and_grad(tokens, targets, params, relu_masks=relu_masks)
    floor = np.finfo(dtype).eps * max(abs(loss), 1.0)
    results = []
    for index, (name, value) in enumerate(params.items()):
        where = _where_in_lm(name)
        checks = []
        for label, direction in _probes(np.random.default_rng([seed, 3, index]), value.shape, mode, entries):
            direction = direction.astype(value.dtype)
            values = [lm.loss(tokens, targets, {**params, name: value + t * h * direction},
                              relu_masks=relu_masks, freeze=True) for t in STENCIL]
            numeric, sigma = difference_from_values(values, h)
            analytic = float(np.sum(grads[name] * direction))
            checks.append(compare(name, where, label, analytic, numeric, max(sigma, floor), h, rtol, atol))
        results.append(summarize(name, where, checks))
    config = {**lm.config.to_dict(), "head": "language model", "vocab_size": lm.vocab_size}
    return Report(config, mode, point, h, rtol, atol, results, time.perf_counter() - started)


def _where_in_lm(name):
    if name.startswith("layers."):
        return f"layer {name.split('.')[1]}"
    return "head" if name.startswith("head.") else "embed" if name.startswith("embed.") else "stack"


def check_vjp(fn, *arrays, seed=0, step=None, rtol=None, atol=0.0):
    """Check the VJP of ``fn(*Tensors) -> Tensor`` for every argument, one seeded direction each.

    The output is contracted with a seeded random cotangent u, so the scalar compared is
    <fn(arrays), u>; returns one ``Check`` per argument (tensor names "arg0", "arg1", ...).
    """
    arrays = [np.asarray(a) for a in arrays]
    default_step, default_rtol = DEFAULTS[str(arrays[0].dtype)]
    h = default_step if step is None else step
    rtol = default_rtol if rtol is None else rtol
    rng = np.random.default_rng(seed)
    leaves = [Tensor(a, requires_grad=True) for a in arrays]
    with Tape() as tape:
        out = fn(*leaves)
    cotangent = rng.standard_normal(out.shape).astype(out.dtype)
    tape.backward(out, cotangent)
    values = out.value
    eps = np.finfo(values.dtype).eps
    scale = float(np.abs(values * cotangent).sum())

    def value(moved):
        return float(np.sum(fn(*[Tensor(a) for a in moved]).value * cotangent))

    f0 = value(arrays)
    checks = []
    for i, leaf in enumerate(leaves):
        direction = rng.standard_normal(leaf.shape)
        direction = (direction / max(np.linalg.norm(direction), 1e-300)).astype(leaf.dtype)

        def f(t, i=i, direction=direction):
            return value([a + t * direction if j == i else a for j, a in enumerate(arrays)])

        numeric, sigma = central_difference(f, h, f0)
        analytic = float(np.sum(_grad(leaf) * direction))
        checks.append(compare(f"arg{i}", "function", "direction", analytic, numeric,
                              max(sigma, eps * scale), h, rtol, atol))
    return checks


def gradcheck(model, mode="directional", point="generic", batch=2, seq=8, memory_len=None, entries=4,
              step=None, rtol=None, atol=0.0, seed=None, progress=None, workers=None):
    """Check every gradient of ``model`` (all parameters, the input, the memory).

    ``workers``: forked processes that share the checks out in directional, entries and full
    mode (the report is the same for any number); by default the CPUs available, except for
    directional and entries checks of small models (under ``PARALLEL_LAYER_RUNS`` tensors
    times layers), which run in this process. Returns a ``Report``; ``report.ok`` is False
    when any check failed.
    """
    if mode not in ("directional", "blockwise", "entries", "full"):
        raise ValueError(f"unknown mode {mode!r}; valid: directional, blockwise, entries, full")
    if point not in ("generic", "init"):
        raise ValueError(f"unknown point {point!r}; valid: generic, init")
    default_step, default_rtol = DEFAULTS[model.config.dtype]
    h = default_step if step is None else step
    rtol = default_rtol if rtol is None else rtol
    for label, value in (("step", h), ("rtol", rtol), ("atol", atol)):
        if not (math.isfinite(value) and value >= 0) or (label == "step" and value == 0):
            raise ValueError(f"gradcheck: {label} must be finite and {'> 0' if label == 'step' else '>= 0'}, got {value}")
    seed = model.config.seed if seed is None else seed
    started = time.perf_counter()
    x, dy, memory = model.sample_inputs(batch=batch, seq=seq, memory_len=memory_len, seed=seed)
    params = model.params if point == "init" else jitter_params(model.params, seed)
    if progress:
        progress(f"gradcheck: {model.config.scheme}, {model.config.n_layers} layers, {len(params)} tensors, "
                 f"{mode} mode")
    evaluator = _Evaluator(model, params, x, dy, memory)
    if mode == "blockwise":
        results = _check_blockwise(evaluator, h, rtol, atol, seed, generic=point == "generic")
    elif mode == "full":
        workers = default_workers() if workers is None else workers
        results = _check_every_element(evaluator, h, rtol, atol, seed, point == "generic", workers, progress)
    else:
        names = list(params) + ["input"] + (["memory"] if memory is not None else [])
        if workers is None:
            # Forking and feeding the workers costs about a tenth of a second: worth it only
            # when the checks re-run many layers (the 48-layer model: 771 tensors).
            workers = default_workers() if len(names) * model.config.n_layers >= PARALLEL_LAYER_RUNS else 1
        results = _check_global(evaluator, names, mode, entries, h, rtol, atol, seed, workers)
    return Report(model.config.to_dict(), mode, point, h, rtol, atol, results,
                  time.perf_counter() - started)
