"""Hints: what the pattern of a failed comparison says about the implementation under test.

A hint runs only when a comparison with a golden record failed, and speaks only when it has
evidence: it recomputes the record's model with one usual mistake made on purpose and compares
ACTUAL with that under the same rule. Each mistake moves the arrays far beyond float64
round-off, so a port that made it fails the record yet matches the mistaken model as closely
as a correct port matches the record. The mistakes tried:

    the other GELU flavour          exact x Phi(x) against the tanh approximation
    another eps                     the defaults of the usual frameworks (1e-5, 1e-6, 1e-12)
    weights used untransposed       x @ W.T for every square W (lnref's W loaded as nn.Linear's weight)
    gradients saved transposed      ACTUAL's weight gradients in the (d_out, d_in) layout
    the final norm missing, twice   the stack's final norm skipped, or applied two times
    the final norm inside the loop  a diverging state equal to the final norm of the expected one
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lnref.golden.compat import written_name
from lnref.golden.export import golden_arrays
from lnref.golden.format import is_weight_matrix

if TYPE_CHECKING:
    from lnref.golden.load import Golden
    from lnref.model import Model


class TensorResult(Protocol):
    """What a hint reads of one tensor's comparison (``lnref.golden.compare.TensorResult``)."""

    name: str
    status: str
    max_rel_error: float | None


# Compares ACTUAL (or other actual arrays) with other expected arrays under the comparison's rule.
Recompare = Callable[..., "Sequence[TensorResult]"]
Arrays = dict[str, np.ndarray]

OTHER_GELU = {"gelu": "gelu_tanh", "gelu_tanh": "gelu"}
GELU_NAME = {"gelu": "exact GELU x Phi(x) (lnref 'gelu')", "gelu_tanh": "tanh-approximated GELU (lnref 'gelu_tanh')"}
# How a port asks for each flavour, in the frameworks ports are written in.
GELU_CALL = {
    "gelu": "PyTorch nn.GELU() or F.gelu(x) (their default), JAX jax.nn.gelu(x, approximate=False)",
    "gelu_tanh": "PyTorch nn.GELU(approximate='tanh') or F.gelu(x, approximate='tanh'), "
    "JAX jax.nn.gelu(x) (its default)",
}
# The epsilons ports take from their frameworks' defaults: PyTorch's LayerNorm (1e-5), Flax's
# LayerNorm and T5/LLaMA's RMSNorm (1e-6), BERT's LayerNorm (1e-12).
USUAL_EPS = (1e-5, 1e-6, 1e-12)
FINAL_NORM = "final_ln"
# A drop of the worst failing error by this factor, short of a full match, still points at
# the flavour (with a second discrepancy elsewhere).
CLOSER_BY = 100.0


def diagnose(golden: Golden, results: Sequence[TensorResult], actual: Arrays, recompare: Recompare) -> list[str]:
    """Every hint that the evidence supports, as sentences (none when nothing failed)."""
    if not any(r.status in ("FAIL", "shape") for r in results):
        return []
    found: list[str | None] = []
    for hint in (gelu_flavour, other_eps, untransposed_weights):
        found.append(_unless_unbuildable(lambda hint=hint: hint(golden, results, recompare)))
    found.append(transposed_gradients(golden, results, actual, recompare))
    found.extend(_unless_unbuildable(lambda: final_norm(golden, results, actual, recompare)) or [])
    return [hint for hint in found if hint is not None]


def _unless_unbuildable(hint: Callable[[], Any]) -> Any:
    """The hint, or None where its mistaken model is one the scheme refuses (ConfigError)."""
    from lnref.model import ConfigError

    try:
        return hint()
    except ConfigError:
        return None


def gelu_flavour(golden: Golden, results: Sequence[TensorResult], recompare: Recompare) -> str | None:
    """A hint naming the GELU flavour when ACTUAL matches (or comes far closer to) the file's
    model with the other flavour; None when the file's model has no GELU or nothing failed."""
    flavour = golden.config.activation
    failed = [r for r in results if r.status == "FAIL"]
    if flavour not in OTHER_GELU or not failed:
        return None
    other = OTHER_GELU[flavour]
    alternative = {r.name: r for r in recompare(_recomputed(golden, activation=other))}
    written = written_name(flavour, golden.format_version)
    called = f", which this format-{golden.format_version} file calls '{written}'" if written != flavour else ""
    remedy = f"for this file use {GELU_CALL[flavour]}"
    if _all_pass(results, alternative):
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


def other_eps(golden: Golden, results: Sequence[TensorResult], recompare: Recompare) -> str | None:
    """A hint when ACTUAL matches the model with one of the usual frameworks' epsilons."""
    if not _has_norms(golden):
        return None
    for eps in USUAL_EPS:
        if eps != golden.config.eps and _all_pass(results, _by_name(recompare(_recomputed(golden, eps=eps)))):
            return (
                f"ACTUAL matches this model with eps {eps:g}, not the record's {golden.config.eps:g}: "
                f"an eps mismatch (a framework default, e.g. PyTorch LayerNorm 1e-5, Flax 1e-6, BERT 1e-12); "
                f"give every norm eps={golden.config.eps:g}"
            )
    return None


