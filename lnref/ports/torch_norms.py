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
    """Zhu et al. 2025, Transformers without Normalization (DyT; jiachenzhu/DyT
    dynamic_tanh.py): gamma * tanh(alpha x) + beta, alpha a scalar; no statistics, no eps."""
    return p["gamma"] * torch.tanh(p["alpha"] * x) + p["beta"]


def scale_norm(x, p, eps):
    """Nguyen and Salazar 2019, Transformers without Tears, Sec. 2.2 (ScaleNorm;
    tnq177/transformers_without_tears layers.py): g x / max(||x||_2, eps), g a scalar."""
    return p["g"] * x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=eps)


def derf(x, p, eps):
    """Chen et al. 2025, Stronger Normalization-Free Transformers (Derf, arXiv 2512.10938):
    gamma * erf(alpha x + s) + beta, alpha and s scalars."""
    return p["gamma"] * torch.erf(p["alpha"] * x + p["shift"]) + p["beta"]


def rms_norm_plus_one(x, p, eps):
    """Gemma's RMSNorm (Gemma Team 2024; google-deepmind/gemma gemma/gm/nn/_layers.py, RMSNorm):
    (1 + gamma) * x / sqrt(mean(x^2) + eps), the gain stored minus one (gamma 0 at init)."""
    return (1 + p["gamma"]) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


NORM_KINDS = {
    "layernorm": layer_norm,
    "rmsnorm": rms_norm,
    "dyt": dyt,
    "scalenorm": scale_norm,
    "derf": derf,
    "rmsnorm_plus_one": rms_norm_plus_one,
}


def per_head(fn, x, heads):
    """fn applied to each head's d/H features of x (..., d) on their own."""
    return fn(x.unflatten(-1, (heads, -1))).flatten(-2)


# ----- activations ------------------------------------------------------------------------


def activation(name):
    """The FFN's nonlinearity by its name in a golden file of format version 2."""
    if name == "relu":
        return torch.relu
    if name == "gelu":
        return F.gelu  # h * Phi(h), Phi the standard normal CDF, through erf: torch's default
    if name == "gelu_tanh":
        return lambda h: F.gelu(h, approximate="tanh")  # 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))
    raise ValueError(f"the port has no activation {name!r}")


# ----- QK-norm: between the projections and the softmax -----------------------------------


# Each variant maps the projected q, k, v (B, T, d) of one attention to (q, k, v, s), the
# logits being s * q_h k_h^T in each head h. norm(name, x) applies the model's norm kind with
# the attention's parameters of that name (layers.3.attn.q_norm); param(name) is the
# attention's parameter of that name (layers.3.attn.logit_gain).


def no_qk_norm(q, k, v, heads, norm, param):
    """Vaswani et al. 2017: q and k as projected, s = 1/sqrt(d_h)."""
    return q, k, v, 1 / math.sqrt(q.shape[-1] // heads)


def head_qk_norm(q, k, v, heads, norm, param):
    """Gemma 3, HybridNorm: N_q and N_k over each head's d_h features."""
    q, k = per_head(lambda t: norm("q_norm", t), q, heads), per_head(lambda t: norm("k_norm", t), k, heads)
    return q, k, v, 1 / math.sqrt(q.shape[-1] // heads)


def head_qkv_norm(q, k, v, heads, norm, param):
    """HybridNorm's QKV-norm: N_q, N_k and N_v over each head's d_h features."""
    q, k, _, scale = head_qk_norm(q, k, v, heads, norm, param)
    return q, k, per_head(lambda t: norm("v_norm", t), v, heads), scale


def full_qk_norm(q, k, v, heads, norm, param):
    """OLMo 2: N_q and N_k over the whole d-wide projections, before the heads are split."""
    return norm("q_norm", q), norm("k_norm", k), v, 1 / math.sqrt(q.shape[-1] // heads)


def unit_heads(x, heads):
    """Each head's vector of x divided by its L2 norm."""
    return per_head(lambda h: h / torch.linalg.vector_norm(h, dim=-1, keepdim=True), x, heads)


def l2_qk_norm(q, k, v, heads, norm, param):
    """Henry et al. 2020, Query-Key Normalization (CyndxAI/QKNorm layers.py): logits
    g <q_h/|q_h|, k_h/|k_h|>, one learned g per attention."""
    return unit_heads(q, heads), unit_heads(k, heads), v, param("logit_gain")


def cosine_qk_norm(q, k, v, heads, norm, param):
    """Liu et al. 2022, Swin Transformer V2, Sec. 3.2 (swin_transformer_v2.py): logits
    cos(q_h, k_h) exp(min(t_h, log 100)), one learned t_h per head."""
    t = param("log_logit_scale").clamp(max=math.log(100.0))
    return unit_heads(q, heads), unit_heads(k, heads), v, t.exp().reshape(heads, 1, 1)


QK_NORMS = {
    "none": no_qk_norm,
    "head": head_qk_norm,
    "head+v": head_qkv_norm,
    "full": full_qk_norm,
    "l2": l2_qk_norm,
    "cosine": cosine_qk_norm,
}
