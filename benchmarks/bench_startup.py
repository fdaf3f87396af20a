"""Start-up costs: ``lnref --help``, and a first ``lnref gradcheck`` with an empty and a warm Numba cache.

    python3 benchmarks/bench_startup.py [--reps 5] [--cold-reps 2] [--scheme residual] [--layers 48]

Every figure is a fresh process, timed from outside (wall clock), median over repetitions:

* ``python3 -c pass``: the interpreter alone, for scale;
* ``python3 -m lnref --help``, and which heavy modules (NumPy, Numba, the kernels) that path
  imported (it should import none);
* ``python3 -m lnref gradcheck --scheme S --layers L --json`` with ``NUMBA_CACHE_DIR`` set to a
  new empty directory (cold: every kernel the check runs is compiled), then again with that
  directory filled (warm), with its peak memory (the larger of the process's own peak resident
  set and the largest total proportional set size of it and its forked workers, sampled
  every 20 ms), and whether its stderr
  said that kernels were being compiled. After the cold runs, the number of kernels and of
  compiled signatures found in the cache, and what ``kernels.warmup.compile_cache_is_cold()`` answers
  for an empty and for the filled cache.

Targets: ``--help`` under 0.2 s; the first gradcheck with a cold cache under 15 s, saying so
on stderr; peak memory of the 48-layer gradcheck under 300 MB. Prints a table, one JSON line
per figure and the targets met or not.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELP_SECONDS, COLD_SECONDS, PEAK_MB = 0.2, 15.0, 300.0
HEAVY_MODULES = ("numpy", "numba", "lnref.autograd.kernels", "lnref.model")

# Runs the CLI in this process and reports what a wrapper cannot see from outside.
CLI_PROBE = (
    f"HEAVY = {HEAVY_MODULES!r}\n"
    + """
import atexit, json, resource, runpy, sys
def report():
    print("PROBE " + json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                "heavy": [m for m in HEAVY if m in sys.modules]}), file=sys.stderr)
