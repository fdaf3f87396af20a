"""Golden files of earlier format versions, read with the meaning they were written with.

A file keeps its meaning for good: a reader upgrades its config document one version at a
time to the current format before anything builds a model from it, and the model it
rebuilds computes what the file's writer computed, bit for bit.

    version 1 -> 2   "gelu" was the tanh approximation; it is now "gelu_tanh", and "gelu"
                     names the exact x Phi(x) (PyTorch's nn.GELU() and F.gelu default)
    version 2 -> 3   the model config gained "qk_norm" (none) and "options" (the scheme's own, {})
    version 3 -> 4   the document gained "point" (init: the parameters are the model's
                     initialization) and "rounded_to" (null: inputs and parameters not rounded
                     to a low precision)
    version 4 -> 5   the model config gained "role" (stack), "encoder_layers" and "decoder_layers"
                     (0): every earlier file is of a model of one stack
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from lnref.golden.format import FORMAT_VERSION

Document = dict[str, Any]


def _gelu_was_tanh(document: Document) -> None:
    model = document.get("model")
    if isinstance(model, dict) and model.get("activation") == "gelu":
        model["activation"] = "gelu_tanh"


def _no_qk_norm_nor_options(document: Document) -> None:
    model = document.get("model")
    if isinstance(model, dict):
        model.setdefault("qk_norm", "none")
        model.setdefault("options", {})


def _initialization_in_full_precision(document: Document) -> None:
    document.setdefault("point", "init")
    document.setdefault("rounded_to", None)


def _one_stack(document: Document) -> None:
    model = document.get("model")
    if isinstance(model, dict):
        model.setdefault("role", "stack")
        model.setdefault("encoder_layers", 0)
        model.setdefault("decoder_layers", 0)


# _STEPS[v] turns a document of version v into one of version v + 1, in place.
_STEPS: dict[int, Callable[[Document], None]] = {
    1: _gelu_was_tanh,
    2: _no_qk_norm_nor_options,
    3: _initialization_in_full_precision,
    4: _one_stack,
}
READABLE_VERSIONS = (*_STEPS, FORMAT_VERSION)

# What a reader of a file of an earlier version must know: by version, the activation names
# that meant another flavour than today's (the hints of lnref compare name them).
RENAMED_ACTIVATIONS = {1: {"gelu_tanh": "gelu"}}


def upgrade(document: Document) -> Document:
    """A copy of ``document`` (a config of a version in READABLE_VERSIONS) in the current
    format, its version included."""
    upgraded = copy.deepcopy(document)
    version = upgraded["format_version"]
    while version != FORMAT_VERSION:
        _STEPS[version](upgraded)
        version += 1
    upgraded["format_version"] = version
    return upgraded


def written_name(activation: str, version: int) -> str:
    """The name a file of format ``version`` gives the activation named ``activation`` today."""
    return RENAMED_ACTIVATIONS.get(version, {}).get(activation, activation)
