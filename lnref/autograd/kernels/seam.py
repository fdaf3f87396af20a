"""The dispatch seam: the one place that decides which twin of a kernel a call runs.

Declaring a kernel
------------------
Every public kernel is declared once, beside its twins, as a :class:`Twin`::

    LAYER_NORM_FORWARD = Twin("layer_norm_forward", reference=layer_norm_forward_reference,
                              loop=_layer_norm_forward_loop)
    LINEAR_FORWARD = Twin("linear_forward", reference=linear_forward_reference,
                          loop=_linear_forward_loop, loop_pays_up_to=LOOP_PAYS_UP_TO)

and its public function checks the inputs, then calls the implementation the twin picks:
``LAYER_NORM_FORWARD.pick()(x, gamma, beta, eps)``, or, for a kernel whose loop pays only up
to a size, ``LINEAR_FORWARD.pick(rows * w.size)(x, w, b)``. :meth:`Twin.pick` applies one rule:

* with Numba in use (:data:`USE_NUMBA`): the loop twin, as long as every measure of the call's
  work is within ``loop_pays_up_to`` (one limit per measure, in the multiply-adds the family's
  module names); past it, the twin's ``blocked`` path where it has one (attention: BLAS
  products around small in-place loops), else the reference;
* without (``NUMBA_DISABLE_JIT=1``, where the loops would run as Python, ``LNREF_KERNELS=numpy``,
  or Numba not installed): the reference, at every size.

The rule is deterministic: the same shapes always take the same path, hence give the same bits.

Overriding a kernel
-------------------
Tests choose a path, or put another implementation in a kernel's place, here and only here::

    with seam.forced("reference"):              # every twin's reference, as LNREF_KERNELS=numpy
    with seam.forced("loop", "linear_forward"): # that twin's loop at any size (also without the JIT)
    with seam.replaced("feed_forward_backward", broken):  # on every path of that kernel

Both set a twin's :attr:`Twin.override` and restore it on exit; pytest's ``monkeypatch.setattr(
seam.twin(name), "override", ...)`` does the same for the length of a test. A replacement takes
the twins' own arguments (those after the public function's checks).

Watching the kernels
--------------------
``with seam.wrapped(wrap):`` runs ``wrap(twin, implementation)`` in place of every
implementation a twin picks, within the block (``lnref/autograd/timing.py`` times each kernel
call this way). Outside such a block :meth:`Twin.pick` returns the implementations themselves:
the hot path pays nothing for the possibility.

One convention for the loop twins
---------------------------------
A loop twin is two functions: a compiled kernel, which writes into arrays it is given (it may
allocate scratch, never its outputs), and ``_<name>_loop``, plain Python, which allocates the
outputs, calls the kernel and returns what the reference returns. Why: a new array handed from
compiled code back to Python costs a sizable part of a small kernel's time, an ``np.empty`` in
Python less (``docs/performance.md``); and a loop twin with the reference's arguments and
results is interchangeable with it at this seam and comparable with it in a test. The kernel
is ``_<name>_kernel``, or has a public name where the sublayer kernels call it too
(``attention_forward_kernel``, ``matmul_kernel``, ``linear_grads_kernel``). Compiled helpers
(a row's softmax, a GELU scalar) are ``@njit`` functions too, never twins.

Compilation
-----------
:func:`njit` is the one way kernels are compiled: ``cache=True``, never ``fastmath``, never
``parallel``, so the summation order is the source's and the results are bit-reproducible.
Numba's on-disk cache notices an edit of a kernel's own file only, not of a helper it calls in
another file; every kernel's cache entry is therefore stamped with all of this package's
source files, and an edit of any of them recompiles every kernel.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "OVERRIDDEN",
    "USE_NUMBA",
    "Kernel",
    "Twin",
    "available_cpus",
    "forced",
    "njit",
    "numba_requested",
    "replaced",
    "twin",
    "twins",
    "wrapped",
]

Kernel = Callable[..., Any]
F = TypeVar("F", bound=Callable[..., Any])


def _import_numba() -> Any:
    """Numba, or None where it is not installed: the NumPy twins are complete on their own."""
    try:
        import numba
    except ModuleNotFoundError as error:
        if error.name != "numba":
            raise  # Numba is there but broken: say so rather than fall back on the slower twins
        return None
    return numba


_numba = _import_numba()


def numba_requested(lnref_kernels: str | None, jit_disabled: bool, numba_available: bool = True) -> bool:
    """Whether the public kernels should call the Numba loop kernels.

    ``lnref_kernels`` is the value of the ``LNREF_KERNELS`` environment
    variable (``None``, ``""``, ``"numba"`` or ``"numpy"``), ``jit_disabled``
    is ``numba.config.DISABLE_JIT``.
    """
    choice = (lnref_kernels or "numba").strip().lower()
    if choice not in ("numba", "numpy"):
        raise ValueError(f"LNREF_KERNELS must be 'numba' or 'numpy', got {lnref_kernels!r}")
    return choice == "numba" and numba_available and not jit_disabled


# Whether the twins' rule picks the compiled loops: decided once, at import.
USE_NUMBA: bool = numba_requested(
    os.environ.get("LNREF_KERNELS"),
    jit_disabled=bool(_numba.config.DISABLE_JIT) if _numba is not None else True,
    numba_available=_numba is not None,
)


def available_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ----- compilation ----------------------------------------------------------------------


def njit(*, cache: bool, nogil: bool = False) -> Callable[[F], F]:
    """``numba.njit(cache=..., nogil=...)``, the only options a kernel may take; without Numba,
    the function itself (it then runs as Python)."""
    if _numba is None:
        return lambda fn: fn
    compile_ = _numba.njit(cache=cache, nogil=nogil)

    def decorate(fn: F) -> F:
        dispatcher = compile_(fn)
        _stamp_with_package_sources(dispatcher)
        return dispatcher

    return decorate


_PACKAGE = Path(__file__).resolve().parent


@functools.cache
def _package_stamp() -> tuple[tuple[str, float, int], ...]:
    """Name, modification time and size of every source file of this package."""
    return tuple((path.name, path.stat().st_mtime, path.stat().st_size) for path in sorted(_PACKAGE.glob("*.py")))


def _stamp_with_package_sources(dispatcher: Any) -> None:
    """Make the cache entry of ``dispatcher`` stale whenever any file of the package changes.

    Numba keeps, in each cache index, the stamp (time and size) of the kernel's own file and
    drops the index when that stamp differs; the stamp replaced here covers every file. With
    the JIT disabled, or a Numba without these attributes, Numba's own stamp stays.
    """
    cache_file: Any = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if hasattr(cache_file, "_source_stamp"):
        cache_file._source_stamp = _package_stamp()


# ----- twins ----------------------------------------------------------------------------

PATHS = ("reference", "loop", "blocked")
_TWINS: dict[str, Twin] = {}
# The names of the twins whose override is set. While it is empty, a fused kernel that must
# not run in place of an overridden part (``branches.path``) need not ask each of its parts.
OVERRIDDEN: set[str] = set()
# What ``wrapped`` puts around every picked implementation while its block runs, else None.
_WRAP: Callable[[Twin, Kernel], Kernel] | None = None


class Twin:
    """One kernel's implementations, and the rule that picks one for a call (see the module).

    ``name`` is the kernel's, its public function's; ``reference`` the NumPy twin; ``loop``
    the compiled twin; ``loop_pays_up_to`` the largest work the loop takes, one limit per
    measure of work (``None``: any size); ``blocked`` the compiled path past that limit,
    where there is one. Declaring a twin registers it under its name, once.
    """

    __slots__ = ("name", "reference", "loop", "blocked", "loop_pays_up_to", "_override", "_limits", "_within", "_past")

    def __init__(
        self,
        name: str,
        *,
        reference: Kernel,
        loop: Kernel,
        loop_pays_up_to: int | tuple[int, ...] | None = None,
        blocked: Kernel | None = None,
    ) -> None:
        if name in _TWINS:
            raise ValueError(f"a kernel named {name!r} is declared already")
        self.name = name
        self.reference = reference
        self.loop = loop
        self.blocked = blocked
        if loop_pays_up_to is None:
            loop_pays_up_to = ()
        elif isinstance(loop_pays_up_to, int):
            loop_pays_up_to = (loop_pays_up_to,)
        self.loop_pays_up_to = tuple(loop_pays_up_to)
        self._override: str | Kernel | None = None
        self._limits: tuple[int, ...] = ()
        self._within: Kernel = reference
        self._past: Kernel = reference
        self._settle()
        _TWINS[name] = self

    def __repr__(self) -> str:
        return f"Twin({self.name!r})"

    @property
    def paths(self) -> dict[str, Kernel]:
        """The implementations by path name: ``reference``, ``loop`` and, where there is one, ``blocked``."""
        paths = {"reference": self.reference, "loop": self.loop}
        if self.blocked is not None:
            paths["blocked"] = self.blocked
        return paths

    @property
    def override(self) -> str | Kernel | None:
        """``None`` (the rule decides), a path name (that path at every size), or a callable run
        in every path's place."""
        return self._override

    @override.setter
    def override(self, value: str | Kernel | None) -> None:
        if isinstance(value, str) and value not in self.paths:
            raise ValueError(f"{self.name} has the paths {', '.join(self.paths)}, not {value!r}")
        if value is not None and not isinstance(value, str) and not callable(value):
            raise TypeError(f"an override of {self.name} is a path name or a callable, got {value!r}")
        self._override = value
        if value is None:
            OVERRIDDEN.discard(self.name)
        else:
            OVERRIDDEN.add(self.name)
        self._settle()

    def pick(self, *work: int) -> Kernel:
        """The implementation to run for a call of this much work: one number per limit of
        ``loop_pays_up_to``, none for a kernel without one."""
        if work and not all(map(operator.le, work, self._limits)):
            return self._past
        return self._within

    def _settle(self) -> None:
        """Work out once what :meth:`pick` returns, so that a call costs a comparison or none."""
        override = self._override
        if override is None and USE_NUMBA:
            self._limits = self.loop_pays_up_to
            self._within, self._past = self.loop, self.blocked or self.reference
        else:
            if override is None:
                chosen = self.reference
            elif isinstance(override, str):
                chosen = self.paths[override]
            else:
                chosen = override
            self._limits, self._within, self._past = (), chosen, chosen
        if _WRAP is not None:
            self._within, self._past = _WRAP(self, self._within), _WRAP(self, self._past)


