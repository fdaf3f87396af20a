"""Where one forward+backward spends its time, for lnref and for PyTorch, and what machine it ran on.

Used by ``bench_model.py`` (and ``bench_schemes.py``); run alone it prints the machine:

    python3 benchmarks/split.py

lnref's split (:func:`lnref_split`): passes timed without timers alternate with passes under
``lnref.autograd.timing.TimeSplit``, which times every kernel call and every primitive that
computes by itself, by kind of work (products, attention, norms, element-wise, compiled
sublayers; see that module). The medians of the timed passes' kinds are the split; what a pass
without timers takes beyond their sum is the Python and tape overhead. The timers' own cost
lands mostly in that remainder's timed twin, not in the kinds: a timer adds two clock reads
inside the span it measures, about 0.1 us.

PyTorch's split (:func:`torch_split`): ``torch.profiler`` over a few passes, each operator's
self CPU time sorted by its name into the same kinds (``mm``, ``addmm``, ``bmm``: products;
softmax and scaled-dot-product attention: attention; ``layer_norm``: norms; every other
``aten::`` operator: element-wise); the remainder of a pass without the profiler is autograd's
and the dispatcher's overhead. The profiler's own cost per operator lands in the operators'
self time, so the small operators' kinds are overstated there and the remainder understated.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OVERHEAD = "overhead"
TORCH_KINDS = (
    (("scaled_dot_product", "softmax", "attention"), "attention"),
    (("layer_norm",), "norms"),
    (("mm", "matmul", "linear", "dot", "mv"), "products"),
)


# ----- the machine ------------------------------------------------------------------------


def _read(path):
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model():
    """The CPU's model name, family and widest vectors from /proc/cpuinfo (else what Python knows)."""
    fields = {}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    vectors = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    return (
        f"{fields['model name']} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {vectors})"
    )


def caches():
    """{"L1d": "48K", ...}: the cache sizes of CPU 0, from sysfs (empty where there is none)."""
    found = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, kind, size = (_read(index / name) for name in ("level", "type", "size"))
        if level and size:
            suffix = {"Data": "d", "Instruction": "i"}.get(kind or "", "")
            shared = _read(index / "shared_cpu_list")
            found[f"L{level}{suffix}"] = size + (f" (cpus {shared})" if shared and level in ("2", "3") else "")
    return found


def machine_description():
    """The machine a measurement ran on: CPU, cores, caches, BLAS and its kernel, versions."""
    import numpy as np

    from lnref.autograd.kernels import seam
    from lnref.process import blas

    config = {}
    try:
        config = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    except (TypeError, AttributeError):  # a NumPy before 1.26
        pass
    description = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_available": seam.available_cpus(),
        "caches": caches(),
        "blas": f"{config.get('name', '?')} {config.get('version', '')}".strip(),
        "blas_kernel": blas.core_name(),
        "blas_threads": blas.threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": _version("numba"),
        "kernels": "numba loops" if seam.USE_NUMBA else "numpy twins",
    }
    torch = _torch()
    if torch is not None:
        description["torch"] = torch.__version__
        description["torch_blas"] = _torch_blas(torch)
    return description


def _version(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_blas(torch):
    """The BLAS PyTorch was built with, from its build configuration."""
    shown = torch.__config__.show()
    for line in shown.splitlines():
        if "BLAS_INFO" in line:
            return line.split("BLAS_INFO=", 1)[1].split(",")[0].strip()
    return "mkl" if torch.backends.mkl.is_available() else "?"


def describe_machine(description):
    """The description as two lines of text."""
    cache_text = ", ".join(f"{level} {size}" for level, size in description["caches"].items()) or "caches unknown"
    lines = [
        f"# machine: {description['cpu']}, {description['cpus']} cpus ({description['cpus_available']} available); "
        f"{cache_text}",
        f"# BLAS: NumPy {description['numpy']} with {description['blas']} (kernel {description['blas_kernel']}, "
        f"{description['blas_threads']} thread(s)); Numba {description['numba']} ({description['kernels']}); "
        f"Python {description['python']}",
    ]
    if "torch" in description:
        lines[-1] += f"; PyTorch {description['torch']} with {description['torch_blas']}"
    return lines


# ----- the splits -------------------------------------------------------------------------


def _passes(fn, seconds, most=20):
    """How many passes of ``fn`` fit in about ``seconds`` (3 at least, ``most`` at most); runs it once."""
    started = time.perf_counter()
    fn()
    return max(3, min(most, int(seconds / max(time.perf_counter() - started, 1e-6))))


def lnref_split(fn, passes=None, seconds=3.0):
    """{kind: seconds per pass} of ``fn()``, plus the overhead and the total (see the module):
    ``passes`` timed and untimed passes each, by default as many as fit in ``seconds``."""
    from lnref.autograd.timing import KINDS, TimeSplit

    fn()  # a first pass traces (and compiles)
    passes = passes or _passes(fn, seconds / 2)
    plain, timed = [], {kind: [] for kind in KINDS}
    for _ in range(passes):
        started = time.perf_counter()
        fn()
        plain.append(time.perf_counter() - started)
        with TimeSplit() as split:
            fn()
        for kind in KINDS:
            timed[kind].append(split.seconds[kind])
    split = {kind: statistics.median(values) for kind, values in timed.items()}
    total = statistics.median(plain)
    split[OVERHEAD] = total - sum(split.values())
    split["total"] = total
    return split


def torch_kind(name):
    """The kind of work of a PyTorch operator, by its name (None: autograd's own nodes)."""
    if not name.startswith("aten::"):
        return None
    for fragments, kind in TORCH_KINDS:
        if any(fragment in name for fragment in fragments):
            return kind
    return "element-wise"


def torch_split(fn, torch, passes=None, seconds=3.0):
    """{kind: seconds per pass} of ``fn()`` by PyTorch's profiler, the overhead and the total."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    passes = passes or _passes(fn, seconds / 2, most=10)
    plain = []
    for _ in range(passes):
        started = time.perf_counter()
        fn()
        plain.append(time.perf_counter() - started)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(passes):
            fn()
    split = {"products": 0.0, "attention": 0.0, "norms": 0.0, "element-wise": 0.0}
    for event in profiler.key_averages():
        kind = torch_kind(event.key)
        if kind is not None:
            split[kind] += event.self_cpu_time_total * 1e-6 / passes
    total = statistics.median(plain)
    split[OVERHEAD] = total - sum(split.values())
    split["total"] = total
    return split


def format_split(label, split, width=6):
    """One line: each kind's milliseconds and share of the pass."""
    total = split["total"]
    parts = [
        f"{kind} {seconds * 1e3:.2f} ({seconds / total:.0%})"
        for kind, seconds in split.items()
        if kind != "total" and (seconds > 0 or kind == OVERHEAD)
    ]
    return f"  {label:{width}s} {total * 1e3:8.2f} ms = " + ", ".join(parts)


if __name__ == "__main__":
    description = machine_description()
    print("\n".join(describe_machine(description)))
    print(json.dumps(description))
