"""Forward+backward time per layer of each scheme, relative to Pre-LN's in the same run.

    python3 benchmarks/bench_schemes.py [--configs small,medium] [--schemes new|all|pre,subln,...]
                                        [--reps 7] [--min-time 0.3] [--split]

What is timed: ``model.value_and_grad(x, dy)``, as ``benchmarks/bench_model.py`` times it (the
first call traces, every timed call replays), on the two 48-layer configurations of that
benchmark, float64, one BLAS thread:

    small   48 layers, d_model 16, 2 heads, d_ff 64,  seq 8,  batch 2   (lnref gradcheck's default model)
    medium  48 layers, d_model 64, 4 heads, d_ff 256, seq 32, batch 4

Each scheme is timed twice: as users run it (fast paths on: fused attention and FFN where a
sublayer has no optional piece, replayed passes), and with the fast paths off
(``model.fast = False``: every pass is the readable composition on the tape). The second
ratio is the scheme's own extra arithmetic; where the first is well above it, the scheme pays
for leaving the fused sublayers (per-head norms, head scales, a norm between the heads and
W_o or after the FFN's activation all run as the composition). Time per layer is the pass's
time over the number of layers (the final norm is included; it is one norm in 97).

Each scheme is timed paired with Pre-LN: in each of ``--reps`` repetitions Pre-LN's pass and
the scheme's run back to back (each first in every other repetition: whichever runs first
after the other ran slower), each repeated for at least ``--min-time`` seconds, and the
scheme's ratio is the median over the repetitions of its time over Pre-LN's in the same
repetition, so that a change of machine load between schemes (or over a repetition of all of
them) does not move a ratio. Each scheme is measured in a fresh process of its own, with a
Pre-LN of its own: in one long process, the schemes measured late in the list read slower
than the same schemes measured alone. The times shown are medians too (Pre-LN's over every
pairing). The CPU time other processes took meanwhile is reported: above a quarter of a CPU the figures
competed with it. The goal: no scheme above 1.5x Pre-LN per layer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads: per-layer figures, not threading
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import CONFIGS, busy_cpu_seconds, calls_per_rep, own_cpu_seconds  # noqa: E402
from split import format_split, lnref_split  # noqa: E402

REFERENCE = ("pre", {})
NEW = [
    ("reordered", {}),
    ("subln", {}),
    ("hybridnorm", {}),
    ("hybridnorm", {"first_block": "pre"}),
    ("normformer", {}),
    ("normformer", {"head_scale": "fairseq"}),
    ("normformer", {"resid_scale": True}),
    ("lns", {}),
    ("layerscale", {}),
    ("parallel", {}),
    ("parallel", {"norms": "two"}),
    ("tfixup", {}),
    ("dslm", {}),
    ("dslm", {"placement": "post"}),
    ("siamese", {}),
    ("ngpt", {}),
    ("gpas", {}),
    ("hyper", {}),
    ("hyper", {"dynamic": True}),
    ("mhc", {}),
    ("denseformer", {}),
]
GOAL = 1.5  # per-layer time / Pre-LN's, at most
OTHER_CPUS_LIMIT = 0.25


def label(scheme, options):
    return scheme + "".join(f" {name}={value}" for name, value in options.items())


def variants(text):
    if text == "new":
        return NEW
    import lnref

    names = lnref.SCHEMES if text == "all" else [name for name in text.split(",") if name]
    return [(name, {}) for name in names if name != "pre"]


def paired(reference, fn, reps, min_time):
    """(the median over the repetitions of fn's time over the reference's, fn's median seconds
    per call, the reference's seconds per call in each repetition), the two back to back in
    each repetition, in turn the first."""
    numbers = calls_per_rep(reference, min_time), calls_per_rep(fn, min_time)
    times = ([], [])
    for rep in range(reps):
        order = (0, 1) if rep % 2 == 0 else (1, 0)  # each goes first in every other repetition
        for which in order:
            f, number = (reference, fn)[which], numbers[which]
            started = time.perf_counter()
            for _ in range(number):
                f()
            times[which].append((time.perf_counter() - started) / number)
    ratios = [t / r for r, t in zip(*times)]
    return statistics.median(ratios), statistics.median(times[1]), times[0]


def measure_in_process(config_name, scheme, options, reps, min_time, split=False):
    """{path: s, path + "_ratio": x Pre-LN, "reference_" + path: Pre-LN's seconds per call in
    each repetition} for each path ("fast", "composition"), each timed paired with Pre-LN's on
    the same path in this process, and the CPUs other processes took meanwhile."""
    import lnref

    config = CONFIGS[config_name]
    dims = {k: v for k, v in config.items() if k not in ("seq", "batch")}

    def pass_of(scheme, options, fast):
        model = lnref.build(scheme, **dims, options=options)
        model.fast = fast
        x, dy, _ = model.sample_inputs(batch=config["batch"], seq=config["seq"])
        return lambda: model.value_and_grad(x, dy)

    started, busy_before, own_before = time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds()
    entry = {}
    for path, fast in (("fast", True), ("composition", False)):
        fn = pass_of(scheme, options, fast)
        ratio, seconds, reference_seconds = paired(pass_of(*REFERENCE, fast), fn, reps, min_time)
        entry[path], entry[path + "_ratio"], entry["reference_" + path] = seconds, ratio, reference_seconds
        if split and path == "fast":
            entry["split"] = lnref_split(fn, seconds=1.0)
    if busy_before is not None:
        others = max(busy_cpu_seconds() - busy_before - (own_cpu_seconds() - own_before), 0.0)
        entry["other_cpus"] = others / (time.perf_counter() - started)
    return entry


def measure(config_name, schemes, reps, min_time, split=False):
    """{label: entry of :func:`measure_in_process`} for Pre-LN and each scheme, each measured in
    a fresh process of its own (what ran before in a process moves a pass's time), Pre-LN's
    times the medians over every pairing; and the most CPUs other processes took meanwhile."""
    results, reference_times = {}, {"fast": [], "composition": []}
    for scheme, options in [REFERENCE, *schemes]:
        request = json.dumps({"config": config_name, "scheme": scheme, "options": options, "reps": reps,
                              "min_time": min_time, "split": split})  # fmt: skip
        done = subprocess.run([sys.executable, __file__, "--child", request], stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            name = label(scheme, options)
            raise SystemExit(f"the measurement of {name} on {config_name} failed (exit {done.returncode})")
        entry = results[label(scheme, options)] = json.loads(done.stdout.strip().splitlines()[-1])
        for path in reference_times:
            reference_times[path] += entry.pop("reference_" + path)
    reference = results[label(*REFERENCE)]
    for path in reference_times:
        reference[path] = statistics.median(reference_times[path])
    loads = [entry.pop("other_cpus") for entry in results.values() if "other_cpus" in entry]
    return results, max(loads) if loads else None


def child(request):
    """Measure one scheme in this process (see :func:`measure`); print its entry as JSON."""
    from lnref.process import blas
    from lnref.process.allocator import keep_freed_memory

    keep_freed_memory()  # as the lnref command does: see benchmarks/bench_model.py
    blas.let_idle_workers_sleep()
    asked = json.loads(request)
    entry = measure_in_process(
        asked["config"], asked["scheme"], asked["options"], asked["reps"], asked["min_time"], asked["split"]
    )
    print(json.dumps(entry))
    return 0


def report(config_name, results, others):
    layers = CONFIGS[config_name]["n_layers"]
    print(f"\n{config_name}: {json.dumps(CONFIGS[config_name])}, float64, 1 BLAS thread")
    header = f"{'scheme':34s} {'ms/layer':>9s} {'x Pre-LN':>9s} {'composition ms/layer':>21s} {'x Pre-LN':>9s}"
    print(header)
    print("-" * len(header))
    over = []
    for name, times in results.items():
        ratio, ratio_composed = times["fast_ratio"], times["composition_ratio"]
        print(
            f"{name:34s} {times['fast'] / layers * 1e3:9.3f} {ratio:9.2f} "
            f"{times['composition'] / layers * 1e3:21.3f} {ratio_composed:9.2f}"
        )
        line = {"config": config_name, "scheme": name, "fast_s": times["fast"], "composition_s": times["composition"]}
        print(json.dumps({**line, "ratio": ratio, "ratio_composition": ratio_composed}), file=sys.stderr)
        if ratio > GOAL:
            over.append(f"{name} {ratio:.2f}x")
    if any("split" in times for times in results.values()):
        print("one forward+backward by kind of work, fast paths (split.py), ms (share):")
        for name, times in results.items():
            print(format_split(name, times["split"], width=34))
    if others is not None and others > OTHER_CPUS_LIMIT:
        print(f"note: other work used {others:.2f} CPUs meanwhile: these figures competed with it")
    verdict = "met by every scheme" if not over else "NOT met by " + ", ".join(over)
    print(f"goal (<= {GOAL}x Pre-LN per layer): {verdict}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,medium", help="comma-separated: small, medium, large")
    parser.add_argument("--schemes", default="new", help="new (the default), all, or a comma list")
    parser.add_argument("--reps", type=int, default=7, help="repetitions per figure (median taken)")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per repetition, at least")
    parser.add_argument("--split", action="store_true", help="also split each scheme's pass by kind of work")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    configs = [name for name in args.configs.split(",") if name]
    unknown = [name for name in configs if name not in CONFIGS]
    if unknown or args.reps < 1:
        parser.error(f"unknown config(s) {', '.join(unknown)}" if unknown else "--reps must be at least 1")
    schemes = variants(args.schemes)
    for config_name in configs:
        print(f"measuring {config_name}...", file=sys.stderr, flush=True)
        results, others = measure(config_name, schemes, args.reps, args.min_time, args.split)
        report(config_name, results, others)
    return 0


if __name__ == "__main__":
    sys.exit(main())
