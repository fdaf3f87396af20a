"""Norm kinds: what ``--norm`` chooses for every norm a scheme places.

A kind declares its parameters with their initial values (``init(width, dtype)``) and how it
applies (``apply(x, params, eps)``, through its primitive, whose forward and VJP live in
``lnref/autograd/ops.py`` over a kernel twin). Adding a kind is one entry here plus its
primitive; every scheme takes it through ``--norm``.

The kinds beyond LayerNorm and RMSNorm, and the code they were read against:

    dyt        Zhu, Chen, He, LeCun, Liu 2025, "Transformers without Normalization" (CVPR);
               jiachenzhu/DyT @aab5dde, dynamic_tanh.py (alpha_0 = 0.5, gamma 1, beta 0).
               The paper keeps 0.5 for every DyT of its non-LLM models; its LLaMA runs take
               a larger alpha_0 before attention than before the FFN and the final norm,
               smaller for wider models (7B: 0.8 and 0.2), and drop beta
               (other_tasks/LLaMA). A norm kind cannot tell where it sits: lnref takes 0.5 at
               every norm (set ``<norm>.alpha`` after ``build`` for the LLaMA values).
    scalenorm  Nguyen, Salazar 2019, "Transformers without Tears" (IWSLT);
               tnq177/transformers_without_tears @c2dfaaa, layers.py (ScaleNorm, g_0 =
               sqrt(d), the clamp at eps = 1e-5: lnref's --eps, 1e-5 by default).
    derf       Chen, Lu, Zhu, Sun, Liu 2025, "Stronger Normalization-Free Transformers"
               (arXiv 2512.10938); zlab-princeton/Derf @8dd9ea3, ViT/dynamic_erf.py:
               alpha and s learned scalars, alpha_0 = 0.5, s_0 = 0, gamma 1, beta 0 (their
               GPT-2 patch makes alpha_0 per place, as DyT's LLaMA runs do).
    rmsnorm_plus_one   Gemma 1-3's RMSNorm, whose learned gain is stored as an offset from 1;
               google-deepmind/gemma @7691fd4, gemma/gm/nn/_layers.py (RMSNorm: scale_plus_one,
               gamma_0 = 0). The same function as rmsnorm at gamma + 1; weight decay and a port
               reading the stored gamma see the difference.
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


def _rms_norm_plus_one_init(width: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    return {"gamma": np.zeros(width, dtype)}


def _dyt_init(width: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    return {"alpha": np.asarray(0.5, dtype), **_layer_norm_init(width, dtype)}


def _scale_norm_init(width: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    return {"g": np.asarray(np.sqrt(width), dtype)}


def _derf_init(width: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    return {"alpha": np.asarray(0.5, dtype), "shift": np.zeros((), dtype), **_layer_norm_init(width, dtype)}


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
        NormKind(
            "rmsnorm_plus_one",
            "(1 + gamma) * x / sqrt(mean(x^2) + eps), gamma_0 = 0 (Gemma)",
            _rms_norm_plus_one_init,
            lambda x, p, eps: ops.rms_norm(x, 1 + p["gamma"], eps=eps),
        ),
        NormKind(
            "dyt",
            "gamma * tanh(alpha x) + beta, alpha a learned scalar (alpha_0 = 0.5); no statistics",
            _dyt_init,
            lambda x, p, eps: ops.dyt(x, p["alpha"], p["gamma"], p["beta"]),
        ),
        NormKind(
            "scalenorm",
            "g x / max(||x||, eps), g a learned scalar (g_0 = sqrt(d))",
            _scale_norm_init,
            lambda x, p, eps: ops.scale_norm(x, p["g"], eps=eps),
        ),
        NormKind(
            "derf",
            "gamma * erf(alpha x + s) + beta, alpha and s learned scalars (alpha_0 = 0.5, s_0 = 0); no statistics",
            _derf_init,
            lambda x, p, eps: ops.derf(x, p["alpha"], p["shift"], p["gamma"], p["beta"]),
        ),
    )
}
