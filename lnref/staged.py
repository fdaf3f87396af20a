"""What the two staged models share: ``lnref.model.Model`` (one stack) and
``lnref.encdec.EncoderDecoder`` (an encoder and a decoder).

A staged model runs its ``embed`` stage, then ``n_blocks`` blocks (``layer(run, index, state)``),
then its ``readout``, every stage on a *state*: a tuple of Tensors. Its input is one array
(``input_names == ("input",)``) or a tuple of arrays (``("source", "target")``), and the
gradients of the inputs are named after them. Shared here: running the blocks from a state on,
the gradients on the tape (the reference path), a repeated gradient pass replayed, and loading
checked parameters.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from lnref.autograd import Tape, Tensor, ops
from lnref.autograd.replay import Replayer
from lnref.views import Run, State


class ConfigError(ValueError):
    """A configuration or input that cannot describe a model (exit code 2 in the CLI)."""


class Staged:
    """The stages of a model run in order, and its gradients. Subclasses define the stages
    (``run``, ``embed``, ``layer``, ``readout``), ``n_blocks``, ``config`` and ``params``."""

    input_names: tuple[str, ...] = ("input",)
    params: dict[str, np.ndarray]
    replayer: Replayer

    @property
    def n_blocks(self) -> int:
        raise NotImplementedError

    def run(self, params: dict[str, Any] | None = None, memory: Any = None, **options: Any) -> Run:
        raise NotImplementedError

    def embed(self, run: Run, x: Any) -> State:
        raise NotImplementedError

    def layer(self, run: Run, index: int, state: State) -> State:
        raise NotImplementedError

    def readout(self, run: Run, state: State) -> Tensor:
        raise NotImplementedError

    def _input_arrays(self, x: Any) -> tuple[Any, ...]:
        """The model's input as one array per name of ``input_names``."""
        return (x,) if len(self.input_names) == 1 else tuple(x)

    def _model_input(self, arrays: tuple[Any, ...]) -> Any:
        return arrays[0] if len(self.input_names) == 1 else tuple(arrays)

    def forward(
        self, run: Run, x: Any = None, state: State | None = None, start: int = 0, keep_states: bool = False
    ) -> tuple[Tensor, list[State] | None]:
        """Run blocks ``start..`` from ``state`` (or from ``x`` when start is 0).

        Returns (y, states) with states[l] the state entering block l (and states[n_blocks] the
        last block's output) when ``keep_states``, else (y, None).
        """
        if state is None:
            state = self.embed(run, x)
        states = [state] if keep_states else None
        for index in range(start, self.n_blocks):
            state = self.layer(run, index, state)
            if states is not None:
                states.append(state)
        return self.readout(run, state), states

    def gradients(
        self,
        x: Any,
        dy: np.ndarray,
        memory: Any = None,
        params: dict[str, Any] | None = None,
        keep_states: bool = False,
    ) -> tuple[dict[str, np.ndarray], float, list[State] | None]:
        """Forward and backward on the tape: (grads, loss, states entering each block or None)."""
        leaves = {name: Tensor(value, requires_grad=True) for name, value in (params or self.params).items()}
        input_leaves = tuple(Tensor(a, requires_grad=True) for a in self._input_arrays(x))
        memory_leaf = None if memory is None else Tensor(memory, requires_grad=True)
        with Tape() as tape:
            run = self.run(leaves, memory_leaf)
            y, states = self.forward(run, self._model_input(input_leaves), keep_states=keep_states)
            loss = self._sum_of_products(y, dy)
        for state in states or ():
            for tensor in state:
                tensor.retain_grad = True
        tape.backward(loss)
        grads = {name: leaf.grad_or_zeros() for name, leaf in leaves.items()}
        grads.update({name: leaf.grad_or_zeros() for name, leaf in zip(self.input_names, input_leaves)})
        if memory_leaf is not None:
            grads["memory"] = memory_leaf.grad_or_zeros()
        return grads, float(loss.value), states

    def _value_and_grad(self, x: Any, dy: Any, memory: Any, fast: bool) -> tuple[float, dict[str, np.ndarray]]:
        """loss = sum(y * dy) and its gradients, on the tape; with ``fast``, a repeated pass
        with inputs of the same shapes replays the primitive calls of the first
        (``autograd/replay.py``), without the Python of the layers."""
        dy = np.asarray(dy)
        if not fast:
            grads, loss, _ = self.gradients(x, dy, memory)
            return loss, grads
        inputs = self._input_arrays(x)
        arrays = [*self.params.values(), *inputs, memory, dy]
        shapes = tuple(np.shape(a) for a in inputs)
        key = (shapes[0] if len(shapes) == 1 else shapes, dy.shape, np.shape(memory))
        output, gradients = self.replayer.value_and_grad(key, self._loss, arrays, [True] * (len(arrays) - 1) + [False])
        by_name = dict(zip([*self.params, *self.input_names, "memory"], gradients))
        if by_name["memory"] is None:  # no memory given; every other input has a gradient
            del by_name["memory"]
        return float(output.value), cast(dict[str, np.ndarray], by_name)

    def _loss(self, *arrays: Any) -> Tensor:
        """The loss as a function of (the parameters in order, the inputs, memory, dy)."""
        values = arrays[: len(self.params)]
        *inputs, memory, dy = arrays[len(self.params) :]
        y, _ = self.forward(self.run(dict(zip(self.params, values)), memory), self._model_input(tuple(inputs)))
        return self._sum_of_products(y, dy)

    @staticmethod
    def _sum_of_products(y: Tensor, dy: Any) -> Tensor:
        if y.shape != dy.shape:
            raise ConfigError(f"dy must have the output's shape {y.shape}, got {dy.shape}")
        return ops.sum(ops.mul(y, dy))

    def _checked_params(self, params: dict[str, Any]) -> dict[str, np.ndarray]:
        """Copies of ``params``, whose names, shapes and dtypes must be exactly the model's and
        whose values must be finite."""
        missing = [n for n in self.params if n not in params]
        extra = [n for n in params if n not in self.params]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
            if extra:
                parts.append(f"unexpected {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
            raise ConfigError("load: parameter names differ: " + "; ".join(parts))
        loaded = {}
        for name, current in self.params.items():
            value = np.asarray(params[name])
            if value.shape != current.shape:
                raise ConfigError(f"load: {name} has shape {value.shape}, expected {current.shape}")
            if value.dtype != current.dtype:
                raise ConfigError(f"load: {name} has dtype {value.dtype}, expected {current.dtype}")
            if not np.isfinite(value).all():
                raise ConfigError(f"load: {name} contains NaN or inf")
            loaded[name] = value.copy()
        return loaded


def as_state(value: Any) -> State:
    """A tuple of Tensors (a stream passed through unchanged may still be a plain array)."""
    streams = value if isinstance(value, tuple) else (value,)
    return tuple(s if isinstance(s, Tensor) else Tensor(s) for s in streams)


def index_groups(params: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """{prefix: [(short name, full name)]} of the parameters named ``prefix.<short name>``."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for full in params:
        prefix, _, short = full.rpartition(".")
        groups.setdefault(prefix, []).append((short, full))
    return groups
