"""Norm kinds, QK-norm variants and activations of the PyTorch port, from their papers.

A norm kind maps x (..., n) over its last axis, given the parameters of one norm as a dict
{short name: tensor} ("gamma", "beta", ...) and the model's eps; a norm over each head's
features is the same function applied to x reshaped (..., H, d_h). Nothing here imports lnref.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ----- norm kinds: N(x) over the last axis ------------------------------------------------


def layer_norm(x, p, eps):
    """Ba et al. 2016: gamma * (x - mean) / sqrt(var + eps) + beta, biased variance."""
    return F.layer_norm(x, x.shape[-1:], p["gamma"], p["beta"], eps=eps)


def rms_norm(x, p, eps):
    """Zhang and Sennrich 2019: gamma * x / sqrt(mean(x^2) + eps)."""
    return F.rms_norm(x, x.shape[-1:], p["gamma"], eps=eps)


def dyt(x, p, eps):
    """Zhu et al. 2025 (Dynamic Tanh): gamma * tanh(alpha x) + beta, alpha a scalar; no
    statistics, no eps."""
    return p["gamma"] * torch.tanh(p["alpha"] * x) + p["beta"]


def scale_norm(x, p, eps):
    """Nguyen and Salazar 2019 (ScaleNorm): g x / max(||x||_2, eps), g a scalar."""
    return p["g"] * x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=eps)


def derf(x, p, eps):
    """Chen et al. 2025 (Dynamic erf): gamma * erf(alpha x + s) + beta, alpha and s scalars."""
    return p["gamma"] * torch.erf(p["alpha"] * x + p["shift"]) + p["beta"]


NORM_KINDS = {"layernorm": layer_norm, "rmsnorm": rms_norm, "dyt": dyt, "scalenorm": scale_norm, "derf": derf}


def per_head(fn, x, heads):
    """fn applied to each head's d/H features of x (..., d) on their own."""
    return fn(x.unflatten(-1, (heads, -1))).flatten(-2)


# ----- activations ------------------------------------------------------------------------


def activation(name, format_version):
    """The FFN's nonlinearity. Golden files before format version 2 call the tanh
    approximation "gelu"; from version 2 on "gelu" is the exact h * Phi(h)."""
    if name == "relu":
        return torch.relu
    if name == "gelu_tanh" or (name == "gelu" and format_version < 2):
        return lambda h: F.gelu(h, approximate="tanh")  # 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))
    if name == "gelu":
        return F.gelu  # h * Phi(h), Phi the standard normal CDF, through erf
    raise ValueError(f"the port has no activation {name!r}")


# ----- QK-norm: between the projections and the softmax -----------------------------------


def qk_norm(variant, q, k, v, heads, norm):
    """(q, k, v, s) for one attention whose logits are s * q_h k_h^T in each head h.

    q, k, v: (B, T, d) as projected; ``norm(name, x)`` applies the model's norm kind with
    the attention's parameters of that name (``layers.3.attn.q_norm``).
    """
    scale = 1 / math.sqrt(q.shape[-1] // heads)
    if variant == "none":
        return q, k, v, scale
    if variant == "head":  # Gemma 3, HybridNorm: N_q, N_k over each head's d_h features
        return (
            per_head(lambda t: norm("q_norm", t), q, heads),
            per_head(lambda t: norm("k_norm", t), k, heads),
            v,
            scale,
        )
    if variant == "full":  # OLMo 2: N_q, N_k over the whole d-wide projections, before the head split
        return norm("q_norm", q), norm("k_norm", k), v, scale
    raise ValueError(f"the port has no QK-norm variant {variant!r}")
