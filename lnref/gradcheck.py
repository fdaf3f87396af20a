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
parameters re-runs only layers l..L. Modes:
    directional  one seeded direction per tensor (every parameter, the input, the memory)
    entries      k sampled elements per tensor;   full: every element
    blockwise    each layer on its own: the VJP of one layer (its parameters and its input
                 state) against a random cotangent on its output, so lower layers of deep
                 Post-LN are checked as sharply as the top.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from lnref.autograd import Tape, Tensor, ops

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
            hint = "" if self.mode == "blockwise" else "; --mode blockwise checks each layer on its own"
            lines.append(f"  {len(unresolved) - len(key_biases)} other unresolved: analytic and numeric both "
                         f"under the finite-difference noise floor{hint}")
        lines += ["", f"{self.seconds:.1f} s", self.summary()]
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


def compare(tensor, where, probe, analytic, numeric, sigma, h, rtol, atol):
    """Judge one analytic/numeric pair against the noise floor (see the module docstring)."""
    noise = sigma * math.sqrt(130.0) / (12.0 * h)
    floor = NOISE_FACTOR * noise
    tolerance = atol + rtol * abs(numeric) + floor
    if not (math.isfinite(analytic) and math.isfinite(numeric)):
        status = "failed"
    elif abs(analytic - numeric) > tolerance:
        status = "failed"
    elif max(abs(analytic), abs(numeric)) <= floor:
        status = "unresolved"
    else:
        status = "passed"
    return Check(tensor, where, probe, float(analytic), float(numeric), noise, tolerance, status)


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
        self._tiled_masks = {}

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
        params, memory = self.params, self._tiled(self.memory, count)
        run = self._batched_run(count, memory)
        if name == "input":
            y, _ = model.forward(run, np.concatenate([self.x + move for move in moves]))
        elif name == "memory":
            memory = np.concatenate([self.memory + move for move in moves])
            y, _ = model.forward(self._batched_run(count, memory), self._tiled(self.x, count))
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
        products = y.value * self._tiled(self.dy, count)
        return products.reshape(count, -1).sum(axis=1)

    def _tiled(self, array, count):
        return None if array is None else np.concatenate([array] * count)

    def _batched_run(self, count, memory):
        if count not in self._tiled_masks:
            self._tiled_masks[count] = {layer: self._tiled(mask, count) for layer, mask in self.relu_masks.items()}
        return self.model.run(params=self.params, memory=memory, relu_masks=self._tiled_masks[count], freeze=True)


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


def _check_global(evaluator, names, mode, entries, h, rtol, atol, seed):
    results = []
    eps = np.finfo(evaluator.model.dtype).eps
    for index, name in enumerate(names):
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
        results.append(summarize(name, where, checks))
    return results


def _blocks(evaluator):
    """(label, where, parameter names, stage, input state) for every block of the stack.

    ``stage(run, inputs)`` maps the block's input arrays/Tensors to its output tuple.
    """
    model, n_layers = evaluator.model, evaluator.n_layers
    blocks = []
    if evaluator.embed_params:
        blocks.append(("embed", "stack", sorted(evaluator.embed_params),
                       lambda run, inputs: model.embed(run, inputs[0]), (evaluator.x,)))
    for index in range(n_layers):
        names = [n for n in evaluator.params if n.startswith(f"layers.{index}.")]
        blocks.append((f"layers.{index}", f"layer {index}", names,
                       lambda run, inputs, index=index: model.layer(run, index, inputs),
                       evaluator.states[index]))
    readout_only = sorted(evaluator.readout_params - evaluator.embed_params)
    blocks.append(("readout", "stack", readout_only,
                   lambda run, inputs: (model.readout(run, inputs),), evaluator.states[-1]))
    return blocks


def _block_value(outputs, cotangent):
    """<outputs, cotangent> summed over the block's output arrays (a Tensor)."""
    total = None
    for out, u in zip(outputs, cotangent):
        term = ops.sum(ops.mul(out, u))
        total = term if total is None else ops.add(total, term)
    return total


def _check_blockwise(evaluator, h, rtol, atol, seed, generic):
    model, params, memory = evaluator.model, evaluator.params, evaluator.memory
    eps = np.finfo(model.dtype).eps
    results = []
    for number, (label, where, names, stage, inputs) in enumerate(_blocks(evaluator)):
        rng = np.random.default_rng([seed, 4, number])
        if generic:
            # Deep stacks can drive the tokens of a state together (attention averages
            # them), where some terms of a layer's VJP vanish: jitter the state as well.
            inputs = tuple(jitter_params({"state": a}, seed + number + 1)["state"] for a in inputs)
        uses_memory = memory is not None and label.startswith("layers.")
        # Record this block's ReLU patterns at its own (jittered) input, then freeze them.
        stage(model.run(params=params, memory=memory, relu_masks=evaluator.relu_masks), inputs)
        base_outputs = stage(evaluator.frozen_run(params), inputs)
        cotangent = [rng.standard_normal(out.shape).astype(model.dtype) for out in base_outputs]
        scale = float(sum(np.abs(out.value * u).sum() for out, u in zip(base_outputs, cotangent)))

        def value(new_params=params, new_inputs=inputs, new_memory=None, stage=stage, cotangent=cotangent):
            outputs = stage(evaluator.frozen_run(new_params, new_memory), new_inputs)
            return float(_block_value(outputs, cotangent).value)

        # Analytic: the tape over this block alone, with its inputs (and the memory) as leaves.
        leaves = {n: Tensor(params[n], requires_grad=True) for n in names}
        input_leaves = tuple(Tensor(a, requires_grad=True) for a in inputs)
        memory_leaf = Tensor(memory, requires_grad=True) if uses_memory else None
        with Tape() as tape:  # the real ReLU here: its VJP is part of what is checked
            run = model.run(params={**params, **leaves}, memory=memory_leaf if uses_memory else memory)
            outputs = stage(run, input_leaves)
            total = _block_value(outputs, cotangent)
        tape.backward(total)

        # What to move, as (name, leaf holding the analytic gradient, f(t) given a direction).
        targets = [(n, leaves[n], lambda t, d, n=n: value(new_params={**params, n: params[n] + t * d}))
                   for n in names]
        for j, leaf in enumerate(input_leaves):
            name = f"{label}.input" + (f".{j}" if len(inputs) > 1 else "")
            targets.append((name, leaf, lambda t, d, j=j: value(
                new_inputs=tuple(a + t * d if i == j else a for i, a in enumerate(inputs)))))
        if uses_memory:
            targets.append((f"{label}.memory", memory_leaf, lambda t, d: value(new_memory=memory + t * d)))

        f0 = value()
        for name, leaf, moved in targets:
            direction = rng.standard_normal(leaf.shape)
            direction = (direction / np.linalg.norm(direction)).astype(model.dtype)
            numeric, sigma = central_difference(lambda t: moved(t, direction), h, f0)
            sigma = max(sigma, eps * scale)
            analytic = float(np.sum(_grad(leaf) * direction))
            check = compare(name, where, "direction", analytic, numeric, sigma, h, rtol, atol)
            results.append(summarize(name, where, [check]))
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
              step=None, rtol=None, atol=0.0, seed=None, progress=None):
    """Check every gradient of ``model`` (all parameters, the input, the memory).

    Returns a ``Report``; ``report.ok`` is False when any check failed.
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
    else:
        names = list(params) + ["input"] + (["memory"] if memory is not None else [])
        results = _check_global(evaluator, names, mode, entries, h, rtol, atol, seed)
    return Report(model.config.to_dict(), mode, point, h, rtol, atol, results,
                  time.perf_counter() - started)