atexit.register(report)
sys.argv = ["lnref", *sys.argv[1:]]
runpy.run_module("lnref", run_name="__main__")
"""
)

COLD_PROBE = "from lnref.autograd.kernels import warmup; print(warmup.compile_cache_is_cold())"


def run(args, env=None, probe=False):
    """(seconds, completed process, probe dict or None) of one fresh process.

    With ``probe`` the probe dict also holds ``tree_pss_kb``: the largest total proportional
    set size (shared pages split among the processes that map them) of the process and its
    children (the gradcheck's forked workers), sampled every 20 ms."""
    command = [sys.executable, "-c", CLI_PROBE, *args] if probe else [sys.executable, *args]
    # The output goes to files: a pipe would fill up while the sampler polls, and block the process.
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
        # The sampler runs beside the wait, so that the wall time is not rounded to its period.
        sampled, done_waiting = [0], threading.Event()

        def sample():
            while not done_waiting.wait(0.02):
                sampled[0] = max(sampled[0], sum(pss_kb(pid) for pid in process_tree(process.pid)))

        sampler = threading.Thread(target=sample) if probe else None
        if sampler:
            sampler.start()
        process.wait()
        seconds = time.perf_counter() - started
        done_waiting.set()
        if sampler:
            sampler.join()
        tree_pss = sampled[0]
        stdout.seek(0)
        stderr.seek(0)
        done = subprocess.CompletedProcess(command, process.returncode, stdout.read(), stderr.read())
    report = None
    for line in done.stderr.splitlines():
        if line.startswith("PROBE "):
            report = {**json.loads(line[len("PROBE ") :]), "tree_pss_kb": tree_pss}
    return seconds, done, report


def process_tree(pid):
    """``pid`` and its descendants (Linux; elsewhere ``pid`` alone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [pid, *(d for child in children.read().split() for d in process_tree(int(child)))]
    except OSError:
        return [pid]


def pss_kb(pid):
    """Proportional set size of a process in KiB (0 where /proc does not say)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next((int(line.split()[1]) for line in rollup if line.startswith("Pss:")), 0)
    except OSError:
        return 0


def cache_contents(cache_dir):
    """(kernels with a cache index, compiled signatures) in a Numba cache directory."""
    kernels, signatures = 0, 0
    for index in Path(cache_dir).rglob("*.nbi"):
        kernels += 1
        with open(index, "rb") as handle:
            pickle.load(handle)  # Numba's version
            _, overloads = pickle.loads(handle.read())
        signatures += len(overloads)
    return kernels, signatures


def said_compiling(stderr):
    return any("compil" in line.lower() for line in stderr.splitlines() if not line.startswith("PROBE "))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the cheap figures (median taken)")
    parser.add_argument("--cold-reps", type=int, default=2, help="cold-cache gradchecks, each with a new cache")
    parser.add_argument("--scheme", default="residual")
    parser.add_argument("--layers", type=int, default=48)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    figures = []

    def figure(what, seconds_list, **extra):
        figures.append(
            {
                "benchmark": "startup",
                "what": what,
                "median_s": statistics.median(seconds_list),
                "runs_s": [round(s, 4) for s in seconds_list],
                **extra,
            }
        )
        print(f"  {what}: {statistics.median(seconds_list):.3f} s", file=sys.stderr, flush=True)

    figure("python3 -c pass", [run(["-c", "pass"])[0] for _ in range(args.reps)])

    help_runs = [run(["--help"], probe=True) for _ in range(args.reps)]
    for _, done, _ in help_runs:
        if done.returncode != 0:
            raise SystemExit(f"lnref --help failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    figure("lnref --help", [s for s, _, _ in help_runs], heavy_imports=help_runs[0][2]["heavy"])

    check = ["gradcheck", "--scheme", args.scheme, "--layers", str(args.layers), "--json"]
    cold, warm, notes, peaks = [], [], [], []
    kernels = signatures = None
    with tempfile.TemporaryDirectory() as scratch:
        empty_answer = run(["-c", COLD_PROBE], env={"NUMBA_CACHE_DIR": str(Path(scratch) / "empty")})[1]
        for rep in range(args.cold_reps):
            cache = {"NUMBA_CACHE_DIR": str(Path(scratch) / f"cache{rep}")}
            seconds, done, report = run(check, env=cache, probe=True)
            if done.returncode not in (0, 1):
                raise SystemExit(f"gradcheck failed ({done.returncode}): {done.stderr.strip()[-300:]}")
            cold.append(seconds)
            notes.append(said_compiling(done.stderr))
            peaks.append(max(report["peak_kb"], report["tree_pss_kb"]) / 1024)
        kernels, signatures = cache_contents(Path(scratch) / "cache0")
        warm_cache = {"NUMBA_CACHE_DIR": str(Path(scratch) / "cache0")}
        filled_answer = run(["-c", COLD_PROBE], env=warm_cache)[1]
        for _ in range(args.reps):
            seconds, done, report = run(check, env=warm_cache, probe=True)
            warm.append(seconds)
            peaks.append(max(report["peak_kb"], report["tree_pss_kb"]) / 1024)
            summary = json.loads(done.stdout)["summary"]
    label = f"gradcheck {args.scheme} {args.layers} layers"
    figure(f"{label}, cold Numba cache", cold, stderr_said_compiling=notes)
    figure(f"{label}, warm Numba cache", warm, result=summary)
    compile_estimate = statistics.median(cold) - statistics.median(warm)
    cold_answers = {"empty cache": empty_answer.stdout.strip(), "filled cache": filled_answer.stdout.strip()}

    print(f"# {os.cpu_count()} cpus; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"{'what':55s} {'median s':>9s}  runs")
    for f in figures:
        print(f"{f['what']:55s} {f['median_s']:9.3f}  {', '.join(f'{s:.2f}' for s in f['runs_s'])}")
    print(f"{'compilation (cold minus warm median)':55s} {compile_estimate:9.3f}")
    print(f"kernels compiled by the first gradcheck: {kernels} ({signatures} signatures)")
    print(f"heavy modules imported by --help: {figures[1]['heavy_imports'] or 'none'}")
    print(f"compile_cache_is_cold(): {cold_answers}")
    print(
        f"peak memory of the gradcheck: {max(peaks):.0f} MB (the larger of the process's peak resident "
        f"set and the sampled total PSS of it and its workers)"
    )
    print()
    extra = {
        "compile_estimate_s": compile_estimate,
        "kernels_compiled": kernels,
        "signatures_compiled": signatures,
        "compile_cache_is_cold": cold_answers,
        "peak_memory_mb": max(peaks),
    }
    for f in figures:
        print(json.dumps(f))
    print(json.dumps({"benchmark": "startup", "what": "summary", **extra}))
    print()
    verdicts = [
        (f"lnref --help {figures[1]['median_s']:.3f} s < {HELP_SECONDS} s", figures[1]["median_s"] < HELP_SECONDS),
        ("lnref --help imports none of " + ", ".join(HEAVY_MODULES), not figures[1]["heavy_imports"]),
        (
            f"first gradcheck, cold cache, {statistics.median(cold):.1f} s < {COLD_SECONDS} s",
            statistics.median(cold) < COLD_SECONDS,
        ),
        ("the cold gradcheck said on stderr that kernels were being compiled", all(notes)),
        (f"peak memory {max(peaks):.0f} MB < {PEAK_MB} MB", max(peaks) < PEAK_MB),
        (
            "compile_cache_is_cold() is True for an empty cache and False for the filled one",
            cold_answers == {"empty cache": "True", "filled cache": "False"},
        ),
    ]
    for text, met in verdicts:
        print(f"target: {text}: {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
