"""``check_vjp``: the checker for one function of arrays, as small as HIPS autograd's ``check_grads``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lnref.autograd import Tape, Tensor
from lnref.finite_diff import central_difference, step_and_rtol
from lnref.gradcheck.report import Check, compare


def check_vjp(
    fn: Callable[..., Tensor],
    *arrays: Any,
    seed: int = 0,
    step: float | None = None,
    rtol: float | None = None,
    atol: float = 0.0,
) -> list[Check]:
    """Check the VJP of ``fn(*Tensors) -> Tensor`` for every argument, one seeded direction each.

    The output is contracted with a seeded random cotangent u, so the scalar compared is
    <fn(arrays), u>; returns one ``Check`` per argument (tensor names "arg0", "arg1", ...).
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    h, rtol = step_and_rtol(arrays[0].dtype, step, rtol)
    rng = np.random.default_rng(seed)
    leaves = [Tensor(a, requires_grad=True) for a in arrays]
    with Tape() as tape:
        out = fn(*leaves)
    cotangent = rng.standard_normal(out.shape).astype(out.dtype)
    tape.backward(out, cotangent)
    eps = np.finfo(out.dtype).eps
    scale = float(np.abs(out.value * cotangent).sum())

    def value(moved: list[Any]) -> float:
        return float(np.sum(fn(*[Tensor(a) for a in moved]).value * cotangent))

    f0 = value(list(arrays))
    checks = []
    for i, leaf in enumerate(leaves):
        direction = rng.standard_normal(leaf.shape)
        direction = (direction / max(np.linalg.norm(direction), 1e-300)).astype(leaf.dtype)

        def f(t: float, i: int = i, direction: np.ndarray = direction) -> float:
            return value([a + t * direction if j == i else a for j, a in enumerate(arrays)])

        numeric, sigma = central_difference(f, h, f0)
        analytic = float(np.sum(leaf.grad_or_zeros() * direction))
        checks.append(
            compare(f"arg{i}", "function", "direction", analytic, numeric, max(sigma, eps * scale), h, rtol, atol)
        )
    return checks
