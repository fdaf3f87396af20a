"""A first run's compilation: telling beforehand whether it is coming, and sharing it between
two processes.

The ``lnref`` command imports this module, and nothing else does: the package and ``ops``
never need it. :func:`compile_cache_is_cold` reads Numba's cache index through Numba's
internals (the one place in lnref that does), so it names the compiled kernels a small
model runs first, underscored names of the family modules included.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from lnref.autograd import kernels
from lnref.autograd.kernels import attention_blocked, attention_sublayer, feed_forward, norms
from lnref.autograd.kernels.seam import USE_NUMBA, available_cpus

__all__ = ["FIRST_RUN_KERNELS", "cache_is_cold", "compile_cache_is_cold", "compile_first_run_kernels"]

# The kernels a small model runs on its first gradient and gradient check, by norm: the
# ones whose compilation a first command waits for. (The attention loop kernels are
# compiled with the sublayer kernels that call them. The gradient checker's batched runs,
# many moves at once, go past the attention loops' limit to the blocked path's softmax: its
# kernels compile here too, not once in each forked worker. One FFN kernel each way serves
# both activations.)
_SUBLAYER_KERNELS = (
    attention_sublayer._attention_sublayer_forward_kernel,
    attention_sublayer._attention_sublayer_backward_kernel,
    feed_forward._feed_forward_forward_kernel,
    feed_forward._feed_forward_backward_kernel,
    attention_blocked._shifted_scores_kernel,
    attention_blocked._normalized_rows_kernel,
)
FIRST_RUN_KERNELS: dict[str, tuple[Any, ...]] = {
    "layernorm": (norms.layer_norm_forward_kernel, norms.layer_norm_backward_kernel, *_SUBLAYER_KERNELS),
    "rmsnorm": (norms._rms_norm_forward_kernel, norms._rms_norm_backward_kernel, *_SUBLAYER_KERNELS),
}


def compile_cache_is_cold(dtype: DTypeLike = "float64", norm: str = "layernorm") -> bool:
    """Whether the first run of a model of ``dtype`` and ``norm`` in this process will
    compile kernels.

    True when Numba is in use and one of the kernels such a model runs first
    (:data:`FIRST_RUN_KERNELS`) is neither compiled for ``dtype`` nor in Numba's on-disk
    cache for it: see :func:`cache_is_cold`. The caller can then say that a compilation is
    coming.
    """
    return USE_NUMBA and norm in FIRST_RUN_KERNELS and cache_is_cold(FIRST_RUN_KERNELS[norm], dtype)


def cache_is_cold(compiled: Iterable[Any], dtype: DTypeLike) -> bool:
    """Whether one of the ``compiled`` Numba functions has no signature for ``dtype``, either
    compiled in this process or in Numba's on-disk cache (missing, or stale after an edit of
    this package or a Numba upgrade).

    Reads the cache's index files only: compiles nothing, never raises, and answers False
    when it cannot tell.
    """
    try:
        dtype_name = str(np.dtype(dtype))
        for kernel in compiled:
            # A signature's first argument is the kernel's input array, of the model's dtype.
            signatures = [*kernel.signatures, *(key[0] for key in kernel._cache._cache_file._load_index())]
            if not any(dtype_name in str(signature[0]) for signature in signatures):
                return True
        return False
    except Exception:  # a Numba without these internals, an unreadable index: unsure
        return False


def compile_first_run_kernels(dtype: DTypeLike = "float64", norm: str = "layernorm") -> None:
    """Compile (or load from the cache) the loop kernels a small model's pass runs, the
    backward ones in a forked process while this one compiles the forward ones.

    Numba compiles in the calling thread, one kernel after the other. Two processes share
    the wait between two cores; the forked one leaves its kernels in the on-disk cache, where
    this process finds them on first use. Each kernel runs once on small arrays of ``dtype``
    and of the shapes of a default model, ``norm`` saying which norm kernels it needs (one
    FFN kernel each way serves both activations); kernels that are not run here (other
    configurations, large sizes) compile on first use as usual. Without Numba nothing is
    compiled; on one CPU, or without ``os.fork``, the kernels compile here, in order.
    """
    if not USE_NUMBA:
        return
    dtype = np.dtype(dtype)
    backward = None
    if hasattr(os, "fork") and available_cpus() > 1:
        backward = os.fork()
        if backward == 0:
            try:
                _run_backward_kernels(dtype)
            finally:
                os._exit(0)  # never the parent's exit handlers
    try:
        _run_forward_kernels(dtype, norm)
    finally:
        if backward is not None:
            os.waitpid(backward, 0)
    if backward is None:
        _run_backward_kernels(dtype)


# A default model's shapes: batch 2, seq 8 (16 rows), d_model 16, 2 heads, d_ff 64.
_SMALL_BATCH, _SMALL_SEQ, _SMALL_D, _SMALL_HEADS, _SMALL_D_FF = 2, 8, 16, 2, 64


def _small_arrays(dtype: np.dtype) -> Callable[..., np.ndarray]:
    """A maker of seeded arrays of ``dtype``: ``array(*shape)``."""
    rng = np.random.default_rng(0)
    return lambda *shape: rng.standard_normal(shape).astype(dtype)


def _run_forward_kernels(dtype: np.dtype, norm: str) -> None:
    """The forward kernels, the norm's backward one and the attention backward's inner kernel
    (the other side's kernels take longer to compile: these even the two out)."""
    array = _small_arrays(dtype)
    rows, d, d_ff = _SMALL_BATCH * _SMALL_SEQ, _SMALL_D, _SMALL_D_FF
    # First, the attention backward's inner kernel, of the types the sublayer's backward
    # kernel calls it with: the other process finds it in the on-disk cache by the time it
    # gets there (after the FFN's backward), which evens out the two sides' work.
    heads = array(_SMALL_BATCH, _SMALL_SEQ, d)
    probs = np.abs(array(_SMALL_BATCH, _SMALL_HEADS, _SMALL_SEQ, _SMALL_SEQ))
    kernels.multi_head_attention_backward(heads, heads, heads, heads, probs)
    x, gamma, beta = array(rows, d), array(d), array(d)
    if norm == "rmsnorm":
        _, rrms = kernels.rms_norm_forward(x, gamma, 1e-5)
        kernels.rms_norm_backward(array(rows, d), x, gamma, rrms)
    else:
        _, mean, rstd = kernels.layer_norm_forward(x, gamma, beta, 1e-5)
        kernels.layer_norm_backward(array(rows, d), x, gamma, mean, rstd)
    kernels.feed_forward_forward(x, array(d, d_ff), array(d_ff), array(d_ff, d), array(d), "relu")
    wq, bq, wk, bk, wv, bv, wo, bo = (array(d, d) if i % 2 == 0 else array(d) for i in range(8))
    x = array(_SMALL_BATCH, _SMALL_SEQ, d)
    kernels.attention_sublayer_forward(x, None, wq, bq, wk, bk, wv, bv, wo, bo, _SMALL_HEADS, False)
    q = array(_SMALL_BATCH, _SMALL_SEQ, _SMALL_HEADS, d // _SMALL_HEADS)
    attention_blocked.attention_forward_blocked(q, q, q, False)


def _run_backward_kernels(dtype: np.dtype) -> None:
    """The FFN's and the attention sublayer's backward kernels (the slow ones to compile)."""
    array = _small_arrays(dtype)
    batch, seq, d = _SMALL_BATCH, _SMALL_SEQ, _SMALL_D
    # Any values of the residuals' shapes do: only their types decide what compiles.
    rows, hidden = array(batch * seq, d), array(batch * seq, _SMALL_D_FF)
    kernels.feed_forward_backward(
        array(batch * seq, d), rows, array(d, _SMALL_D_FF), array(_SMALL_D_FF, d), hidden, hidden, "relu"
    )
    x, q, k, v, heads = (array(batch, seq, d) for _ in range(5))
    probs = np.abs(array(batch, _SMALL_HEADS, seq, seq))
    kernels.attention_sublayer_backward(
        array(batch, seq, d), x, None, array(d, d), array(d, d), array(d, d), array(d, d), q, k, v, probs, heads
    )
