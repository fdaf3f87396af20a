"""Keep the memory a pass frees for the next pass (glibc only; a no-op elsewhere).

Every pass allocates its activations and gradients afresh and frees them at the end. With
glibc's default settings an array of more than 128 KiB (later: more than the largest one
freed so far, up to 32 MiB) is mapped from the kernel on allocation and unmapped when freed,
and free memory at the top of the heap is returned once it exceeds twice that threshold. The
next pass then touches fresh pages, one page fault per 4 KiB, which costs a big model a
large share of its pass (docs/performance.md has the figures).

:func:`keep_freed_memory` fixes both thresholds, so that freed memory stays in the process
and is handed out again: resident memory stays at the peak of a pass instead of rising and
falling with it. It changes the whole process's allocator, so the library never calls it on
its own; the ``lnref`` command, which owns its process, does at start-up, and so do the
benchmarks, for lnref and PyTorch alike. :func:`return_freed_memory` hands what is kept back
at once; the gradient checker calls it before it forks its workers.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3

# Arrays up to 32 MiB (the largest threshold every glibc accepts) come from the heap; the
# heap keeps up to 1 GiB of free memory before returning any.
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True if they were set,
    False where the C library is not glibc."""
    mallopt = _c_function("mallopt", (ctypes.c_int, ctypes.c_int))
    return (
        mallopt is not None
        and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
        and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    )


def return_freed_memory() -> bool:
    """Hand the free memory the heap keeps back to the kernel now (glibc's ``malloc_trim``);
    False where the C library is not glibc.

    For a process about to fork workers: a worker that allocates from memory its parent kept
    free writes into it and so copies it, page by page.
    """
    malloc_trim = _c_function("malloc_trim", (ctypes.c_size_t,))
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


def _c_function(name, argtypes):
    """``name`` from the C library the interpreter runs on, returning an int; None if absent."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function
