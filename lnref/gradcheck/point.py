"""The check point: the model's gradients there, and its loss re-run under moved tensors.

The analytic gradients come from the model's own tape pass (``Model.gradients``, the path
users get). The finite differences evaluate the function that pass differentiates: at the
point's ReLU on/off patterns (recorded once by a :class:`lnref.views.Freezer` and held by every
later run), so a move cannot push a unit across its kink. Runs re-start from the states the
analytic pass kept: a move of layer l's parameters re-runs only layers l..L, and the moves of
all of layer l's tensors share one batched run of the layers above (moved states stacked along
the batch axis; the moves of its linear maps share one run of layer l too, as one moved copy
of the weights per batch row, :func:`linear_per_row`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lnref.autograd import Tensor, defprimitive, ops
from lnref.autograd.checks import check_float, shapes
from lnref.views import Run, record_frozen

Move = tuple[str, np.ndarray]  # (a parameter's, an input's or "memory"'s name, what is added to it)
PER_ROW_ELEMENTS = 1 << 23  # weights copied for one batched run of a layer's linear-map moves, at most
JITTER = 0.1  # generic point: each tensor moves by JITTER * rms(tensor) * N(0, 1)


def jitter_params(params: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The generic point: every tensor moved by JITTER * rms * N(0, 1) (rms 1 for zeros)."""
    rng = np.random.default_rng([seed, 2])
    jittered = {}
    for name, value in params.items():
        rms = float(np.sqrt(np.mean(np.square(value)))) if value.size else 0.0
        scale = JITTER * (rms if rms > 0 else 1.0)
        jittered[name] = (value + scale * rng.standard_normal(value.shape)).astype(value.dtype)
    return jittered


# ----- weights moved one per batch row ------------------------------------------------------


def _per_row_linear_fwd(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, Any]:
    """Row n of x's first axis (of length N) computes x[n] @ W[n] + b[n], W of shape
    (N, d_in, d_out) or (d_in, d_out), b of shape (N, d_out) or (d_out,).

    VJP per row: dx[n] = dy[n] W[n]^T, dW[n] = x[n]^T dy[n], db[n] = sum dy[n] (summed over
    rows for a W or b shared by every row)."""
    check_float("linear_per_row", x, weight, bias)
    batch = np.shape(x)[0]
    if not (
        np.ndim(x) >= 2
        and np.ndim(weight) in (2, 3)
        and np.ndim(bias) in (1, 2)
        and np.shape(x)[-1] == np.shape(weight)[-2]
        and np.shape(bias)[-1] == np.shape(weight)[-1]
        and (np.ndim(weight) == 2 or np.shape(weight)[0] == batch)
        and (np.ndim(bias) == 1 or np.shape(bias)[0] == batch)
    ):
        raise ValueError(f"linear_per_row: x, W, b of shapes {shapes(x, weight, bias)} do not fit")
    rows = x.reshape(batch, -1, x.shape[-1])  # (N, tokens, d_in)
    out = np.matmul(rows, weight)
    out += bias[:, None, :] if bias.ndim == 2 else bias
    return out.reshape(*x.shape[:-1], weight.shape[-1]), (rows, weight, bias.ndim == 2)


def _per_row_linear_vjp(dout: np.ndarray, residuals: Any) -> tuple[Any, ...]:
    rows, weight, per_row_bias = residuals
    dout_rows = dout.reshape(rows.shape[0], -1, dout.shape[-1])
    dx = np.matmul(dout_rows, np.swapaxes(weight, -1, -2)).reshape(*dout.shape[:-1], weight.shape[-2])
    dweight = np.matmul(np.swapaxes(rows, -1, -2), dout_rows)
    dbias = dout_rows.sum(axis=1)
    if weight.ndim == 2:
        dweight = dweight.sum(axis=0)
    return dx, dweight, dbias if per_row_bias else dbias.sum(axis=0)


per_row_linear = defprimitive("linear_per_row", _per_row_linear_fwd, _per_row_linear_vjp)


def linear_per_row(x: Any, weight: Any, bias: Any) -> Tensor:
    """The linear map of the checker's runs: ``ops.linear``, or :data:`per_row_linear` when
    the weight or the bias holds one copy per batch row."""
    if np.ndim(getattr(weight, "value", weight)) == 2 and np.ndim(getattr(bias, "value", bias)) == 1:
        return ops.linear(x, weight, bias)
    return per_row_linear(x, weight, bias)


# ----- the point -----------------------------------------------------------------------------


