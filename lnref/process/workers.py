"""Work shared out among forked processes, and how many BLAS threads lnref's processes run.

Two pools, one set-up:

* :func:`map_in_order` shares the pieces of one computation out (the gradient checker's
  tensors and blocks). Its workers are forked, so each starts with what its parent has: the
  modules imported, the kernels compiled, the model and its states in memory. Only the items
  and the results cross between processes, so the work may be a closure.
* :func:`process_pool` is a standard ``concurrent.futures`` executor of forked processes:
  the ``local`` backend of the sweeps (``lnref.sweep``), whose tasks are named functions
  with plain arguments, submitted one at a time.

Every worker of either pool, and every Dask worker a sweep runs on, starts with
:func:`set_up_worker_process`. A worker never starts processes of its own: inside one (and
without ``fork``) :func:`map_in_order` runs the work in the calling process.

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
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from lnref.process import blas
from lnref.process.allocator import keep_freed_memory, return_freed_memory

Item = TypeVar("Item")
Result = TypeVar("Result")

# What sets OpenBLAS's thread count at load, in the order it looks (lnref.process.blas).
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")

_work: Callable[[Any], Any] | None = None  # in a worker: what it applies to each item
_in_worker = False  # set by set_up_worker_process: this process is a worker of some pool


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


def set_up_worker_process() -> None:
    """What every worker process of lnref runs first: OpenBLAS on one thread (the workers are
    the parallelism), freed memory kept for the next pass (``lnref.process.allocator``), and
    no processes of its own (:func:`map_in_order` runs its work in place from now on).
    Imports NumPy."""
    global _in_worker
    _in_worker = True
    keep_freed_memory()
    one_blas_thread()


def in_worker() -> bool:
    """Whether :func:`set_up_worker_process` ran in this process."""
    return _in_worker


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A ``concurrent.futures`` executor of ``workers`` processes, each set up by
    :func:`set_up_worker_process`; forked where the system can fork.

    The caller shuts it down (``with process_pool(n) as pool: ...``). A submitted function
    and its arguments are pickled, so the function must be importable by name.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    context = multiprocessing.get_context("fork") if _can_fork() else None
    # The workers are forked at the first submission: the same reasons as map_in_order's
    # to leave them little garbage and free heap to copy.
    gc.collect()
    return_freed_memory()
    return ProcessPoolExecutor(workers, mp_context=context, initializer=set_up_worker_process)


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
    # A worker's processes would compete with the other workers for the cores; a daemon (as
    # map_in_order's workers are) may not start processes at all.
    return (
        "fork" in multiprocessing.get_all_start_methods()
        and not _in_worker
        and not multiprocessing.current_process().daemon
    )


def _start_worker(work: Callable[[Any], Any]) -> None:
    global _work
    _work = work
    set_up_worker_process()


def _apply_work(item: Any) -> Any:
    assert _work is not None, "runs only in a worker that _start_worker set up"
    return _work(item)