def untransposed_weights(golden: Golden, results: Sequence[TensorResult], recompare: Recompare) -> str | None:
    """A hint when ACTUAL matches the model that uses every square weight matrix transposed:
    lnref's W (d_in, d_out) loaded as a PyTorch nn.Linear weight, which computes x @ W.T."""
    square = [name for name, value in golden.params.items() if _square_weight(name, value)]
    if not square:
        return None
    params = {name: (value.T.copy() if name in square else value) for name, value in golden.params.items()}
    arrays = _recomputed(golden, params=params)
    arrays.update({f"params/{name}": golden.params[name] for name in square})
    arrays.update({f"grads/{name}": arrays[f"grads/{name}"].T for name in square})
    if _all_pass(results, _by_name(recompare(arrays))):
        return (
            "ACTUAL matches this model with every square weight matrix used transposed (x @ W.T): lnref stores "
            "W as (d_in, d_out), y = x @ W + b; a PyTorch nn.Linear weight is W.T (load weight = W.T)"
        )
    return None


def transposed_gradients(
    golden: Golden, results: Sequence[TensorResult], actual: Arrays, recompare: Recompare
) -> str | None:
    """A hint when only weight matrices fail and their transposes agree: ACTUAL stores its
    weights (or their gradients) in the (d_out, d_in) layout."""
    failing = [r for r in results if r.status in ("FAIL", "shape")]
    if not failing or not all(is_weight_matrix(r.name) for r in failing):
        return None
    flipped = {
        name: (value.T if value.ndim == 2 and is_weight_matrix(name) else value) for name, value in actual.items()
    }
    if _all_pass(results, _by_name(recompare(golden.arrays, flipped))):
        return (
            "ACTUAL's weight matrices agree once transposed: it stores them (d_out, d_in), as torch.nn.Linear "
            "does; pass transpose_weights=True (lnref compare --transpose-weights)"
        )
    return None


def final_norm(golden: Golden, results: Sequence[TensorResult], actual: Arrays, recompare: Recompare) -> list[str]:
    """Hints when ACTUAL matches the model with its final norm missing or applied twice, or
    when a diverging state is the final norm of the expected state (the norm inside the loop)."""
    if f"{FINAL_NORM}.gamma" not in golden.params:
        return []
    hints = []
    for times, what in ((0, "without its final norm"), (2, "with its final norm applied twice")):
        if _all_pass(results, _by_name(recompare(_recomputed(golden, final_norm_times=times)))):
            hints.append(
                f"ACTUAL matches this model {what}: the stack's final norm ({FINAL_NORM}) is applied once, "
                "after the last layer"
            )
    failing = [r.name for r in results if r.status == "FAIL" and r.name.startswith("hidden/")]
    if failing and failing[0] in actual:
        name = failing[0]
        normed = {name: _final_norm_of(golden, golden.arrays[name])}
        if all(r.status == "ok" for r in recompare(normed)):
            hints.append(
                f"ACTUAL's {name} is the final norm ({FINAL_NORM}) of the expected state: the stack's final "
                "norm is applied inside the layer loop; it belongs after the last layer only"
            )
    return hints


# ----- the record's model, with one thing changed --------------------------------------------


def _recomputed(
    golden: Golden, params: Arrays | None = None, final_norm_times: int | None = None, **config_changes: Any
) -> Arrays:
    """Every array of the record, as its model computes them with ``config_changes``, other
    ``params``, or its final norm applied ``final_norm_times`` times."""
    from lnref.building import from_config
    from lnref.model import Model

    model = from_config(dataclasses.replace(golden.config, **config_changes))
    model.load(golden.params if params is None else params)
    if final_norm_times is not None:
        assert isinstance(model, Model)  # an encoder-decoder record has no stack-level final_ln
        _repeat_stack_norm(model, FINAL_NORM, final_norm_times)
    x, memory = golden.model_inputs
    return golden_arrays(model, x, golden.dy, memory)


def _repeat_stack_norm(model: Model, name: str, times: int) -> None:
    """Make ``model``'s scheme apply its stack norm ``name`` ``times`` times wherever it applies it."""
    scheme = model.scheme
    changed = types.ModuleType(scheme.__name__)
    changed.__dict__.update(vars(scheme))
    for stage in ("embed", "readout"):
        original = getattr(scheme, stage, None)
        if original is not None:
            setattr(changed, stage, _with_norm_repeated(original, name, times))
    model.scheme = changed


def _with_norm_repeated(stage: Callable[[Any, Any], Any], name: str, times: int) -> Callable[[Any, Any], Any]:
    class Repeated:
        def __init__(self, stack: Any) -> None:
            self.stack = stack

        def norm(self, norm_name: str, x: Any) -> Any:
            for _ in range(times if norm_name == name else 1):
                x = self.stack.norm(norm_name, x)
            return x

        def __getattr__(self, attribute: str) -> Any:
            return getattr(self.stack, attribute)

    return lambda x, stack: stage(x, Repeated(stack))


def _final_norm_of(golden: Golden, state: np.ndarray) -> np.ndarray:
    from lnref import nn

    params = {name.rpartition(".")[2]: value for name, value in golden.params.items() if name.startswith(FINAL_NORM)}
    return np.asarray(nn.norm(state, params, golden.config.norm, golden.config.eps).value)


def _has_norms(golden: Golden) -> bool:
    return any(name.endswith(".gamma") for name in golden.params)


def _square_weight(name: str, value: np.ndarray) -> bool:
    return is_weight_matrix(name) and value.ndim == 2 and value.shape[0] == value.shape[1]


def _by_name(results: Sequence[TensorResult]) -> dict[str, TensorResult]:
    return {r.name: r for r in results}


def _all_pass(results: Sequence[TensorResult], alternative: dict[str, TensorResult]) -> bool:
    """Every tensor ACTUAL holds with numbers (passing or failing the record) passes the alternative."""
    numeric = [r.name for r in results if r.status in ("ok", "FAIL", "shape")]
    return bool(numeric) and all(alternative[name].status == "ok" for name in numeric)


def _relative(result: TensorResult) -> float:
    return float("inf") if result.max_rel_error is None else result.max_rel_error
