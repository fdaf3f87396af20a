"""Pieces a scheme hands a sublayer that the model's view recognizes.

Each stands for a small composition and gives it (``Scaled.compose()``; a ``HeadL2Norm`` is a
function of x, as a norm piece is): where the view computes the sublayer as the readable
composition (``nn.attention``, ``nn.ffn``), it takes that; where it takes a fused primitive
(``lnref/views.py``), it hands the primitive the piece's parameter, with the constant as a
static parameter, and no step of the pass is spent on either.

    Scaled(value, factor)        value * factor: a parameter used times a constant (a
                                 parameter stored rescaled, as nGPT stores its scales)
    HeadL2Norm(gain, n_heads)    each head's Dh features of x divided by their L2 norm, times
                                 the head's part of gain (d,):  x_h / ||x_h|| * gain_h
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lnref import nn
from lnref.autograd import Tensor, ops


@dataclass(frozen=True)
class Scaled:
    """``value`` times the constant ``factor``."""

    value: Any
    factor: float

    def compose(self) -> Tensor:
        """value * factor, one product on the tape."""
        return ops.mul(self.value, self.factor)


@dataclass(frozen=True)
class HeadL2Norm:
    """x_h / ||x_h|| * gain_h for each head h of x (..., d): the L2 normalization of its Dh
    features (``ops.l2_normalize``, which refuses the zero vector), times the gain (d,) cut
    into heads as x is."""

    gain: Scaled
    n_heads: int

    def __call__(self, x: Any) -> Tensor:
        gain = ops.reshape(self.gain.compose(), shape=(self.n_heads, -1))  # (H, Dh)
        return nn.per_head(x, self.n_heads, lambda heads: ops.l2_normalize(heads) * gain)
