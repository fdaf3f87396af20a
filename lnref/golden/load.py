"""Reading a golden file: ``load_golden`` validates it, ``from_golden`` rebuilds its model and
checks that the model reproduces every stored array bit for bit."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lnref import __version__
from lnref.files import PathLike
from lnref.golden import compat, validate
from lnref.golden.containers import read_arrays
from lnref.golden.export import golden_arrays
from lnref.golden.format import GoldenError, first_names, hidden_name, hidden_streams, stack_depths

if TYPE_CHECKING:
    from lnref.encdec import EncoderDecoder
    from lnref.model import Config, Model


@dataclass(frozen=True)
class Golden:
    """A validated golden file: its config (in the current format's terms, whatever version
    the file was written in: ``format_version``), input sizes and arrays by name. An
    encoder-decoder model's file has ``source`` and ``target`` (of ``source_len`` and ``seq``
    tokens) where another has ``x``, and its ``memory`` is the encoder's output."""

    path: str
    config: Config
    batch: int
    seq: int
    memory_len: int | None
    lnref_version: str
    format_version: int
    arrays: dict[str, np.ndarray] = field(repr=False)
    point: str = "init"  # the parameters: the model's initialization, or a generic point
    rounded_to: str | None = None  # the low precision of the inputs and parameters, if any
    source_len: int | None = None

    @property
    def encoder_decoder(self) -> bool:
        return bool(self.config.role == "encoder-decoder")

    @property
    def x(self) -> np.ndarray:
        return self.arrays["x"]

    @property
    def source(self) -> np.ndarray:
        return self.arrays["source"]

    @property
    def target(self) -> np.ndarray:
        return self.arrays["target"]

    @property
    def model_inputs(self) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray], np.ndarray | None]:
        """(x, memory) as the model's staged face takes them: (x, the memory or None), or
        ((source, target), None) for an encoder-decoder model."""
        if self.encoder_decoder:
            return (self.source, self.target), None
        return self.x, self.memory

    @property
    def dy(self) -> np.ndarray:
        return self.arrays["dy"]

    @property
    def memory(self) -> np.ndarray | None:
        return self.arrays.get("memory")

    @property
    def y(self) -> np.ndarray:
        return self.arrays["y"]

    @property
    def loss(self) -> float:
        return float(self.arrays["loss"])

    @property
    def params(self) -> dict[str, np.ndarray]:
        return _with_prefix(self.arrays, "params/")

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Parameter gradients by parameter name, plus "input" (and "memory")."""
        return _with_prefix(self.arrays, "grads/")

    @property
    def hidden(self) -> list[dict[str, np.ndarray]] | dict[str, list[dict[str, np.ndarray]]]:
        """hidden[l][stream]: the state entering layer l (l = n_layers: the last output); for an
        encoder-decoder model hidden[stack][l][stream], stack "encoder" or "decoder"."""
        if self.encoder_decoder:
            return {stack: self._hidden(depth, stack) for stack, depth in stack_depths(self.config).items()}
        return self._hidden(self.config.n_layers, None)

    def _hidden(self, depth: int, stack: str | None) -> list[dict[str, np.ndarray]]:
        scheme = self.config.scheme
        config = self.config if stack is None else self.config.stack(stack)
        return [
            {stream: self.arrays[hidden_name(layer, stream, stack)] for stream in hidden_streams(scheme, layer, config)}
            for layer in range(depth + 1)
        ]


def load_golden(path: PathLike) -> Golden:
    """Read and validate a golden file; raises GoldenError (a ValueError) with one line.

    Checks, in order: the file is a readable .npz/.safetensors without object arrays; it has
    a config naming this format and a version this lnref reads (an earlier version's config is
    read with the meaning it was written with: ``lnref.golden.compat``); the config builds a valid
    model; every array is finite and of the config's dtype; the entries are exactly those
    the format prescribes for this model, with the shapes it prescribes.
    """
    golden, _ = _load(path)
    return golden


def from_golden(path: PathLike, verify: bool = True) -> Model | EncoderDecoder:
    """The model stored in a golden file, with its stored parameters.

    With ``verify`` (the default) the model recomputes y, the loss, every gradient and every
    hidden state from the stored x, dy (and memory), and each must equal the stored array
    bit for bit; otherwise GoldenError names the arrays that differ. Parameters are loaded,
    not re-derived: a parameter that a scheme computes when the model is built (a profiled
    skip scale, say) is the stored one.
    """
    golden, model = _load(path)
    model.load(golden.params)
    if verify:
        x, memory = golden.model_inputs
        recomputed = golden_arrays(model, x, golden.dy, memory)
        differing = [name for name, stored in golden.arrays.items() if not _same_bits(stored, recomputed.get(name))]
        if differing:
            raise GoldenError(
                f"{golden.path}: lnref {__version__} does not reproduce "
                f"{len(differing)} arrays bit for bit: {first_names(differing)} "
                f"(written by lnref {golden.lnref_version})"
            )
    return model


def _load(path: PathLike) -> tuple[Golden, Model | EncoderDecoder]:
    from lnref.building import from_config

    path = os.fspath(path)
    arrays, config_entry = read_arrays(path)
    written = validate.parse_config(path, config_entry)
    document = compat.upgrade(written)
    config = validate.model_config(path, document.get("model"))
    batch, seq, memory_len, source_len = validate.input_sizes(path, document.get("inputs"), config)
    point, rounded_to = validate.point_and_precision(path, document, config)
    validate.check_values(path, arrays, config.dtype)
    validate.check_size_bounds(path, arrays, config)
    model = from_config(config)
    expected = validate.expected_shapes(model, batch, seq, memory_len, source_len)
    validate.check_entries(path, arrays, expected)
    if rounded_to is not None:
        validate.check_rounded(path, arrays, rounded_to, config)
    version = str(document.get("lnref_version", "?"))
    selected = {name: arrays[name] for name in expected}
    golden = Golden(
        path,
        config,
        batch,
        seq,
        memory_len,
        version,
        written["format_version"],
        selected,
        point,
        rounded_to,
        source_len,
    )
    return golden, model


def _with_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {name[len(prefix) :]: value for name, value in arrays.items() if name.startswith(prefix)}


def _same_bits(a: np.ndarray, b: np.ndarray | None) -> bool:
    return b is not None and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
