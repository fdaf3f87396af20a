"""(Transitional) the fork pool the checks share their work out with."""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lnref.process import blas
from lnref.process.allocator import return_freed_memory

_FORKED_WORK: Callable[[Any], Any] | None = None


def _forked_work(item: Any) -> Any:
    assert _FORKED_WORK is not None
    return _FORKED_WORK(item)


def _one_blas_thread() -> None:
    blas.set_threads(1)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def map_in_order(work: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    global _FORKED_WORK
    items = list(items)
    if workers <= 1 or len(items) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for item in items:
            yield work(item)
        return
    gc.collect()
    return_freed_memory()
    gc.freeze()
    _FORKED_WORK = work
    try:
        pool = multiprocessing.get_context("fork").Pool(min(workers, len(items)), initializer=_one_blas_thread)
    finally:
        _FORKED_WORK = None
        gc.unfreeze()
    try:
        yield from pool.imap(_forked_work, items, chunksize=max(1, len(items) // (workers * 16)))
    finally:
        pool.terminate()
