"""Where a pass's time goes: every kernel call and every primitive that computes by itself,
timed and sorted by the kind of work it does.

    with TimeSplit() as split:
        model.value_and_grad(x, dy)
    split.seconds   # {"products": ..., "attention": ..., "norms": ..., "element-wise": ..., ...}

Within the block, each kernel twin's picked implementation (``seam.wrapped``), the softmax
and its backward in attention's blocked path and the forward and VJP of each primitive that computes in NumPy
itself (``add``, ``reshape``, ``matmul``, ...) run inside a timer; a primitive that hands its
work to a kernel is not timed by itself (its Python, checks and reshapes are overhead, like
the tape's). Times are exclusive: a kernel's time is taken out of the call around it, so that
the blocked attention's products count as products and its softmax loop as attention. Outside
the block nothing is wrapped: the registry and the twins hold their own functions again, and
the hot path pays nothing.

The kinds (:data:`KINDS`):

* ``products``: the linear maps and matrix products (BLAS, or the compiled product loops), and
  a sublayer's NumPy/BLAS twin outside the kernels it calls (its products, with their bias
  adds and row sums); the gated maps of mHC's weights too, whose product's p q multiply-adds a
  row dwarf the q scalings and sigmoids after it;
* ``attention``: softmax and the attention core's loops (the loop twins do Q K^T and P V
  inside them; the blocked path's products count as products);
* ``norms``: the norm kinds' kernels;
* ``element-wise``: adds, scales, activations, reshapes, sums, weighted sums of streams,
  Sinkhorn's rounds, the primitives computing in NumPy;
* ``compiled sublayers``: a whole attention or FFN sublayer in one compiled call each way (the
  small sizes' fast path), whose products and loops one timer cannot tell apart.

What none of them holds (a pass's time without the timers minus their sum) is the Python
around the work: the tape, the replay, the primitives' own code, gradient accumulation.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

from lnref.autograd import primitive
from lnref.autograd.kernels import attention_blocked, seam
from lnref.autograd.primitive import Primitive

PRODUCTS, ATTENTION, NORMS, ELEMENTWISE, SUBLAYERS = (
    "products",
    "attention",
    "norms",
    "element-wise",
    "compiled sublayers",
)
KINDS = (PRODUCTS, ATTENTION, NORMS, ELEMENTWISE, SUBLAYERS)

# The primitives that compute in NumPy themselves, by the kind of their work; every other
# primitive hands its work to the kernels, which are timed instead.
PRIMITIVE_KINDS = {
    **dict.fromkeys(("add", "sub", "mul", "div", "neg", "relu", "absolute", "exp", "clamp"), ELEMENTWISE),
    **dict.fromkeys(("tanh", "sigmoid", "sum", "reshape", "index", "stop_gradient", "cross_entropy"), ELEMENTWISE),
    **dict.fromkeys(("sub_scaled_stop_gradient", "mul_sigmoid", "sum_of_products"), ELEMENTWISE),
    **dict.fromkeys(("matmul", "linear_per_row"), PRODUCTS),
}

# Each kernel by the kind of its work; a sublayer's NumPy twin is a composition of kernels and
# products, its compiled loop one call (see the module docstring).
_KERNEL_FAMILIES = (
    (("linear_", "scaled_linear_"), PRODUCTS),
    (("attention_forward", "attention_backward", "softmax_"), ATTENTION),
    (("layer_norm_", "rms_norm_", "dyt_", "derf_", "scale_norm_", "normalized_lerp_"), NORMS),
    (("gelu_", "relu_", "sinkhorn_", "weighted_sum_", "mix_streams_"), ELEMENTWISE),
)
_SUBLAYER_TWIN_KINDS = {
    "attention_sublayer": PRODUCTS,
    "heads_pieces_attention": ELEMENTWISE,
    "l2_heads_attention": ELEMENTWISE,
    "feed_forward": ELEMENTWISE,
    "normed_feed_forward": ELEMENTWISE,
    "scaled_feed_forward": ELEMENTWISE,
    "residual_normed_attention": ELEMENTWISE,
    "residual_normed_feed_forward": ELEMENTWISE,
    "normed_sum_attention": ELEMENTWISE,
    "normed_sum_feed_forward": ELEMENTWISE,
    "normed_scaled_sum_attention": ELEMENTWISE,
    "normed_scaled_sum_feed_forward": ELEMENTWISE,
    "residual_normed_heads_pieces_attention": ELEMENTWISE,
    "residual_normed_normed_feed_forward": ELEMENTWISE,
    "mixed_normed_attention": ELEMENTWISE,
    "mixed_normed_feed_forward": ELEMENTWISE,
    "mixing_mappings": ELEMENTWISE,
    "two_stream_normed_attention": ELEMENTWISE,
    "two_stream_normed_feed_forward": ELEMENTWISE,
}

# Compiled loops that a path calls by module-level name, timed on their own.
_INNER_LOOPS: tuple[tuple[ModuleType, str, str], ...] = (
    (attention_blocked, "_attention_probs", ATTENTION),
    (attention_blocked, "_attention_dscores_kernel", ATTENTION),
)


def kernel_kind(twin: seam.Twin, implementation: Any) -> str:
    """The kind of work of ``implementation``, one of ``twin``'s paths."""
    for family, kind in _SUBLAYER_TWIN_KINDS.items():
        if twin.name.startswith(family):
            return SUBLAYERS if implementation is twin.loop else kind
    if implementation is twin.blocked:
        return PRODUCTS  # its loops are timed on their own
    for prefixes, kind in _KERNEL_FAMILIES:
        if twin.name.startswith(prefixes):
            return kind
    raise ValueError(f"the split has no kind for the kernel {twin.name!r}: add its family to timing.py")


