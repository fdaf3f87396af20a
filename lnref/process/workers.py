"""Work shared out among forked processes, and how many BLAS threads lnref's processes run.

:func:`map_in_order` is lnref's one worker pool: the gradient checker's tensors and blocks
and the stability grid's runs go through it. Its workers are forked, so each starts with
what its parent has: the modules imported, the kernels compiled, the model and its states
in memory. Only the items and the results cross between processes, so the work may be a
closure. Without ``fork`` (or inside a worker, which may not start processes of its own)
the work runs in the calling process.

One policy for BLAS threads:

* A worker runs OpenBLAS on one thread (:func:`one_blas_thread`). The workers are the
  parallelism; BLAS threads on top of them would oversubscribe the cores.
* A command that trains lnref's small models in its own process does the same, unless the
  user chose a count (:func:`one_blas_thread_unless_chosen`): on matrices this small a second
  thread gains nothing, and on a loaded machine it waits for a descheduled partner.

OpenBLAS reads its thread count from the environment only when it loads (in a forked worker,
that was in the parent), so both set it through OpenBLAS's own setter
(:func:`lnref.process.blas.set_threads`). The count does not change OpenBLAS's results, and
an item's work is computed the same way in whichever process runs it: provided the work of
one item does not depend on what another did, the results are the same bits for any number
of workers.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from lnref.process import blas
from lnref.process.allocator import return_freed_memory

Item = TypeVar("Item")
Result = TypeVar("Result")

# What sets OpenBLAS's thread count at load, in the order it looks (lnref.process.blas).
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")

_work: Callable[[Any], Any] | None = None  # in a worker: what it applies to each item


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the system has one."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def one_blas_thread() -> None:
    """Run this process's OpenBLAS products on one thread from now on (nothing where NumPy is
    not linked to OpenBLAS). Imports NumPy."""
    blas.set_threads(1)


def one_blas_thread_unless_chosen() -> None:
    """:func:`one_blas_thread`, unless ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` chose a
    count (an empty value chooses nothing, as OpenBLAS takes it)."""
    if not any(os.environ.get(name, "").strip() for name in BLAS_THREAD_VARIABLES):
        one_blas_thread()


def map_in_order(work: Callable[[Item], Result], items: Iterable[Item], workers: int) -> Iterator[Result]:
    """``work(item)`` for each of ``items``, yielded in the order of ``items``: in this process
    when ``workers`` <= 1 or there is at most one item, otherwise shared out among
    ``min(workers, len(items))`` forked processes, each on one BLAS thread.

    An exception raised by ``work`` reaches the caller as itself (same type and arguments),
    and the workers are stopped. So are they when the caller stops iterating early.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1 or not _can_fork():
        for item in items:
            yield work(item)
        return
    # Whatever a worker writes to, it copies page by page: the garbage in reference cycles
    # (a first run's compilation leaves much), the free memory the heap keeps, and the objects
    # a garbage collection in the worker would walk (frozen: a worker's collections skip
    # everything the parent had).
    gc.collect()
    return_freed_memory()
    gc.freeze()
    try:
        # Under fork the initializer's arguments are inherited, never pickled: a closure is fine.
        pool = multiprocessing.get_context("fork").Pool(
            min(workers, len(items)), initializer=_start_worker, initargs=(work,)
        )
    finally:
        gc.unfreeze()
    try:
        # Chunks save a round trip per item; sixteen of them per worker keep the workers
        # finishing close together when items take unequal times.
        yield from pool.imap(_apply_work, items, chunksize=max(1, len(items) // (workers * 16)))
    finally:
        pool.terminate()


def _can_fork() -> bool:
    # A pool's workers are daemons, and a daemon may not start processes.
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def _start_worker(work: Callable[[Any], Any]) -> None:
    global _work
    _work = work
    one_blas_thread()


def _apply_work(item: Any) -> Any:
    assert _work is not None, "runs only in a worker that _start_worker set up"
    return _work(item)
