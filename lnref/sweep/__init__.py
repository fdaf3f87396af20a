"""Sweeps: the grids of independent runs behind ``lnref stability``, ``profile``, ``prove``
and the sweep form of ``gradcheck``, run through one mechanism.

    task.py       a task: a kind and a canonical JSON configuration, named by a stable key
    kinds.py      what each kind runs, and ``run_task``, the one function a worker runs
    backends.py   serial, local (a process pool) or dask: a ``concurrent.futures.Executor``
    driver.py     submits the tasks, appends one record per finished task, resumes
    records.py    the JSON-lines run records, flushed and fsynced a line at a time
    progress.py   the live count on stderr
    gradcheck.py  the gradient-check sweep (scheme x norm x depth)

The commands' options and the steps they share are in ``lnref.cli.sweep``. Nothing here
imports NumPy at import time: the commands' ``--help`` stays instant.
"""


class BackendError(ValueError):
    """A backend that cannot be used as asked; the message is one line."""
