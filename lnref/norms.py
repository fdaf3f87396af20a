"""Norm kinds: what ``--norm`` chooses for every norm a scheme places.

A kind declares its parameters with their initial values (``init(width, dtype)``) and how it
applies (``apply(x, params, eps)``, through its primitive, whose forward and VJP live in
``lnref/autograd/ops.py`` over a kernel twin). Adding a kind is one entry here plus its
primitive; every scheme takes it through ``--norm``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnref.autograd import Tensor, ops

Params = Mapping[str, Any]


@dataclass(frozen=True)
class NormKind:
    name: str
    equation: str
    init: Callable[[int, np.dtype], dict[str, np.ndarray]]
    apply: Callable[[Any, Params, float], Tensor]


def _layer_norm_init(width: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    return {"gamma": np.ones(width, dtype), "beta": np.zeros(width, dtype)}


def _rms_norm_init(width: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    return {"gamma": np.ones(width, dtype)}


NORM_KINDS: dict[str, NormKind] = {
    kind.name: kind
    for kind in (
        NormKind(
            "layernorm",
            "gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta",
            _layer_norm_init,
            lambda x, p, eps: ops.layer_norm(x, p["gamma"], p["beta"], eps=eps),
        ),
        NormKind(
            "rmsnorm",
            "gamma * x / sqrt(mean(x^2) + eps)",
            _rms_norm_init,
            lambda x, p, eps: ops.rms_norm(x, p["gamma"], eps=eps),
        ),
    )
}
