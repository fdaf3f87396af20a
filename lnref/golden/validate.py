"""The checks that a golden file read from disk is what its config says, before anything trusts it.

A file may be damaged or hostile: every value is checked for its type before use, and the
sizes the config claims are checked against the arrays before a model of that size is built.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from lnref import __version__
from lnref.golden.compat import READABLE_VERSIONS
from lnref.golden.containers import ConfigEntry
from lnref.golden.format import (
    CONFIG_ENTRY,
    FORMAT_NAME,
    POINTS,
    GoldenError,
    first_names,
    hidden_name,
    hidden_streams,
    one_line,
    stack_depths,
)
from lnref.golden.precision import ROUNDED_DTYPES, representable

if TYPE_CHECKING:
    from lnref.encdec import EncoderDecoder
    from lnref.model import Config, Model


def parse_config(path: str, entry: ConfigEntry) -> dict[str, Any]:
    """The config document as written: JSON naming this format, in a version this lnref reads
    (``compat.upgrade`` gives it the current format's meaning)."""
    if entry is None:
        raise GoldenError(f"{path}: not an lnref golden file (no {CONFIG_ENTRY!r} entry)")
    if isinstance(entry, np.ndarray):
        if entry.dtype != np.uint8 or entry.ndim != 1:
            raise GoldenError(
                f"{path}: the {CONFIG_ENTRY!r} entry must be a 1-D uint8 array "
                f"of UTF-8 JSON text, got {entry.dtype} of shape {entry.shape}"
            )
        try:
            entry = entry.tobytes().decode("utf-8")
        except UnicodeDecodeError:
            raise GoldenError(f"{path}: the {CONFIG_ENTRY!r} entry is not UTF-8 text") from None
    try:
        document = json.loads(entry)
    except ValueError as err:
        raise GoldenError(f"{path}: the config is not valid JSON ({one_line(err)})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise GoldenError(f"{path}: not an lnref golden file (config format is not {FORMAT_NAME!r})")
    version = document.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise GoldenError(
            f"{path}: golden format version {version!r}; this lnref ({__version__}) reads versions {readable}"
        )
    return document


def model_config(path: str, fields: object) -> Config:
    """The model's Config from the document's ``model`` object: exactly Config's fields, each
    of the right JSON type, and values Config accepts."""
    from lnref.model import Config

    names = [f.name for f in dataclasses.fields(Config)]
    if not isinstance(fields, dict):
        raise GoldenError(f"{path}: config has no 'model' object")
    missing = [name for name in names if name not in fields]
    unknown = [name for name in fields if name not in names]
    if missing or unknown:
        parts = (missing and f"lacks {', '.join(missing)}", unknown and f"has unknown {', '.join(unknown)}")
        raise GoldenError(f"{path}: config 'model' " + "; ".join(part for part in parts if part))
    for flag in ("causal", "cross_attention"):
        if not isinstance(fields[flag], bool):
            raise GoldenError(f"{path}: config {flag} must be true or false, got {fields[flag]!r}")
    for number in ("eps", "post_fraction"):
        if isinstance(fields[number], bool) or not isinstance(fields[number], (int, float)):
            raise GoldenError(f"{path}: config {number} must be a number, got {fields[number]!r}")
    if not isinstance(fields["options"], dict):
        raise GoldenError(f"{path}: config options must be an object, got {fields['options']!r}")
    for text in ("scheme", "norm", "activation", "dtype", "qk_norm", "role"):
        if not isinstance(fields[text], str):
            raise GoldenError(f"{path}: config {text} must be a string, got {fields[text]!r}")
    try:
        return Config(**fields)
    except ValueError as err:  # ConfigError
        raise GoldenError(f"{path}: config: {one_line(err)}") from None


def input_sizes(path: str, inputs: object, config: Config) -> tuple[int, int, int | None, int | None]:
    """(batch, seq, memory_len, source_len) from the document's ``inputs`` object (source_len:
    an encoder-decoder model's source length; None otherwise)."""
    if not isinstance(inputs, dict):
        raise GoldenError(f"{path}: config has no 'inputs' object")
    encoder_decoder = config.role == "encoder-decoder"
    sizes = []
    for name in ("batch", "seq", "source_len") if encoder_decoder else ("batch", "seq"):
        value = inputs.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GoldenError(f"{path}: config inputs.{name} must be an integer >= 1, got {value!r}")
        sizes.append(value)
    if not encoder_decoder and inputs.get("source_len") is not None:
        raise GoldenError(f"{path}: config inputs.source_len is set but the model is not an encoder-decoder model")
    memory_len = inputs.get("memory_len")
    if config.cross_attention:
        if isinstance(memory_len, bool) or not isinstance(memory_len, int) or memory_len < 1:
            raise GoldenError(
                f"{path}: config inputs.memory_len must be an integer >= 1 with cross-attention, got {memory_len!r}"
            )
    elif memory_len is not None:
        raise GoldenError(f"{path}: config inputs.memory_len is {memory_len!r} but the model has no cross-attention")
    return sizes[0], sizes[1], memory_len, sizes[2] if encoder_decoder else None


def point_and_precision(path: str, document: dict[str, Any], config: Config) -> tuple[str, str | None]:
    """(point, rounded_to) of a document in the current format: where the parameters are, and
    the low precision the inputs and parameters were rounded to (None: not rounded)."""
    point, rounded_to = document.get("point"), document.get("rounded_to")
    if point not in POINTS:
        raise GoldenError(f"{path}: config point must be one of {', '.join(POINTS)}, got {point!r}")
    if rounded_to is not None and rounded_to not in ROUNDED_DTYPES:
        raise GoldenError(
            f"{path}: config rounded_to must be null or one of {', '.join(ROUNDED_DTYPES)}, got {rounded_to!r}"
        )
    if rounded_to is not None and config.dtype != "float64":
        raise GoldenError(
            f"{path}: inputs rounded to {rounded_to} need a float64 model, the config says {config.dtype}"
        )
    return point, rounded_to


def check_rounded(path: str, arrays: dict[str, np.ndarray], rounded_to: str, config: Config) -> None:
    """The inputs and parameters of a file rounded to a low precision hold values of it (an
    encoder-decoder model's memory is an output: its encoder computes it)."""
    inputs = ("source", "target", "dy") if config.role == "encoder-decoder" else ("x", "dy", "memory")
    for name, value in arrays.items():
        if name in inputs or name.startswith("params/"):
            if not representable(value, rounded_to):
                raise GoldenError(f"{path}: {name} holds values that are not {rounded_to}, as the config says")


def check_values(path: str, arrays: dict[str, np.ndarray], dtype: str) -> None:
    """Every array of the config's dtype and finite."""
    for name, value in arrays.items():
        if value.dtype != np.dtype(dtype):
            raise GoldenError(f"{path}: {name} has dtype {value.dtype}, the config says {dtype}")
        if not np.isfinite(value).all():
            raise GoldenError(f"{path}: {name} contains NaN or inf")


def check_size_bounds(path: str, arrays: dict[str, np.ndarray], config: Config) -> None:
    """Sizes the config claims must be backed by the arrays before a model is built from it
    (a damaged config could otherwise ask for a billion layers)."""
    encoder_decoder = config.role == "encoder-decoder"
    for name in ("source", "target") if encoder_decoder else ("x",):
        x = arrays.get(name)
        if x is None or x.ndim != 3 or x.shape[2] != config.d_model:
            raise GoldenError(
                f"{path}: {name} must be (batch, seq, {config.d_model}), got {None if x is None else x.shape}"
            )
    stacks = stack_depths(config) if encoder_decoder else {None: config.n_layers}
    for stack, depth in stacks.items():
        prefix = "hidden/" if stack is None else f"hidden/{stack}/"
        layers = {name[len(prefix) :].split("/")[0] for name in arrays if name.startswith(prefix)}
        if len(layers) != depth + 1:
            raise GoldenError(
                f"{path}: config says {depth} {stack + ' ' if stack else ''}layers, the file holds hidden states "
                f"for {len(layers)} (expected layers + 1)"
            )
        name = f"params/{'' if stack is None else stack + '.'}layers.0.ffn.w1"
        w1 = arrays.get(name)
        if w1 is None or w1.shape != (config.d_model, config.d_ff):
            raise GoldenError(
                f"{path}: {name} must be ({config.d_model}, {config.d_ff}), got {None if w1 is None else w1.shape}"
            )


def expected_shapes(
    model: Model | EncoderDecoder, batch: int, seq: int, memory_len: int | None, source_len: int | None = None
) -> dict[str, tuple[int, ...]]:
    """Every name the format prescribes for ``model``, with its shape, in file order."""
    cfg = model.config
    if cfg.role == "encoder-decoder":
        assert source_len is not None
        return _encoder_decoder_shapes(model, batch, seq, source_len)
    activations = (batch, seq, cfg.d_model)
    shapes = {"x": activations, "dy": activations}
    if cfg.cross_attention:
        shapes["memory"] = (batch, memory_len, cfg.d_model)
    shapes.update({"y": activations, "loss": ()})
    shapes.update({f"params/{name}": value.shape for name, value in model.params.items()})
    shapes.update({f"grads/{name}": value.shape for name, value in model.params.items()})
    shapes["grads/input"] = activations
    if cfg.cross_attention:
        shapes["grads/memory"] = shapes["memory"]
    for layer in range(cfg.n_layers + 1):
        shapes.update({hidden_name(layer, stream): activations for stream in hidden_streams(cfg.scheme, layer, cfg)})
    return shapes


def check_entries(path: str, arrays: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> None:
    """Exactly the expected names, each with its expected shape."""
    missing = [name for name in expected if name not in arrays]
    unexpected = [name for name in arrays if name not in expected]
    if missing:
        raise GoldenError(f"{path}: missing {first_names(missing)}")
    if unexpected:
        raise GoldenError(f"{path}: unexpected {first_names(unexpected)}")
    for name, shape in expected.items():
        if arrays[name].shape != tuple(shape):
            raise GoldenError(f"{path}: {name} has shape {arrays[name].shape}, expected {tuple(shape)}")


def _encoder_decoder_shapes(
    model: Model | EncoderDecoder, batch: int, seq: int, source_len: int
) -> dict[str, tuple[int, ...]]:
    cfg = model.config
    target, source = (batch, seq, cfg.d_model), (batch, source_len, cfg.d_model)
    shapes: dict[str, tuple[int, ...]] = {"source": source, "target": target, "dy": target, "y": target}
    shapes.update({"memory": source, "loss": ()})
    shapes.update({f"params/{name}": value.shape for name, value in model.params.items()})
    shapes.update({f"grads/{name}": value.shape for name, value in model.params.items()})
    shapes.update({"grads/source": source, "grads/target": target})
    for stack, depth in stack_depths(cfg).items():
        activations = source if stack == "encoder" else target
        stack_config = cfg.stack(stack)
        for layer in range(depth + 1):
            for stream in hidden_streams(cfg.scheme, layer, stack_config):
                shapes[hidden_name(layer, stream, stack)] = activations
    return shapes
