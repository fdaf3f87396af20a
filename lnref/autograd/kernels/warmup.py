"""A first run's compilation: telling beforehand whether it is coming, and doing it in a
process of its own.

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
from lnref.autograd.kernels.seam import USE_NUMBA

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
    """Compile the loop kernels a small model's pass runs, in a forked process, which leaves
    them in Numba's on-disk cache; this process then loads them from there on first use.

    Numba keeps what it compiled with (LLVM's modules, its own compiler state) for as long as
    the process lives. Compiled in a process of their own, which exits when done, the kernels
    cost this process only their loading: a gradient check's forked workers then start from a
    process no larger than on a later run. Two compiling processes would share the wait
    between two cores, but each holds a compiler's memory, and the first check's peak is their
    sum. Each kernel runs once on small arrays of ``dtype`` and of the shapes of a default
    model, ``norm`` saying which norm kernels it needs (one FFN kernel each way serves both
    activations); kernels that are not run here (other configurations, large sizes) compile
    on first use as usual. Without Numba nothing is compiled; without ``os.fork`` the kernels
    compile here.
    """
    if not USE_NUMBA:
        return
    dtype = np.dtype(dtype)
    if not hasattr(os, "fork"):
        _run_first_run_kernels(dtype, norm)
        return
    compiler = os.fork()
    if compiler == 0:
        try:
            _run_first_run_kernels(dtype, norm)
        finally:
            os._exit(0)  # never the parent's exit handlers
    os.waitpid(compiler, 0)


# A default model's shapes: batch 2, seq 8 (16 rows), d_model 16, 2 heads, d_ff 64.
_SMALL_BATCH, _SMALL_SEQ, _SMALL_D, _SMALL_HEADS, _SMALL_D_FF = 2, 8, 16, 2, 64


def _small_arrays(dtype: np.dtype) -> Callable[..., np.ndarray]:
    """A maker of seeded arrays of ``dtype``: ``array(*shape)``."""
    rng = np.random.default_rng(0)
    return lambda *shape: rng.standard_normal(shape).astype(dtype)


def _run_first_run_kernels(dtype: np.dtype, norm: str) -> None:
    """The norm's kernels, the FFN's and the attention sublayer's each way (the attention
    loops compile with the sublayer kernels that call them), and the blocked attention's
    softmax loops."""
    array = _small_arrays(dtype)
    batch, seq, d, d_ff = _SMALL_BATCH, _SMALL_SEQ, _SMALL_D, _SMALL_D_FF
    # Any values of the residuals' shapes do: only their types decide what compiles.
    rows, hidden = array(batch * seq, d), array(batch * seq, d_ff)
    gamma, beta = array(d), array(d)
    if norm == "rmsnorm":
        _, rrms = kernels.rms_norm_forward(rows, gamma, 1e-5)
        kernels.rms_norm_backward(rows, rows, gamma, rrms)
    else:
        _, mean, rstd = kernels.layer_norm_forward(rows, gamma, beta, 1e-5)
        kernels.layer_norm_backward(rows, rows, gamma, mean, rstd)
    kernels.feed_forward_forward(rows, array(d, d_ff), array(d_ff), array(d_ff, d), array(d), "relu")
    kernels.feed_forward_backward(rows, rows, array(d, d_ff), array(d_ff, d), hidden, hidden, "relu")
    wq, bq, wk, bk, wv, bv, wo, bo = (array(d, d) if i % 2 == 0 else array(d) for i in range(8))
    x, q, k, v, heads = (array(batch, seq, d) for _ in range(5))
    kernels.attention_sublayer_forward(x, None, wq, bq, wk, bk, wv, bv, wo, bo, _SMALL_HEADS, False)
    probs = np.abs(array(batch, _SMALL_HEADS, seq, seq))
    kernels.attention_sublayer_backward(x, x, None, wq, wk, wv, wo, q, k, v, probs, heads)
    split_heads = array(batch, seq, _SMALL_HEADS, d // _SMALL_HEADS)
    attention_blocked.attention_forward_blocked(split_heads, split_heads, split_heads, False)
