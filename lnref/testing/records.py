"""``golden(scheme, **config)``: the golden record of a configuration, in memory, cached.

A record holds what a golden file holds (docs/golden-format.md): the config, x, dy (and the
memory), the parameters, y, the loss, every gradient and every layer's hidden state. It is
computed exactly as ``lnref export`` and ``lnref export-suite`` compute a file, so a record and
the file of the same configuration hold the same bits; the pytest plugin reads such files in
place of computing (``--lnref-golden-dir``).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import numpy as np

from lnref.golden.load import Golden
from lnref.golden.suite import compute_record, record_key

# The sizes a record takes unless told otherwise: lnref.build's model, golden files' inputs.
DEFAULT_INPUTS = {"batch": 2, "seq": 8, "memory_len": None}


def golden(
    scheme: str,
    n_layers: int = 2,
    *,
    batch: int = 2,
    seq: int = 8,
    memory_len: int | None = None,
    point: str = "generic",
    rounded_to: str | None = None,
    **config: Any,
) -> Golden:
    """The golden record of ``lnref.build(scheme, n_layers, **config)``, cached per process.

    ``config`` takes ``build``'s options (d_model, n_heads, d_ff, norm, activation, causal,
    cross_attention, eps, dtype, seed, post_fraction, qk_norm, options). The parameters are at
    a generic point by default (every tensor moved off its initial value by 0.1 rms N(0, 1), so
    that no gain is 1 and no shift 0: a port that forgets one cannot pass); ``point="init"``
    keeps the initialization. ``rounded_to`` ("bfloat16", "float16") rounds the inputs and
    parameters to that precision, every output then computed in float64 from them. The
    arrays are read-only: the record is shared by every caller in the process.

    Attributes: ``config`` (lnref.Config), ``x``, ``dy``, ``memory``, ``params``, ``y``,
    ``loss``, ``grads`` (incl. "input"), ``hidden[l][stream]``, ``arrays`` (every array by its
    file name: ``grads/layers.0.attn.wq``, ``hidden/3/x``).
    """
    key = record_key(scheme, n_layers, batch, seq, memory_len, point, rounded_to, config)
    return _cached(key)


def from_arrays(label: str, arrays: dict[str, np.ndarray], document: dict[str, Any]) -> Golden:
    """A Golden over ``arrays`` (made read-only) described by the config ``document``."""
    from lnref.golden.format import FORMAT_VERSION
    from lnref.model import Config

    for value in arrays.values():
        value.setflags(write=False)
    inputs = document["inputs"]
    return Golden(
        label,
        Config(**document["model"]),
        inputs["batch"],
        inputs["seq"],
        inputs["memory_len"],
        document["lnref_version"],
        FORMAT_VERSION,
        arrays,
        document["point"],
        document["rounded_to"],
    )


def describe(key: str) -> str:
    """A record's configuration as a short call, for messages: golden('pre', 6, norm='rmsnorm')."""
    from lnref.model import Config

    described = json.loads(key)
    model = described["model"]
    defaults = {name: getattr(Config("post", 1), name) for name in model if name not in ("scheme", "n_layers")}
    defaults["options"] = {}
    changed = [f"{name}={value!r}" for name, value in model.items() if name in defaults and value != defaults[name]]
    changed += [f"{name}={value!r}" for name, value in described["inputs"].items() if DEFAULT_INPUTS.get(name) != value]
    if described["inputs"]["memory_len"] == described["inputs"]["seq"] and model["cross_attention"]:
        changed = [item for item in changed if not item.startswith("memory_len=")]
    changed += [f"point={described['point']!r}"] if described["point"] != "generic" else []
    changed += [f"rounded_to={described['rounded_to']!r}"] if described["rounded_to"] else []
    return f"golden({', '.join([repr(model['scheme']), str(model['n_layers']), *changed])})"


@functools.lru_cache(maxsize=2048)
def _cached(key: str) -> Golden:
    arrays, document = compute_record(key)
    return from_arrays(describe(key), arrays, document)


class SuiteRecords:
    """The records of a suite written by ``lnref export-suite``, looked up by configuration:
    :meth:`golden` takes :func:`golden`'s arguments and reads the case's file in place of
    computing it (LookupError when the suite has no such case)."""

    def __init__(self, directory: str) -> None:
        from lnref.golden.suite import read_suite

        self.directory = directory
        self.cases = {case.key(): case for case in read_suite(directory)}
        self._read: dict[str, Golden] = {}

    def golden(
        self,
        scheme: str,
        n_layers: int = 2,
        *,
        batch: int = 2,
        seq: int = 8,
        memory_len: int | None = None,
        point: str = "generic",
        rounded_to: str | None = None,
        **config: Any,
    ) -> Golden:
        from lnref.golden.load import load_golden

        key = record_key(scheme, n_layers, batch, seq, memory_len, point, rounded_to, config)
        if key not in self._read:
            case = self.cases.get(key)
            if case is None:
                raise LookupError(
                    f"the suite in {self.directory} has no case {describe(key)} "
                    f"({len(self.cases)} cases: lnref export-suite lists them in its manifest.json)"
                )
            record = load_golden(os.path.join(self.directory, case.file))
            for value in record.arrays.values():
                value.setflags(write=False)
            self._read[key] = record
        return self._read[key]