class TimeSplit:
    """Seconds and calls by kind of work of the calls made within ``with TimeSplit():``
    (accumulated over every block it is used for)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(KINDS, 0.0)
        self.calls: Counter[str] = Counter()
        self._inner: list[float] = []  # per open timer: the time of the timers inside it
        self._saved: list[tuple[Any, str, Any]] = []

    def timed(self, kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, its time (less that of timed calls inside it) added to ``kind``."""
        inner, seconds, calls, clock = self._inner, self.seconds, self.calls, time.perf_counter

        @functools.wraps(fn)  # a replayed pass tells a timed primitive from a swapped one by it
        def run(*args: Any, **kwargs: Any) -> Any:
            inner.append(0.0)
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = clock() - started
                seconds[kind] += elapsed - inner.pop()
                calls[kind] += 1
                if inner:
                    inner[-1] += elapsed

        return run

    def __enter__(self) -> TimeSplit:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(seam.wrapped(lambda twin, fn: self.timed(kernel_kind(twin, fn), fn)))
        self._stack.callback(self._restore)
        for name, kind in PRIMITIVE_KINDS.items():
            original = primitive.PRIMITIVES.get(name)
            if original is not None:
                self._swap(primitive.PRIMITIVES, name, original, self._timed_primitive(original, kind))
        for module, name, kind in _INNER_LOOPS:
            original = getattr(module, name)
            self._swap(module, name, original, self.timed(kind, original))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _timed_primitive(self, original: Primitive, kind: str) -> Primitive:
        return Primitive(original.name, self.timed(kind, original.forward), self.timed(kind, original.vjp))

    def _swap(self, where: Any, name: str, original: Any, replacement: Any) -> None:
        self._saved.append((where, name, original))
        if isinstance(where, dict):
            where[name] = replacement
        else:
            setattr(where, name, replacement)

    def _restore(self) -> None:
        while self._saved:
            where, name, original = self._saved.pop()
            if isinstance(where, dict):
                where[name] = original
            else:
                setattr(where, name, original)
