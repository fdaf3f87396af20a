"""QK-norm: a switch that normalizes the queries and keys of every attention, for every scheme.

A variant declares the parameters it adds to each attention sublayer (``init(config)``, named
under the sublayer: ``layers.3.attn.q_norm.gamma``) and the pieces it puts into
``nn.attention`` (``pieces(view, prefix)``, prefix the sublayer's, ``layers.3.attn``: q_norm,
k_norm, v_norm callables). ``--qk-norm`` chooses one; "none" leaves attention as it is.

The attention core computes softmax(Q_h K_h^T / sqrt(Dh)). A variant that replaces that
1/sqrt(Dh) by a learned logit scale s multiplies each head's normalized queries by
s * sqrt(Dh): the core is left as it is (its kernels, its hand-written backward), and the
scale is a product the tape differentiates like any other.

    l2      Henry, Dachapally, Pawar, Chen 2020, "Query-Key Normalization for Transformers"
            (Findings of EMNLP); CyndxAI/QKNorm @c628cb5, QKNorm/layers.py: each
            head's q and k divided by their L2 norms, the cosine logits times one learned
            scalar g per attention sublayer, g_0 = log2(L^2 - L) with L the 97.5th
            percentile of the training sequence lengths. lnref's configuration has no
            training length: L is :data:`L2_GAIN_LENGTH`, the length of ``lnref train``'s
            tasks by default. The official code normalizes with PyTorch's
            ``F.normalize`` (a norm clamped at 1e-12); lnref refuses a zero q or k instead.
    cosine  Liu et al. 2022, "Swin Transformer V2" (CVPR), scaled cosine attention;
            microsoft/Swin-Transformer @f82860b, models/swin_transformer_v2.py
            (WindowAttention): a learned log logit scale per head, initialized at log(10),
            the logit scale exp(min(log scale, log 100)), i.e. the paper's temperature tau
            held above 0.01. The paper adds a relative position bias (its continuous
            position MLP); lnref has no positions and leaves it out. Swin's key projection
            has no bias; lnref keeps bk, which the normalization makes matter (without a
            QK-norm its gradient is exactly 0).
    head+v  HybridNorm (Zhuo et al. 2025): the norm of --norm on each head's q, k and v.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnref import nn
from lnref.autograd import Tensor, ops

Pieces = dict[str, Callable[[Tensor], Tensor]]

L2_GAIN_LENGTH = 16  # the sequence length L of g_0 = log2(L^2 - L) in the l2 variant
MAX_LOG_LOGIT_SCALE = math.log(100.0)  # Swin V2's clamp: tau >= 0.01


@dataclass(frozen=True)
class QKNorm:
    name: str
    summary: str
    init: Callable[[Any, np.dtype], dict[str, np.ndarray]]
    pieces: Callable[[Any, str], Pieces]


def _norm_params(
    width: Callable[[Any], int], names: tuple[str, ...] = ("q_norm", "k_norm")
) -> Callable[[Any, np.dtype], dict[str, np.ndarray]]:
    def init(config: Any, dtype: np.dtype) -> dict[str, np.ndarray]:
        params = {}
        for name in names:
            for short, value in nn.init_norm(config.norm, width(config), dtype).items():
                params[f"{name}.{short}"] = value
        return params

    return init


def _norm_pieces(per_head: bool, names: tuple[str, ...] = ("q_norm", "k_norm")) -> Callable[[Any, str], Pieces]:
    def pieces(view: Any, prefix: str) -> Pieces:
        cfg = view.config

        def norm_of(name: str) -> Callable[[Tensor], Tensor]:
            params = view.run.group(f"{prefix}.{name}")

            def apply(x: Tensor) -> Tensor:
                if per_head:
                    return nn.per_head(x, cfg.n_heads, lambda h: nn.norm(h, params, cfg.norm, cfg.eps))
                return nn.norm(x, params, cfg.norm, cfg.eps)

            return apply

        return {name: norm_of(name) for name in names}

    return pieces


def _cosine_pieces(logit_scale: Callable[[dict[str, Any]], Any]) -> Callable[[Any, str], Pieces]:
    """Each head's q and k L2-normalized, q times ``logit_scale(params) * sqrt(Dh)`` (params the
    sublayer's), a scalar or one value per head."""

    def pieces(view: Any, prefix: str) -> Pieces:
        heads = view.config.n_heads
        scale = ops.mul(logit_scale(view.run.group(prefix)), math.sqrt(view.config.d_model // heads))
        per_head_scale = ops.reshape(scale, shape=(heads, 1)) if scale.ndim else scale

        def queries(q: Tensor) -> Tensor:
            return nn.per_head(q, heads, lambda h: ops.l2_normalize(h) * per_head_scale)

        def keys(k: Tensor) -> Tensor:
            return nn.per_head(k, heads, ops.l2_normalize)

        return {"q_norm": queries, "k_norm": keys}

    return pieces


def _l2_init(config: Any, dtype: np.dtype) -> dict[str, np.ndarray]:
    return {"logit_gain": np.asarray(math.log2(L2_GAIN_LENGTH**2 - L2_GAIN_LENGTH), dtype)}


def _swin_init(config: Any, dtype: np.dtype) -> dict[str, np.ndarray]:
    return {"log_logit_scale": np.full(config.n_heads, math.log(10.0), dtype)}


def _head_width(config: Any) -> int:
    return int(config.d_model // config.n_heads)


QK_NORMS: dict[str, QKNorm] = {
    variant.name: variant
    for variant in (
        QKNorm("none", "q and k as projected", lambda config, dtype: {}, lambda view, prefix: {}),
        QKNorm(
            "head",
            "the norm of --norm on each head's q and k (Gemma 3, HybridNorm)",
            _norm_params(_head_width),
            _norm_pieces(per_head=True),
        ),
        QKNorm(
            "full",
            "the norm of --norm over the whole q and k projections (OLMo 2)",
            _norm_params(lambda c: c.d_model),
            _norm_pieces(per_head=False),
        ),
        QKNorm(
            "head+v",
            "the norm of --norm on each head's q, k and v (HybridNorm's QKV-norm)",
            _norm_params(_head_width, ("q_norm", "k_norm", "v_norm")),
            _norm_pieces(per_head=True, names=("q_norm", "k_norm", "v_norm")),
        ),
        QKNorm(
            "l2",
            "logits g <q/||q||, k/||k||> per head, g a learned scalar per attention, "
            f"g_0 = log2(L^2 - L), L = {L2_GAIN_LENGTH} (Henry et al. 2020, QKNorm)",
            _l2_init,
            _cosine_pieces(lambda p: p["logit_gain"]),
        ),
        QKNorm(
            "cosine",
            "logits cos(q, k) exp(min(t_h, log 100)) per head h, t_h learned, t_0 = log 10 "
            "(Swin Transformer V2's scaled cosine attention)",
            _swin_init,
            _cosine_pieces(lambda p: ops.exp(ops.clamp(p["log_logit_scale"], high=MAX_LOG_LOGIT_SCALE))),
        ),
    )
}
