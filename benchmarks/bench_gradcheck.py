"""Time `lnref gradcheck` (cold and warm Numba cache) against torch.autograd.gradcheck.

    python benchmarks/bench_gradcheck.py [--scheme residual] [--layers 48] [--repeats 3]

Every figure is measured in this run. lnref: the default directional check of every tensor
(shared out among forked workers, one per CPU, as the command does for a model this big; and
blockwise mode, in one process), in a fresh process with an empty Numba cache (cold) and again with the
cache filled (warm), plus the in-process time of a warm check; and the every-element check
(``--mode full``, all CPUs). PyTorch, when installed: the same model (an independent port,
lnref.ports.torch) at the same parameters, checked by
``torch.autograd.gradcheck(fast_mode=True)`` over every parameter tensor and the input, and by
the full (every-element) ``torch.autograd.gradcheck``. The full one would take the better part
of an hour at 48 layers, so it is extrapolated: its cost is a per-element part (two forward
passes per element) plus a fixed part (one backward pass per output element), and both are
fitted from two timed runs over samples of 16 and 272 elements of the last layer's parameters.
Prints a table, one JSON line per figure and the targets met or not: lnref's check (the command
with a warm cache, and in process) at most 0.15x PyTorch's fast check; the every-element check
under 30 s. The cold-cache run is shown but not judged here: a first run's compilation has its
own target, in ``benchmarks/bench_startup.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_RATIO = 0.15  # lnref's check / torch.autograd.gradcheck(fast_mode=True), at most
FULL_SECONDS = 30.0  # the every-element check, under
sys.path.insert(0, str(ROOT))


def lnref_process(args, cache_dir):
    """Wall time of one `python -m lnref gradcheck ...` in a fresh process."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lnref", "gradcheck", *args, "--json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"lnref gradcheck failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return seconds, json.loads(done.stdout)


def gradcheck_workers():
    from lnref.gradcheck import default_workers

    return default_workers()


def lnref_in_process(scheme, layers, mode, repeats, warm_up=True):
    import lnref
    from lnref import gradcheck

    model = lnref.build(scheme, n_layers=layers)
    if warm_up:
        gradcheck.gradcheck(model, mode=mode)  # compile and warm up
    times = []
    for _ in range(repeats):
        report = gradcheck.gradcheck(model, mode=mode)
        times.append(report.seconds)
    return statistics.median(times), report


def torch_twin(scheme, layers):
    """(torch, forward(params, x) -> y, torch params at the check point, x), or None without torch.

    The same model as lnref's, ported independently (lnref.ports.torch), at the
    jittered parameters lnref checks."""
    try:
        import torch
    except ImportError:
        return None
    import lnref
    from lnref.gradcheck import jitter_params
    from lnref.ports.torch import forward as torch_forward

    model = lnref.build(scheme, n_layers=layers)
    x, _, _ = model.sample_inputs()
    params = {n: torch.tensor(v) for n, v in jitter_params(model.params, model.config.seed).items()}
    config = model.config.to_dict()

    def forward(named_params, x_tensor):
        y, _ = torch_forward(config, named_params, x_tensor)
        return y

    return torch, forward, params, torch.tensor(x)


def torch_fast_gradcheck(scheme, layers, repeats):
    """Median seconds of torch.autograd.gradcheck(fast_mode=True) on the same model, or None."""
    twin = torch_twin(scheme, layers)
    if twin is None:
        return None
    torch, forward, params, x = twin
    names = list(params)
    leaves = [params[n].clone().requires_grad_(True) for n in names]
    x_leaf = x.clone().requires_grad_(True)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        ok = torch.autograd.gradcheck(
            lambda *tensors: forward(dict(zip(names, tensors[:-1])), tensors[-1]),
            (*leaves, x_leaf),
            fast_mode=True,
            raise_exception=False,
        )
        times.append(time.perf_counter() - started)
        if not ok:
            print("warning: torch gradcheck reported a mismatch", file=sys.stderr)
    return statistics.median(times)


