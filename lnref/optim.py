"""Adam and AdamW, learning-rate schedules and gradient-norm clipping, on dicts of arrays.

Adam (Kingma and Ba 2015, Algorithm 1), at step t = 1, 2, ... with gradient g_t:

    m_t = beta1 m_(t-1) + (1 - beta1) g_t            v_t = beta2 v_(t-1) + (1 - beta2) g_t^2
    m^_t = m_t / (1 - beta1^t)                       v^_t = v_t / (1 - beta2^t)     (bias correction)
    theta_t = theta_(t-1) - lr_t m^_t / (sqrt(v^_t) + eps)

Weight decay comes in two forms:
  * ``Adam(weight_decay=lambda)`` adds lambda theta to the gradient before the moments: an L2
    penalty, which Adam's scaling then distorts.
  * ``AdamW(weight_decay=lambda)`` decouples it (Loshchilov and Hutter 2019, Algorithm 2) and
    shrinks the weights directly: theta_t = theta_(t-1) - lr_t (m^_t / (sqrt(v^_t) + eps) + lambda theta_(t-1)).
By default only matrices (ndim >= 2) decay, so biases, norm gains and scheme scalars do not.
The learning rate is the schedule's lr_t. PyTorch's AdamW does the same.

Updates happen in place, so every array in the dict keeps its identity. The order of operations
is fixed, so the same inputs give the same bits.
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("constant", "inverse_sqrt", "cosine")


def decays_by_default(name, value):
    """Matrices decay. Vectors and scalars (biases, gains, omega, alpha) do not."""
    return value.ndim >= 2


class Adam:
    """Adam with bias correction. ``weight_decay`` is an L2 term added to the gradient."""

    decoupled = False

    def __init__(self, params, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0, decays=decays_by_default):
        beta1, beta2 = betas
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"Adam betas must be in [0, 1), got {betas}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"Adam eps must be finite and > 0, got {eps}")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight decay must be finite and >= 0, got {weight_decay}")
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        self.decayed = {name for name, value in params.items() if decays(name, value)}
        self.m = {name: np.zeros_like(value) for name, value in params.items()}
        self.v = {name: np.zeros_like(value) for name, value in params.items()}
        self.t = 0

    def step(self, params, grads, lr):
        """One update of every array of ``params`` (in place) with ``grads`` at rate ``lr``."""
        self.t += 1
        correction1 = 1.0 - self.beta1**self.t
        correction2 = 1.0 - self.beta2**self.t
        for name, value in params.items():
            grad = grads[name]
            decay = self.weight_decay if name in self.decayed else 0.0
            if decay and not self.decoupled:
                grad = grad + decay * value
            m, v = self.m[name], self.v[name]
            m *= self.beta1
            m += (1.0 - self.beta1) * grad
            v *= self.beta2
            v += (1.0 - self.beta2) * grad * grad
            update = (m / correction1) / (np.sqrt(v / correction2) + self.eps)
            if decay and self.decoupled:
                update = update + decay * value
            value -= lr * update


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter 2019)."""

    decoupled = True


OPTIMIZERS = {"adam": Adam, "adamw": AdamW}


class Schedule:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then ``kind``:

        warm-up (t <= W):   lr_t = lr t / W
        constant:           lr_t = lr
        inverse_sqrt:       lr_t = lr sqrt(W / t)         (Vaswani et al. 2017, Sec. 5.3 shape)
        cosine:             lr_t = min_lr + (lr - min_lr) (1 + cos(pi (t - W) / (K - W))) / 2

    Steps count from 1 to ``total`` (K). With W = 0 the first step already uses the full rate,
    and inverse_sqrt decays as lr / sqrt(t).
    """

    def __init__(self, lr, warmup=0, total=1, kind="constant", min_lr=0.0):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be a finite number > 0, got {lr}")
        if total < 1:
            raise ValueError(f"steps must be >= 1, got {total}")
        if warmup < 0 or warmup > total:
            raise ValueError(f"warm-up must be between 0 and the number of steps ({total}), got {warmup}")
        if not (0 <= min_lr <= lr):
            raise ValueError(f"min_lr must be in [0, lr], got {min_lr}")
        self.lr, self.warmup, self.total, self.kind, self.min_lr = lr, warmup, total, kind, min_lr

    def __call__(self, step):
        """The learning rate of step ``step`` (1-based)."""
        if step <= self.warmup:
            return self.lr * step / self.warmup
        if self.kind == "constant":
            return self.lr
        if self.kind == "inverse_sqrt":
            return self.lr * math.sqrt(max(self.warmup, 1) / step)
        span = self.total - self.warmup
        progress = (step - self.warmup) / span if span else 1.0
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def global_norm(grads):
    """sqrt(sum over every array of the sum of its squares)."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def clip_by_global_norm(grads, max_norm):
    """(grads scaled by min(1, max_norm / norm), the norm before clipping).

    PyTorch's ``clip_grad_norm_`` divides by norm + 1e-6; here the division is exact, so a
    clipped gradient has norm ``max_norm`` to rounding. Returns the same dict when no scaling
    is needed."""
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"clip norm must be a finite number > 0, got {max_norm}")
    norm = global_norm(grads)
    if not math.isfinite(norm) or norm <= max_norm:
        return grads, norm
    scale = max_norm / norm
    return {name: g * scale for name, g in grads.items()}, norm
