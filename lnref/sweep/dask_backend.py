"""The ``dask`` backend: Dask ``distributed``'s executor, on a private cluster or a running one.

Which cluster, in this order:

    --scheduler-file PATH      the file a running scheduler wrote (``dask scheduler
                               --scheduler-file PATH``)
    --scheduler tcp://H:P      a running scheduler's address
    DASK_SCHEDULER_ADDRESS     Dask's own setting (``scheduler-address``), if set
    none of them               a private ``LocalCluster`` on loopback: ``workers`` processes
                               of one thread each, no dashboard, closed on exit

Every worker, present or joining later, runs lnref's per-process set-up
(``lnref.process.workers.set_up_worker_process``: one BLAS thread, freed memory kept) through
a worker plugin. Before any task is sent, every worker must run the driver's lnref version;
one that does not is refused in one line. A worker that joins later with another version
refuses each task it is given (``lnref.sweep.kinds.run_task``), which is then recorded as an
error and run again on resume.

A worker lost mid-task (killed, its machine gone) is Dask's to handle: the scheduler gives its
tasks to the other workers, and the driver records each task once, when its result arrives.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
from collections.abc import Iterator
from typing import Any

import dask
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

import lnref
from lnref.sweep import BackendError

CONNECT_TIMEOUT = "20s"
WORKER_WAIT_SECONDS = 60  # an attached cluster with no worker yet: how long to wait for one


class LnrefWorkerSetUp(WorkerPlugin):
    """Runs lnref's per-process set-up on every worker, including those that join later."""

    idempotent = True
    name = "lnref-worker-set-up"

    def setup(self, worker: Any) -> None:
        from lnref.process.workers import set_up_worker_process

        set_up_worker_process()


def worker_lnref_version() -> str:
    """Runs on a worker: the lnref it imports."""
    return lnref.__version__


@contextlib.contextmanager
def dask_executor(workers: int, scheduler: str | None, scheduler_file: str | None) -> Iterator[tuple[cf.Executor, str]]:
    """(executor, description) of the cluster chosen as the module docstring says."""
    address = scheduler or dask.config.get("scheduler-address", None)
    with contextlib.ExitStack() as stack:
        if scheduler_file is not None:
            client = _connect(stack, f"the scheduler of {scheduler_file}", scheduler_file=scheduler_file)
            where = f"Dask cluster of {scheduler_file}"
        elif address:
            client = _connect(stack, f"the Dask scheduler at {address}", address=address)
            where = f"Dask cluster at {address}"
        else:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                )
            )
            client = stack.enter_context(Client(cluster))
            where = "private Dask cluster on 127.0.0.1"
        client.register_plugin(LnrefWorkerSetUp())
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
        except TimeoutError:
            raise BackendError(f"{where}: no worker joined within {WORKER_WAIT_SECONDS} s") from None
        count = _check_versions(client)
        executor = client.get_executor(pure=False)
        try:
            yield executor, f"{where}, {count} worker(s)"
        finally:
            executor.shutdown(wait=False)


def _connect(stack: contextlib.ExitStack, what: str, **where: Any) -> Client:
    try:
        return stack.enter_context(Client(**where, timeout=CONNECT_TIMEOUT))
    except (OSError, TimeoutError) as err:
        raise BackendError(f"cannot reach {what}: {' '.join(str(err).split())}") from None


def _check_versions(client: Client) -> int:
    """The number of workers, all running the driver's lnref; BackendError naming one that does not."""
    answers = client.run(worker_lnref_version, on_error="return")
    for worker, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            raise BackendError(f"Dask worker {worker} cannot run lnref: {' '.join(str(answer).split())}")
        if answer != lnref.__version__:
            raise BackendError(
                f"Dask worker {worker} runs lnref {answer}, this driver lnref {lnref.__version__}: "
                "install the same lnref on every worker"
            )
    return len(answers)
