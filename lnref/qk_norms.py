"""QK-norm: a switch that normalizes the queries and keys of every attention, for every scheme.

A variant declares the parameters it adds to each attention sublayer (``init(config)``, named
under the sublayer: ``layers.3.attn.q_norm.gamma``) and the pieces it puts into
``nn.attention`` (``pieces(view, prefix)``, prefix the sublayer's, ``layers.3.attn``: q_norm,
k_norm, v_norm callables). ``--qk-norm``
chooses one; "none" leaves attention as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnref import nn
from lnref.autograd import Tensor

Pieces = dict[str, Callable[[Tensor], Tensor]]


@dataclass(frozen=True)
class QKNorm:
    name: str
    summary: str
    init: Callable[[Any, np.dtype], dict[str, np.ndarray]]
    pieces: Callable[[Any, str], Pieces]


def _norm_params(width: Callable[[Any], int]) -> Callable[[Any, np.dtype], dict[str, np.ndarray]]:
    def init(config: Any, dtype: np.dtype) -> dict[str, np.ndarray]:
        params = {}
        for name in ("q_norm", "k_norm"):
            for short, value in nn.init_norm(config.norm, width(config), dtype).items():
                params[f"{name}.{short}"] = value
        return params

    return init


def _norm_pieces(per_head: bool) -> Callable[[Any, str], Pieces]:
    def pieces(view: Any, prefix: str) -> Pieces:
        cfg = view.config

        def norm_of(name: str) -> Callable[[Tensor], Tensor]:
            params = view.run.group(f"{prefix}.{name}")

            def apply(x: Tensor) -> Tensor:
                if per_head:
                    return nn.per_head(x, cfg.n_heads, lambda h: nn.norm(h, params, cfg.norm, cfg.eps))
                return nn.norm(x, params, cfg.norm, cfg.eps)

            return apply

        return {"q_norm": norm_of("q_norm"), "k_norm": norm_of("k_norm")}

    return pieces


QK_NORMS: dict[str, QKNorm] = {
    variant.name: variant
    for variant in (
        QKNorm("none", "q and k as projected", lambda config, dtype: {}, lambda view, prefix: {}),
        QKNorm(
            "head",
            "the norm of --norm on each head's q and k (Gemma 3, HybridNorm)",
            _norm_params(lambda c: c.d_model // c.n_heads),
            _norm_pieces(per_head=True),
        ),
        QKNorm(
            "full",
            "the norm of --norm over the whole q and k projections (OLMo 2)",
            _norm_params(lambda c: c.d_model),
            _norm_pieces(per_head=False),
        ),
    )
}
