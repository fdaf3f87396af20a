"""Where a sweep's tasks run: each backend is a standard ``concurrent.futures.Executor``.

    serial   in the driver's process, one task at a time (tests, debugging, a debugger's
             breakpoints inside a task)
    local    ``lnref.process.workers.process_pool``: forked processes on this machine, one
             BLAS thread each (``--workers``, default: the CPUs available)
    dask     Dask ``distributed`` (the ``lnref[dask]`` extra): a private cluster on loopback,
             or a running one (``lnref.sweep.dask_backend``)

:func:`open_backend` is a context manager: on leaving it the pool is shut down, the private
cluster closed, tasks not yet started cancelled. A task runs the same computation on any
backend and any worker (its seeds are in its configuration), so its result is the same.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from lnref.sweep import BackendError

BACKENDS = ("local", "dask", "serial")
DASK_EXTRA_HINT = 'the dask backend needs Dask distributed: pip install "lnref[dask]"'
LOCAL_WINDOW_PER_WORKER = 2  # tasks in flight per worker: one running, one queued behind it


@dataclass
class Backend:
    name: str
    executor: cf.Executor
    window: int | None  # tasks in flight at most (None: all at once)
    description: str


class SerialExecutor(cf.Executor):
    """Runs each task when it is submitted, in this process; its future is already done."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:
            future.set_exception(err)
        return future


def check_backend(name: str, scheduler: str | None = None, scheduler_file: str | None = None) -> None:
    """BackendError, before anything starts, for what :func:`open_backend` would refuse at once:
    an unknown backend, scheduler options without Dask, Dask not installed, no scheduler file."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    if (scheduler or scheduler_file) and name != "dask":
        raise BackendError("--scheduler and --scheduler-file need --backend dask")
    if name == "dask" and importlib.util.find_spec("distributed") is None:
        raise BackendError(DASK_EXTRA_HINT)
    if scheduler_file is not None and not os.path.isfile(scheduler_file):
        raise BackendError(f"--scheduler-file: {scheduler_file} does not exist")


@contextlib.contextmanager
def open_backend(
    name: str, workers: int | None = None, scheduler: str | None = None, scheduler_file: str | None = None
) -> Iterator[Backend]:
    """The executor of backend ``name``; ``workers`` (default: the CPUs available) sizes the
    local pool and the private Dask cluster. BackendError when it cannot start."""
    from lnref.process.workers import available_cpus, process_pool

    check_backend(name, scheduler, scheduler_file)
    workers = available_cpus() if workers is None else workers
    if workers < 1:
        raise BackendError(f"workers must be >= 1, got {workers}")
    if name == "serial":
        yield Backend(name, SerialExecutor(), 1, "in this process")
    elif name == "local":
        with process_pool(workers) as pool:
            try:
                yield Backend(name, pool, LOCAL_WINDOW_PER_WORKER * workers, f"{workers} local worker process(es)")
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    else:
        from lnref.sweep.dask_backend import dask_executor

        with dask_executor(workers, scheduler, scheduler_file) as (executor, description):
            yield Backend(name, executor, None, description)
