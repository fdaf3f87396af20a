"""``check_init``: a port's initialization against the scheme's, tensor by tensor, by z tests.

A wrong initialization still loads someone else's weights and passes every forward test, so it
is tested on its own: the port draws its parameters several times, lnref draws the scheme's
initialization (DeepNorm's beta, Admin's profiled omega, any scheme's ``initialize``) many
times, and each tensor's per-draw mean and per-draw variance are compared between the two by
two-sample z tests. The expected distribution is lnref's own, measured, never restated: every
scheme's scalings come in with no knowledge of them here. A tensor lnref initializes to the
same values on every draw (biases 0, gains 1, DLCL's 1/(l+2)) must be those values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnref.golden.format import is_weight_matrix
from lnref.testing.assertions import as_numpy

# sample_params(config, seed) -> {name: array}: one draw of the port's initialization
SampleParams = Callable[[dict[str, Any], int], Mapping[str, Any]]
CONSTANT_RTOL = 1e-6  # a port in float32 still holds lnref's float64 constants to this


@dataclass
class InitResult:
    """One tensor: ``status`` ok, off, missing (the port lacks it), extra (lnref lacks it) or
    shape; the per-draw mean and variance, lnref's and the port's, averaged over the draws, and
    the z values of their differences (None for a tensor of constants)."""

    name: str
    status: str
    expected_mean: float | None = None
    port_mean: float | None = None
    expected_var: float | None = None
    port_var: float | None = None
    z_mean: float | None = None
    z_var: float | None = None
    note: str = ""


def check_init(
    sample_params: SampleParams,
    scheme: str,
    n_layers: int = 2,
    *,
    draws: int = 16,
    reference_draws: int = 64,
    level: float = 1e-3,
    name_map: Mapping[str, str] | None = None,
    transpose_weights: bool = False,
    **config: Any,
) -> list[InitResult]:
    """Assert that ``sample_params`` initializes as lnref initializes ``scheme``.

    ``sample_params(config, seed)`` returns one draw of the port's parameters by lnref's names
    (``name_map`` renames them; ``transpose_weights`` for (d_out, d_in) weights), config being
    the model config as a dict (a golden file's ``model`` object); it is called for seeds 0 ..
    ``draws - 1``. lnref draws ``reference_draws`` times. For every tensor the per-draw mean and
    the per-draw variance are tested by two-sample z tests, the family of all tests at
    ``level`` (Bonferroni: each test at level / number of tests). Raises AssertionError naming
    the tensors that are off, with the statistics; returns every tensor's result otherwise.
    """
    from lnref.model import Config, Model

    model_config = Config(scheme, n_layers, **config)
    as_dict = model_config.to_dict()
    reference = [Model(Config(**{**as_dict, "seed": seed})).params for seed in range(reference_draws)]
    port = [_renamed(sample_params(dict(as_dict), seed), name_map, transpose_weights) for seed in range(draws)]
    names = list(reference[0])
    tests = 2 * len(names)
    critical = _two_sided_critical(level / tests)
    results = []
    for name in names:
        if any(name not in draw for draw in port):
            results.append(InitResult(name, "missing", note="the port's draws lack it"))
            continue
        shapes = {np.shape(draw[name]) for draw in port}
        if shapes != {reference[0][name].shape}:
            results.append(InitResult(name, "shape", note=f"port {sorted(shapes)}, lnref {reference[0][name].shape}"))
            continue
        results.append(_compare(name, [r[name] for r in reference], [p[name] for p in port], critical))
    extra = sorted({name for draw in port for name in draw} - set(names))
    results += [InitResult(name, "extra", note="lnref has no such parameter") for name in extra]
    off = [r for r in results if r.status != "ok"]
    if off:
        lines = [
            f"{len(off)} of {len(results)} tensors of the port's {scheme} initialization are off "
            f"({draws} draws against lnref's {reference_draws}; z tests, family-wise level {level:g}, "
            f"|z| > {critical:.2f} is off)"
        ]
        lines += [_describe(r) for r in off]
        raise AssertionError("\n".join(lines))
    return results


def _compare(name: str, reference: list[np.ndarray], port: list[np.ndarray], critical: float) -> InitResult:
    first = reference[0]
    if all(np.array_equal(draw, first) for draw in reference[1:]):
        worst = max(float(np.max(np.abs(p.astype(np.float64) - first), initial=0.0)) for p in port)
        scale = float(np.max(np.abs(first), initial=0.0))
        status = "ok" if worst <= CONSTANT_RTOL * max(scale, 1.0) else "off"
        constant = f"{float(first.flat[0]):g}" if first.size and np.all(first == first.flat[0]) else "lnref's values"
        return InitResult(name, status, note=f"constant {constant}; the port's draws differ by up to {worst:.3g}")
    result = InitResult(name, "ok")
    for statistic, field_name in ((np.mean, "mean"), (np.var, "var")):
        expected = np.array([statistic(r) for r in reference])
        actual = np.array([statistic(p.astype(np.float64)) for p in port])
        z = _z(expected, actual)
        setattr(result, f"expected_{field_name}", float(np.mean(expected)))
        setattr(result, f"port_{field_name}", float(np.mean(actual)))
        setattr(result, f"z_{field_name}", z)
        if not abs(z) <= critical:
            result.status = "off"
    return result


def _z(expected: np.ndarray, actual: np.ndarray) -> float:
    """The two-sample z value of the difference of means, with the pooled spread; a statistic
    lnref gives the same on every draw (a variance of 0) must be the same in the port."""
    difference = float(np.mean(actual) - np.mean(expected))
    pooled = (np.sum((expected - expected.mean()) ** 2) + np.sum((actual - actual.mean()) ** 2)) / (
        expected.size + actual.size - 2
    )
    spread = math.sqrt(pooled * (1 / expected.size + 1 / actual.size))
    if spread > CONSTANT_RTOL * max(abs(float(np.mean(expected))), 1e-12):
        return difference / spread
    return 0.0 if abs(difference) <= CONSTANT_RTOL * max(abs(float(np.mean(expected))), 1.0) else math.inf


def _two_sided_critical(alpha: float) -> float:
    """z with P(|Z| > z) = alpha for a standard normal Z (by bisection on erfc)."""
    low, high = 0.0, 40.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if math.erfc(middle / math.sqrt(2)) > alpha else (low, middle)
    return high


def _renamed(draw: Mapping[str, Any], name_map: Mapping[str, str] | None, transpose: bool) -> dict[str, np.ndarray]:
    renamed = {}
    for name, value in draw.items():
        name = (name_map or {}).get(name, name)
        array = as_numpy(value)
        renamed[name] = array.T if transpose and array.ndim == 2 and is_weight_matrix(name) else array
    return renamed


def _describe(result: InitResult) -> str:
    if result.z_mean is None:
        return f"{result.name}: {result.status}: {result.note}"
    return (
        f"{result.name}: {result.status}: per-draw mean {result.port_mean:.4g} (lnref {result.expected_mean:.4g}, "
        f"z {result.z_mean:.3g}), variance {result.port_var:.4g} (lnref {result.expected_var:.4g}, "
        f"z {result.z_var:.3g})"
    )
