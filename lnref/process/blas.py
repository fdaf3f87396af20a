"""NumPy's OpenBLAS as lnref sees it: how many threads its products run on, whether its idle
workers leave the cores free, and whether its kernels take small products unpacked.

OpenBLAS reads its settings from the environment once, when NumPy loads it. Two matter here.

* **Threads.** ``OPENBLAS_NUM_THREADS`` (else ``OMP_NUM_THREADS``, else every CPU).
  :func:`threads` and :func:`set_threads` read and change the count through OpenBLAS's own
  functions, found among the libraries the process has mapped (Linux). Elsewhere, or under
  another BLAS, :func:`threads` is 1 and :func:`set_threads` does nothing.
* **Idle workers.** After its share of a threaded product, an OpenBLAS worker spins, waiting
  for the next one, for 2^28 CPU cycles (about a tenth of a second) before it sleeps;
  ``OPENBLAS_THREAD_TIMEOUT=n`` makes that 2^n cycles (n from 4 to 30). A spinning worker
  holds its core. A thread of lnref's own that needs that core, a part of a big model's
  attention core (``kernels.attention_blocked.over_batch_parts``), then gains next to nothing.
  :func:`idle_workers_sleep` tells whether the setting is short enough for those threads
  to pay; :func:`let_idle_workers_sleep` sets it to :data:`IDLE_TIMEOUT`, if NumPy has not
  loaded OpenBLAS yet. That changes the whole process's BLAS, so the library never calls it
  on its own. The ``lnref`` command, which owns its process, calls it at start-up; so does
  ``benchmarks/bench_model.py``, for lnref and PyTorch alike.
* **Kernels.** :func:`core_name` is the kernel OpenBLAS picked for the CPU (``OPENBLAS_CORETYPE``
  forces one); :func:`small_products_unpacked` tells whether it runs small products through
  small-matrix kernels, which the linear kernels' loop limit follows (``kernels/linear.py``).
  It only reads, so the library asks it when the kernels are imported.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Mapping
from typing import Any

TIMEOUT_VARIABLE = "OPENBLAS_THREAD_TIMEOUT"
# 2^20 cycles, a few tenths of a millisecond. Longer than the gaps between a medium model's
# products (its compiled attention and norm calls), so the workers are awake for the next
# product instead of being woken for each; shorter than a big model's attention core
# (milliseconds), so they sleep through it (docs/performance.md: what each setting measured).
IDLE_TIMEOUT = 20

_GETTERS = (
    "scipy_openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads",
    "openblas_get_num_threads64_",
    "openblas_get_num_threads",
)
_CORE_NAMES = (
    "scipy_openblas_get_corename64_",
    "scipy_openblas_get_corename",
    "openblas_get_corename64_",
    "openblas_get_corename",
)
_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


@functools.cache
def _openblas_functions(names: tuple[str, ...]) -> tuple[Any, ...]:
    """Per OpenBLAS library the process has mapped, the first of ``names`` it exports."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return ()
    libraries = [ctypes.CDLL(path) for path in sorted(p for p in paths if p.startswith("/"))]
    return tuple(
        next(getattr(library, name) for name in names if hasattr(library, name))
        for library in libraries
        if any(hasattr(library, name) for name in names)
    )


def threads() -> int:
    """How many threads OpenBLAS runs a big product on (1 where OpenBLAS is not found)."""
    import numpy  # noqa: F401  (OpenBLAS is mapped once NumPy is loaded)

    getters = _openblas_functions(_GETTERS)
    return max(1, int(getters[0]())) if getters else 1


def core_name() -> str | None:
    """The kernel OpenBLAS picked for this CPU (``Haswell``, ``SkylakeX``, ``Zen``, ...), from its
    own function; None where OpenBLAS is not found. A build for many CPUs picks at load time,
    so the name says what the products run on, which the build's name does not."""
    import numpy  # noqa: F401

    getters = _openblas_functions(_CORE_NAMES)
    if not getters:
        return None
    getters[0].restype = ctypes.c_char_p
    name = getters[0]()
    return name.decode() if name else None


# OpenBLAS's kernels that run a product of at most 10^6 multiply-adds (M N K) through its
# small-matrix kernels, which pack neither operand (``gemm_small_kernel_permit`` in its x86_64
# kernels): those for AVX-512 CPUs, which NumPy's wheels pick on such a CPU, Intel's or AMD's.
SMALL_MATRIX_CORES = ("skylakex", "cooperlake", "sapphirerapids")


def small_products_unpacked() -> bool:
    """Whether NumPy's OpenBLAS runs small products through its small-matrix kernels (its
    kernel, :func:`core_name`, is one of :data:`SMALL_MATRIX_CORES`): a small product's set-up
    then skips the packing of both operands. False where OpenBLAS is not found."""
    try:
        name = core_name()
    except OSError:  # a mapped library that ctypes cannot open: no kernel name to go by
        return False
    return name is not None and name.lower() in SMALL_MATRIX_CORES


def set_threads(count: int) -> None:
    """Make every mapped OpenBLAS run its products on ``count`` threads (nothing where none is
    found). The thread count does not change OpenBLAS's results: the same bits on any."""
    import numpy  # noqa: F401

    for setter in _openblas_functions(_SETTERS):
        setter(int(count))


def idle_workers_sleep(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether OpenBLAS's idle workers were told to sleep soon (``OPENBLAS_THREAD_TIMEOUT`` at
    most :data:`IDLE_TIMEOUT`). Read from the environment, as OpenBLAS read it when it
    loaded: a value set after NumPy loaded is taken at its word, wrongly, at a cost in speed only."""
    value = environ.get(TIMEOUT_VARIABLE, "").strip()
    return value.isdigit() and int(value) <= IDLE_TIMEOUT


def let_idle_workers_sleep() -> bool:
    """Set ``OPENBLAS_THREAD_TIMEOUT`` to :data:`IDLE_TIMEOUT` unless the user set it (empty
    counts as unset, as OpenBLAS takes it), if NumPy has not loaded OpenBLAS yet (later it
    would be too late, and it is left alone). Returns :func:`idle_workers_sleep`: whether the
    setting OpenBLAS sees lets its workers sleep."""
    if "numpy" not in sys.modules and not os.environ.get(TIMEOUT_VARIABLE, "").strip():
        os.environ[TIMEOUT_VARIABLE] = str(IDLE_TIMEOUT)
    return idle_workers_sleep()