def torch_full_gradcheck_extrapolated(scheme, layers, total_elements):
    """(seconds extrapolated to ``total_elements``, per-element seconds) of the full torch
    gradcheck, fitted from two samples (see the module docstring), or None without torch."""
    twin = torch_twin(scheme, layers)
    if twin is None:
        return None
    torch, forward, params, x = twin
    last = f"layers.{layers - 1}.attn."
    timings = []
    for names in ([last + "bq"], [last + "bq", last + "wq"]):
        leaves = [params[n].clone().requires_grad_(True) for n in names]
        started = time.perf_counter()
        torch.autograd.gradcheck(
            lambda *tensors, names=names: forward({**params, **dict(zip(names, tensors))}, x),
            tuple(leaves),
            raise_exception=False,
        )
        timings.append((sum(leaf.numel() for leaf in leaves), time.perf_counter() - started))
    (n1, t1), (n2, t2) = timings
    per_element = (t2 - t1) / (n2 - n1)
    fixed = t1 - per_element * n1
    return fixed + per_element * total_elements, per_element


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", default="residual")
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--no-full", action="store_true", help="skip the every-element checks")
    options = parser.parse_args()
    # The in-process checks (lnref's and torch's) run with the allocator settings of the lnref
    # command, which the fresh-process runs get from the command itself (lnref/process/allocator.py).
    from lnref.process.allocator import keep_freed_memory

    keep_freed_memory()
    args = ["--scheme", options.scheme, "--layers", str(options.layers)]

    figures = []
    with tempfile.TemporaryDirectory() as cache_dir:
        cold, cold_report = lnref_process(args, cache_dir)
        warm, warm_report = lnref_process(args, cache_dir)
    figures.append(("lnref gradcheck, fresh process, cold Numba cache", cold, cold_report["summary"]))
    figures.append(("lnref gradcheck, fresh process, warm Numba cache", warm, warm_report["summary"]))
    directional, report = lnref_in_process(options.scheme, options.layers, "directional", options.repeats)
    figures.append(
        (f"lnref directional check (in process, warm, {gradcheck_workers()} workers)", directional, report.summary())
    )
    blockwise, block_report = lnref_in_process(options.scheme, options.layers, "blockwise", options.repeats)
    figures.append(("lnref blockwise check (in process, warm)", blockwise, block_report.summary()))
    torch_seconds = None if options.no_torch else torch_fast_gradcheck(options.scheme, options.layers, options.repeats)
    if torch_seconds is None:
        print("note: PyTorch not installed (or --no-torch): no torch.autograd.gradcheck comparison")
    else:
        figures.append(("torch.autograd.gradcheck(fast_mode=True)", torch_seconds, ""))
    if not options.no_full:
        # The kernels are compiled and warm from the checks above.
        full, full_report = lnref_in_process(options.scheme, options.layers, "full", 1, warm_up=False)
        checks = full_report.check_counts
        figures.append(
            (
                f"lnref full check, every element ({gradcheck_workers()} workers)",
                full,
                f"{sum(checks.values())} elements: {checks['passed']} passed, {checks['failed']} failed, "
                f"{checks['unresolved']} unresolved",
            )
        )
        import lnref

        parameters = sum(value.size for value in lnref.build(options.scheme, n_layers=options.layers).params.values())
        extrapolated = (
            None if options.no_torch else torch_full_gradcheck_extrapolated(options.scheme, options.layers, parameters)
        )
        if extrapolated is not None:
            seconds, per_element = extrapolated
            figures.append(
                (
                    f"torch full gradcheck, extrapolated to {parameters} elements",
                    seconds,
                    f"{per_element * 1e3:.1f} ms per element",
                )
            )
            print(f"lnref full / torch full (extrapolated): {full / seconds:.4f} ({seconds / full:.0f}x faster)")

    print(f"\n{options.scheme}, {options.layers} layers, d_model 16, 2 heads, d_ff 64, seq 8, batch 2, float64")
    print(f"{'what':52s} {'seconds':>9s}  {'vs torch':>8s}  result")
    for label, seconds, result in figures:
        ratio = f"{seconds / torch_seconds:8.3f}" if torch_seconds else f"{'-':>8s}"
        print(f"{label:52s} {seconds:9.2f}  {ratio}  {result}")
    for label, seconds, result in figures:
        print(
            json.dumps(
                {
                    "benchmark": "gradcheck",
                    "what": label,
                    "seconds": round(seconds, 4),
                    "ratio_vs_torch_fast": None if not torch_seconds else round(seconds / torch_seconds, 4),
                    "scheme": options.scheme,
                    "layers": options.layers,
                    "result": result,
                }
            )
        )

    verdicts = []
    if torch_seconds:
        for label, seconds, _ in figures[1:3]:  # the warm command and the in-process check
            verdicts.append(
                (
                    f"{label}: {seconds / torch_seconds:.3f}x torch <= {TORCH_RATIO}",
                    seconds / torch_seconds <= TORCH_RATIO,
                )
            )
    for label, seconds, _ in figures:
        if label.startswith("lnref full check"):
            verdicts.append((f"{label}: {seconds:.1f} s < {FULL_SECONDS:.0f} s", seconds < FULL_SECONDS))
    for text, met in verdicts:
        print(f"target: {text}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
