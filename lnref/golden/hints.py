"""Hints: what the pattern of a failed comparison says about the implementation under test.

A hint runs only when a comparison with a golden file failed, and speaks only when it has
evidence. The GELU hint recomputes the file's model with the other GELU flavour and compares
ACTUAL with that: the two flavours differ far beyond float64 round-off, so a port using the
other flavour fails every tensor downstream of the first FFN, yet matches the other flavour's
arrays as closely as a correct port matches the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from lnref.golden.compat import written_name
from lnref.golden.export import golden_arrays

if TYPE_CHECKING:
    from lnref.golden.compare import TensorResult
    from lnref.golden.load import Golden

# Compares ACTUAL with other expected arrays under the comparison's own rule.
Recompare = Callable[[dict[str, np.ndarray]], "list[TensorResult]"]

OTHER_GELU = {"gelu": "gelu_tanh", "gelu_tanh": "gelu"}
GELU_NAME = {"gelu": "exact GELU x Phi(x) (lnref 'gelu')", "gelu_tanh": "tanh-approximated GELU (lnref 'gelu_tanh')"}
# How a port asks for each flavour, in the frameworks ports are written in.
GELU_CALL = {
    "gelu": "PyTorch nn.GELU() or F.gelu(x) (their default), JAX jax.nn.gelu(x, approximate=False)",
    "gelu_tanh": "PyTorch nn.GELU(approximate='tanh') or F.gelu(x, approximate='tanh'), "
    "JAX jax.nn.gelu(x) (its default)",
}
# A drop of the worst failing error by this factor, short of a full match, still points at
# the flavour (with a second discrepancy elsewhere).
CLOSER_BY = 100.0


def gelu_flavour(golden: Golden, results: Sequence[TensorResult], recompare: Recompare) -> str | None:
    """A hint naming the GELU flavour when ACTUAL matches (or comes far closer to) the file's
    model with the other flavour; None when the file's model has no GELU or nothing failed."""
    flavour = golden.config.activation
    failed = [r for r in results if r.status == "FAIL"]
    if flavour not in OTHER_GELU or not failed:
        return None
    other = OTHER_GELU[flavour]
    alternative = {r.name: r for r in recompare(_arrays_with(golden, other))}
    numeric = [r.name for r in results if r.status in ("ok", "FAIL")]
    written = written_name(flavour, golden.format_version)
    called = f", which this format-{golden.format_version} file calls '{written}'" if written != flavour else ""
    remedy = f"for this file use {GELU_CALL[flavour]}"
    if all(alternative[name].status == "ok" for name in numeric):
        return (
            f"ACTUAL matches this model with the {GELU_NAME[other]}, not with the file's {GELU_NAME[flavour]}"
            f"{called}: {remedy}"
        )
    before = max(_relative(r) for r in failed)
    after = max(_relative(alternative[r.name]) for r in failed)
    if after * CLOSER_BY <= before:
        return (
            f"with the {GELU_NAME[other]} in place of the file's {GELU_NAME[flavour]}{called}, the worst "
            f"failing error drops from {before:.2g} to {after:.2g} of scale: ACTUAL likely uses the other "
            f"GELU, and differs in something else as well; {remedy}"
        )
    return None


def _arrays_with(golden: Golden, activation: str) -> dict[str, np.ndarray]:
    """Every array of the file, as its model computes them with another activation."""
    from lnref.model import from_config

    model = from_config(dataclasses.replace(golden.config, activation=activation))
    model.load(golden.params)
    x, memory = golden.model_inputs
    return golden_arrays(model, x, golden.dy, memory)


def _relative(result: TensorResult) -> float:
    return float("inf") if result.max_rel_error is None else result.max_rel_error