def twin(name: str) -> Twin:
    """The twin of the public kernel ``name``."""
    try:
        return _TWINS[name]
    except KeyError:
        raise KeyError(f"no kernel named {name!r}; the kernels are {', '.join(sorted(_TWINS))}") from None


def twins() -> list[Twin]:
    """Every declared twin, in the order of declaration."""
    return list(_TWINS.values())


@contextmanager
def _overriding(chosen: list[Twin], override: str | Kernel) -> Iterator[None]:
    """``override`` on each twin of ``chosen`` within the block, each twin's own after it."""
    before = [t.override for t in chosen]
    try:
        for t in chosen:
            t.override = override
        yield
    finally:
        for t, previous in zip(chosen, before):
            t.override = previous


def forced(path: str, *names: str) -> AbstractContextManager[None]:
    """Within the block, the twins ``names`` (every twin when none is named) run ``path`` at
    every size: ``"reference"``, ``"loop"``, or ``"blocked"``, which attention's twins alone
    have."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    return _overriding([twin(name) for name in names] if names else twins(), path)


def replaced(name: str, implementation: Kernel) -> AbstractContextManager[None]:
    """Within the block, ``implementation`` runs in every path's place for the kernel ``name``."""
    if not callable(implementation):
        raise TypeError(f"a replacement of {name} is a callable, got {implementation!r}")
    return _overriding([twin(name)], implementation)


@contextmanager
def wrapped(wrap: Callable[[Twin, Kernel], Kernel]) -> Iterator[None]:
    """Within the block, every twin runs ``wrap(twin, implementation)`` in place of the
    implementation its rule (or override) picks; after it, the implementations themselves.
    Blocks do not nest."""
    global _WRAP
    if _WRAP is not None:
        raise RuntimeError("seam.wrapped: a wrapping block is active already")
    _WRAP = wrap
    try:
        for t in _TWINS.values():
            t._settle()
        yield
    finally:
        _WRAP = None
        for t in _TWINS.values():
            t._settle()
