"""Writing a golden file: every array a model computes at seeded inputs, and its config.

The parameters are the model's own (``point="init"``) or a generic point (``"generic"``): every
tensor moved by 0.1 rms N(0, 1), as the gradient checker moves them, so that no gain is 1 and
no shift 0 and a port that drops one cannot pass. With ``rounded_to`` (bfloat16, float16) the
inputs and parameters are rounded to that precision first (``lnref.golden.precision``) and
every output is computed in float64 from the rounded values.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from lnref import __version__
from lnref.files import PathLike
from lnref.golden.containers import check_output_path, write_file
from lnref.golden.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LOSS_DEFINITION,
    POINTS,
    WEIGHT_LAYOUT,
    GoldenError,
    hidden_name,
    hidden_streams,
)
from lnref.golden.precision import ROUNDED_DTYPES, round_to

if TYPE_CHECKING:
    from lnref.model import Model


def golden_arrays(
    model: Model, x: np.ndarray, dy: np.ndarray, memory: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Every array of a golden file, computed by ``model`` at (x, dy, memory), in file order."""
    loss, grads = model.value_and_grad(x, dy, memory)
    y = model(x, memory)
    states = model.hidden_states(x, memory)
    dtype = model.dtype
    arrays = {"x": np.asarray(x), "dy": np.asarray(dy)}
    if memory is not None:
        arrays["memory"] = np.asarray(memory)
    arrays["y"] = y
    arrays["loss"] = np.asarray(loss, dtype=dtype)  # exact: the loss was computed in this dtype
    arrays.update({f"params/{name}": value for name, value in model.params.items()})
    arrays.update({f"grads/{name}": grads[name] for name in model.params})
    arrays["grads/input"] = grads["input"]
    if memory is not None:
        arrays["grads/memory"] = grads["memory"]
    for layer, state in enumerate(states):
        names = hidden_streams(model.config.scheme, layer, model.config)
        if len(names) != len(state):
            raise GoldenError(
                f"layer {layer} of {model.config.scheme} carries {len(state)} streams; "
                f"the golden format names {len(names)}"
            )
        arrays.update({hidden_name(layer, name): value for name, value in zip(names, state)})
    return {name: np.asarray(value, order="C") for name, value in arrays.items()}


def golden_config(
    model: Model, batch: int, seq: int, memory_len: int | None, point: str = "init", rounded_to: str | None = None
) -> dict[str, Any]:
    """The JSON document stored beside the arrays."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "lnref_version": __version__,
        "model": model.config.to_dict(),
        "inputs": {"batch": batch, "seq": seq, "memory_len": memory_len, "seed": model.config.seed},
        "point": point,
        "rounded_to": rounded_to,
        "loss": LOSS_DEFINITION,
        "layout": WEIGHT_LAYOUT,
    }


def golden_record(
    model: Model,
    batch: int = 2,
    seq: int = 8,
    memory_len: int | None = None,
    point: str = "init",
    rounded_to: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, config document) of ``model``'s golden file, at ``point`` and with inputs and
    parameters ``rounded_to`` a low precision (or None). The model is left holding the
    parameters the file stores."""
    from lnref.gradcheck.point import jitter_params

    if point not in POINTS:
        raise GoldenError(f"unknown point {point!r}; valid: {', '.join(POINTS)}")
    if rounded_to is not None:
        if rounded_to not in ROUNDED_DTYPES:
            raise GoldenError(f"unknown low precision {rounded_to!r}; valid: {', '.join(ROUNDED_DTYPES)}")
        if model.dtype != np.float64:
            raise GoldenError(f"inputs rounded to {rounded_to} are computed on in float64; the model is {model.dtype}")
    if not model.config.cross_attention and memory_len is not None:
        raise GoldenError("memory_len is only meaningful with cross-attention")
    if point == "generic":
        model.load(jitter_params(model.params, seed=model.config.seed))
    x, dy, memory = model.sample_inputs(batch, seq, memory_len)
    if rounded_to is not None:
        model.load({name: round_to(value, rounded_to) for name, value in model.params.items()})
        x, dy = round_to(x, rounded_to), round_to(dy, rounded_to)
        memory = None if memory is None else round_to(memory, rounded_to)
    arrays = golden_arrays(model, x, dy, memory)
    memory_len = None if memory is None else memory.shape[1]
    return arrays, golden_config(model, batch, seq, memory_len, point, rounded_to)


def export_golden(
    model: Model,
    path: PathLike,
    batch: int = 2,
    seq: int = 8,
    memory_len: int | None = None,
    point: str = "init",
    rounded_to: str | None = None,
) -> dict[str, np.ndarray]:
    """Write ``model``'s golden file to ``path`` (.npz or .safetensors, by extension).

    The inputs x, dy (and memory) are ``model.sample_inputs(batch, seq, memory_len)``, seeded
    by the model's seed; ``point`` and ``rounded_to`` as in :func:`golden_record`. The file is
    written to a temporary file in the same directory and moved into place, so ``path`` holds
    either the old content or the complete new file. Returns the arrays written.
    """
    path = os.fspath(path)
    check_output_path(path)  # fail before computing
    arrays, document = golden_record(model, batch, seq, memory_len, point, rounded_to)
    write_file(path, arrays, json.dumps(document, indent=1))
    return arrays
