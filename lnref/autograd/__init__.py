"""A minimal tape-based reverse-mode autodiff over NumPy arrays.

``Tensor`` and ``Tape`` live in ``tensor.py``; every primitive (forward beside its
vector-Jacobian product) in ``ops.py``; the Numba kernels and their NumPy twins in
``kernels.py``; ``replay.py`` traces the primitives of one pass and replays them on new
arrays (what ``Model.gradients`` does for a repeated pass).
"""

from lnref.autograd import ops
from lnref.autograd.ops import PRIMITIVES
from lnref.autograd.tensor import Tape, Tensor, value_and_grad

__all__ = ["PRIMITIVES", "Tape", "Tensor", "ops", "value_and_grad"]
