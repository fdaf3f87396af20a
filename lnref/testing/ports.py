"""``check_port``: one call that runs a port over its whole matrix of depths and options and
checks every case against lnref's golden record."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lnref.golden.compare import Comparison
from lnref.testing.assertions import assert_matches
from lnref.testing.records import golden

# run(config, params, x, dy, memory) -> {name: array}: the port's y, loss, grads/..., hidden/...
Run = Callable[..., Mapping[str, Any]]


def check_port(
    run: Run,
    scheme: str,
    layers: Sequence[int] = (1, 2, 6),
    *,
    name_map: Mapping[str, str] | None = None,
    transpose_weights: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    **config: Any,
) -> list[tuple[str, Comparison]]:
    """Check ``run`` against lnref for each depth in ``layers`` and each option set of ``config``.

    ``config`` takes :func:`lnref.testing.golden`'s keywords; a list or tuple is a set of
    values to try, and the cases are every combination (``norm=["layernorm", "rmsnorm"],
    causal=[False, True]`` at three depths is twelve cases). For each case ``run(config,
    params, x, dy, memory)`` is called with the record's model config as a dict (the golden
    file's ``model`` object: scheme, n_layers, d_model, ..., eps, options), copies of its
    parameters by lnref's names, its inputs and cotangent (memory None without
    cross-attention), and returns the port's arrays by the record's names (any subset of
    ``y``, ``loss``, ``grads/...``, ``hidden/<l>/<stream>``). Every case runs; then an
    AssertionError lists each case's verdict and the full report of the first that failed.
    Returns (case, comparison) for every case when all pass.
    """
    names = list(config)
    choices = [value if isinstance(value, (list, tuple)) else [value] for value in config.values()]
    verdicts, reports, checked = [], [], []
    for n_layers in layers:
        for values in itertools.product(*choices):
            record = golden(scheme, n_layers, **dict(zip(names, values)))
            config_dict = {**record.config.to_dict()}
            params = {name: value.copy() for name, value in record.params.items()}
            memory = None if record.memory is None else record.memory.copy()
            try:
                actual = run(config_dict, params, record.x.copy(), record.dy.copy(), memory)
            except Exception as err:
                err.add_note(f"lnref.testing.check_port: raised by the port on {record.path}")
                raise
            try:
                comparison = assert_matches(
                    actual, record, name_map=name_map, transpose_weights=transpose_weights, rtol=rtol, atol=atol
                )
            except AssertionError as failure:
                verdicts.append(f"FAIL {record.path}: {_headline(str(failure))}")
                reports.append(str(failure))
            else:
                verdicts.append(f"ok   {record.path}: {comparison.passed} tensors")
                checked.append((record.path, comparison))
    if reports:
        summary = f"{len(reports)} of {len(verdicts)} cases failed"
        raise AssertionError("\n".join([summary, *verdicts, "", "the first failing case:", reports[0]]))
    return checked


def _headline(message: str) -> str:
    lines = message.splitlines()
    first = next((line for line in lines if line.startswith("first failing: ")), lines[0])
    return first.split(" (", 1)[0]