class _ReadRecorder(dict):
    """A parameter dict that remembers which names were read."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        self.seen.add(name)
        return super().__getitem__(name)


class Point:
    """The loss of the model at its check point, re-running only what a change affects.

    ``x`` is the model's input: one array, or a tuple of arrays for a model of several inputs
    (an encoder-decoder model's (source, target), named by ``model.input_names``)."""

    def __init__(
        self,
        model: Any,
        params: dict[str, np.ndarray],
        x: Any,
        dy: np.ndarray,
        memory: Any,
        hold_stop_gradients: bool = True,
    ) -> None:
        self.model, self.params, self.x, self.dy, self.memory = model, params, x, dy, memory
        # Released kinds are computed afresh by every run: the function itself, not the surrogate
        # whose derivative the tape computes.
        self.release = () if hold_stop_gradients else ("stop_gradient",)
        self.n_blocks = model.n_blocks
        self.inputs = dict(zip(model.input_names, x if isinstance(x, tuple) else (x,)))
        self.grads, _, tensor_states = model.gradients(x, dy, memory, params=params, keep_states=True)
        self.states = [tuple(t.value for t in state) for state in tensor_states]
        self.freezer = record_frozen(model, lambda run: model.forward(run, x), params, memory)
        self.held = tuple(sorted(self.freezer.kinds - set(self.release)))
        self.scale = float(np.abs(model.readout(self.frozen_run(params), self.states[-1]).value * dy).sum())
        self.reads = self._stage_reads()
        self.embed_params, self.readout_params = self.reads[-1], self.reads[self.n_blocks]
        self.linear_params = model.linear_params

    def frozen_run(self, params: dict[str, Any], memory: Any = None, count: int = 1, per_row: bool = False) -> Run:
        """A run with the point's frozen values and memory (both held ``count`` times along
        the batch axis, unless a ``memory`` is given); ``per_row``: linear maps take weights
        given one per batch row."""
        memory = _tiled(self.memory, count) if memory is None else memory
        options = {"linear": linear_per_row} if per_row else {}
        return self.model.run(params, memory, freeze=self.freezer.hold(count, self.release), **options)

    def _stage_reads(self) -> dict[int, set[str]]:
        """{stage: the parameter names it reads}: -1 the embedding stage, 0..n_blocks-1 the
        blocks, n_blocks the readout."""
        model, reads = self.model, {}
        stages = [(-1, lambda run: model.embed(run, self.x))]
        stages += [(i, lambda run, i=i: model.layer(run, i, self.states[i])) for i in range(self.n_blocks)]
        stages.append((self.n_blocks, lambda run: model.readout(run, self.states[-1])))
        for stage, compute in stages:
            recorder = _ReadRecorder(self.params)
            compute(self.frozen_run(recorder))
            reads[stage] = recorder.seen
        return reads

    def start_of(self, name: str) -> int:
        """The first block a change of ``name`` affects (-1: the embedding stage, so the whole
        model; n_blocks: only the readout)."""
        layer = self.model.layer_of(name)
        if layer is not None:
            return int(layer)
        return min((stage for stage, names in self.reads.items() if name in names), default=-1)

    def where(self, name: str) -> str:
        if name in self.inputs or name == "memory":
            return "input"
        start = self.start_of(name)
        return str(self.model.block_label(start)[1]) if 0 <= start < self.n_blocks else "stack"

    def run_group(self, name: str) -> str | int:
        """What a move of ``name`` re-runs: "input" or "memory" (the whole model), or the stage
        ``start_of(name)``. Moves of one group share a batched run (:meth:`losses`)."""
        return name if name == "memory" else "input" if name in self.inputs else self.start_of(name)

    def losses(self, moves: list[Move]) -> np.ndarray:
        """The loss with each (name, move) applied on its own: ``name`` (a parameter, an input
        or "memory") moved by ``move``. The names must share one :meth:`run_group`.

        Only the first stage a move affects needs a run of its own per move; from there on the
        moved states are stacked along the batch axis and the rest of the model runs once for
        all of them (every op treats batch rows independently). A layer's linear-map parameters
        need no run of their own either: their moves share one run, each with its own copy of
        the weights per batch row. Zero moves that would take the same path are run once.
        """
        groups = {self.run_group(name) for name, _ in moves}
        if len(groups) != 1:
            raise ValueError(f"Point.losses: moves of one run group only, got {sorted(map(str, groups))}")
        group, model, params = groups.pop(), self.model, self.params
        distinct, stands_for = _distinct(moves, together := self._per_row_names(group, moves))
        count = len(distinct)
        if group == "input":
            moved = tuple(
                np.concatenate([value + move if name == key else value for name, move in distinct])
                for key, value in self.inputs.items()
            )
            y, _ = model.forward(self.frozen_run(params, count=count), self._model_input(moved))
        elif group == "memory":
            memory = np.concatenate([self.memory + move for _, move in distinct])
            y, _ = model.forward(self.frozen_run(params, memory, count), _tiled(self.x, count))
        elif group == self.n_blocks:
            outputs = [model.readout(self._moved_run(name, move), self.states[-1]).value for name, move in distinct]
            y = Tensor.wrap(np.concatenate(outputs))
        elif group == -1:
            states = [model.embed(self._moved_run(name, move), self.x) for name, move in distinct]
            y, _ = model.forward(self.frozen_run(params, count=count), state=stack_states(states), start=0)
        else:
            start, shared = int(group), [m for m in distinct if m[0] in together]  # (first in distinct)
            states = [self._per_row_layer(start, shared)] if shared else []
            alone = distinct[len(shared) :]
            states += [model.layer(self._moved_run(name, move), start, self.states[start]) for name, move in alone]
            y, _ = model.forward(self.frozen_run(params, count=count), state=stack_states(states), start=start + 1)
        products = y.value * _tiled(self.dy, count)
        return products.reshape(count, -1).sum(axis=1)[stands_for]

    def _per_row_names(self, group: str | int, moves: list[Move]) -> set[str]:
        """The tensors among ``moves`` whose moves share one run of their layer: its linear maps'
        parameters, unless their copies (one per batch row of the run) would exceed
        PER_ROW_ELEMENTS."""
        if not (isinstance(group, int) and 0 <= group < self.n_blocks):
            return set()
        names = {name for name, _ in moves if name in self.linear_params}
        rows = (sum(name in names for name, _ in moves) + 1) * self.states[group][0].shape[0]
        return names if rows * sum(self.params[name].size for name in names) <= PER_ROW_ELEMENTS else set()

    def _moved_run(self, name: str, move: np.ndarray) -> Run:
        return self.frozen_run({**self.params, name: self.params[name] + move})

    def _per_row_layer(self, start: int, moves: list[Move]) -> tuple[Tensor, ...]:
        """Layer ``start``'s output states under ``moves`` of its linear-map parameters, in one
        run: the moves one after another along the batch axis, every moved tensor given one
        copy per batch row (:func:`linear_per_row`)."""
        count, batch = len(moves), self.states[start][0].shape[0]
        params = dict(self.params)
        for name in dict.fromkeys(name for name, _ in moves):
            params[name] = np.repeat(self.params[name][None], count * batch, axis=0)
        for k, (name, move) in enumerate(moves):
            params[name][k * batch : (k + 1) * batch] += move
        run = self.frozen_run(params, count=count, per_row=True)
        return tuple(self.model.layer(run, start, tuple(_tiled(s, count) for s in self.states[start])))

    def _model_input(self, arrays: tuple[np.ndarray, ...]) -> Any:
        return arrays if isinstance(self.x, tuple) else arrays[0]


def _distinct(moves: list[Move], together: set[str]) -> tuple[list[Move], np.ndarray]:
    """The moves to run, those of ``together``'s tensors first (they share a run), and for each
    of ``moves`` the index of the one whose value it takes: zero moves on one path (together,
    or alone) give the same value, so one of them is run for all."""
    distinct: list[Move] = []
    stands_for = np.empty(len(moves), dtype=np.intp)
    zero_at: dict[bool, int] = {}
    for i in sorted(range(len(moves)), key=lambda i: moves[i][0] not in together):
        name, move = moves[i]
        path = name in together
        if move.any() or path not in zero_at:
            if not move.any():
                zero_at[path] = len(distinct)
            stands_for[i] = len(distinct)
            distinct.append((name, move))
        else:
            stands_for[i] = zero_at[path]
    return distinct, stands_for


def _tiled(array: Any, count: int) -> Any:
    return array if array is None or count == 1 else np.concatenate([array] * count)


def stack_states(states: list[tuple[Any, ...]]) -> tuple[Tensor, ...]:
    """Concatenate per-move states (tuples of Tensors) stream by stream along the batch axis."""
    return tuple(Tensor.wrap(np.concatenate([state[j].value for state in states])) for j in range(len(states[0])))
