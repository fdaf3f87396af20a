"""The kinds of task, and the one function every worker calls: :func:`run_task`.

A kind is what one command's grid runs: a function from a task's configuration to a result
(plain JSON data), and two short texts for progress lines. Each lives beside the code it
runs; this registry names them, so that a worker imports only the kind it is asked for.

:func:`run_task` is what the driver submits, whichever the backend: it runs one task and
returns the worker's part of the record (``lnref.sweep.records``): the status, the result or
the error, the versions, the kernel backend, the host and the wall time. A task's exception
becomes an error record, never a lost result; a worker whose lnref is not the driver's
refuses the task.
"""

from __future__ import annotations

import os
import platform
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import lnref
from lnref.sweep.task import canonical_json


@dataclass(frozen=True)
class Kind:
    """What a grid of one command runs."""

    name: str
    run: Callable[[dict[str, Any]], Any]  # config -> result (plain JSON data)
    label: Callable[[dict[str, Any]], str]  # the task, e.g. "post L=6 warmup=0 seed=1"
    outcome: Callable[[Any], str]  # its result in a few words


# kind -> (module, attribute holding its Kind)
_REGISTRY = {
    "stability": ("lnref.train", "STABILITY_KIND"),
    "profile": ("lnref.profile", "PROFILE_KIND"),
    "prove": ("lnref.claims", "PROVE_KIND"),
    "gradcheck": ("lnref.sweep.gradcheck", "GRADCHECK_KIND"),
}
KINDS = tuple(_REGISTRY)


def get(name: str) -> Kind:
    if name not in _REGISTRY:
        raise ValueError(f"unknown kind of task {name!r}; known: {', '.join(KINDS)}")
    module, attribute = _REGISTRY[name]
    kind: Kind = getattr(import_module(module), attribute)
    return kind


def run_task(kind: str, config: dict[str, Any], driver_version: str) -> dict[str, Any]:
    """Run one task here; the worker's part of its record (never raises for the task's errors)."""
    started = time.perf_counter()
    result, error, trace = None, None, None
    try:
        if lnref.__version__ != driver_version:
            raise RuntimeError(f"this worker runs lnref {lnref.__version__}, the driver lnref {driver_version}")
        result = get(kind).run(config)
        canonical_json(result)  # a result that cannot be written is an error here, not in the driver
    except Exception as err:
        result = None
        error = "".join(traceback.format_exception_only(type(err), err)).strip()
        trace = traceback.format_exc()
    return {
        "status": "ok" if error is None else "error",
        "error": error,
        "traceback": trace,
        "result": result,
        **environment(),
        "seconds": time.perf_counter() - started,
    }


def environment() -> dict[str, Any]:
    """The versions and the machine a result was computed with."""
    import numpy

    from lnref.autograd import kernels

    try:
        import numba

        numba_version: str | None = numba.__version__
    except ImportError:
        numba_version = None
    return {
        "lnref": lnref.__version__,
        "numpy": numpy.__version__,
        "numba": numba_version,
        "python": platform.python_version(),
        "kernels": "numba" if kernels.USE_NUMBA else "numpy",
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
