"""Per step of a replayed pass: each primitive's forward and VJP, timed in place, per layer.

    python3 benchmarks/bench_steps.py pre,siamese [--reps 200] [--config small]

For each scheme (default options), on a configuration of ``benchmarks/bench_model.py`` (float64,
one BLAS thread): the time of one ``model.value_and_grad(x, dy)``, a replayed pass, the fastest
of ``--rounds`` rounds of ``--reps`` passes, the schemes taking turns within each round (a
process's first passes run slower, whichever scheme they are); then ``--reps`` passes with every
registered primitive's forward and VJP inside a timer, and per primitive the calls a layer, the
time a call each way and the time a layer. What no primitive holds (those passes' time less the
timed sum) is the replay's loop and its sums of cotangents, the model's own Python, and the
timers' cost. Run the schemes to compare in one command: their rounds then share the minutes.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads: per-layer figures, not threading
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import CONFIGS  # noqa: E402

import lnref  # noqa: E402
from lnref.autograd.primitive import PRIMITIVES  # noqa: E402


def timed(fn, seconds, name, calls=None):
    """``fn``, adding its time to ``seconds[name]`` (and counting its calls in ``calls``);
    ``functools.wraps`` keeps it the defined primitive's function to the replay
    (``fusion.defined_primitives_in_place``)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if calls is not None:
            calls[name] += 1
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - started

    return run


def model_and_sample(scheme, config):
    """A model of ``scheme`` on ``config`` and a sample of its inputs, its program recorded."""
    model = lnref.build(scheme, **{k: v for k, v in config.items() if k not in ("seq", "batch")})
    x, dy, _ = model.sample_inputs(batch=config["batch"], seq=config["seq"])
    for _ in range(5):  # the first pass records the program; the others warm the caches
        model.value_and_grad(x, dy)
    return model, x, dy


def seconds_a_pass(model, x, dy, reps):
    started = time.perf_counter()
    for _ in range(reps):
        model.value_and_grad(x, dy)
    return (time.perf_counter() - started) / reps


def print_steps(scheme, model, x, dy, reps, per_pass, layers):
    """Print the pass's time and each primitive's, per layer."""
    forward, vjp, calls = defaultdict(float), defaultdict(float), defaultdict(int)
    saved = dict(PRIMITIVES)
    try:
        for name, primitive in saved.items():
            PRIMITIVES[name] = primitive._replace(
                forward=timed(primitive.forward, forward, name, calls), vjp=timed(primitive.vjp, vjp, name)
            )
        timed_pass = seconds_a_pass(model, x, dy, reps)
    finally:
        PRIMITIVES.update(saved)
    print(f"{scheme}: {per_pass * 1e3:.3f} ms a pass, {per_pass / layers * 1e6:.1f} us a layer")
    inside = 0.0
    for name in sorted(calls, key=lambda n: -(forward[n] + vjp[n])):
        n_calls = calls[name] / reps
        each_way = (forward[name] / reps, vjp[name] / reps)
        inside += sum(each_way)
        print(
            f"  {name:40s} {n_calls / layers:5.2f} a layer  forward {each_way[0] / n_calls * 1e6:6.1f} us"
            f"  vjp {each_way[1] / n_calls * 1e6:6.1f} us  a layer {sum(each_way) / layers * 1e6:6.1f} us"
        )
    print(f"  outside the primitives, timers included: {(timed_pass - inside) / layers * 1e6:.1f} us a layer")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("schemes", help="comma-separated schemes, e.g. pre,siamese")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    config = CONFIGS[args.config]
    runs = {scheme: model_and_sample(scheme, config) for scheme in args.schemes.split(",")}
    per_pass = {scheme: float("inf") for scheme in runs}
    for _ in range(args.rounds):
        for scheme, run in runs.items():
            per_pass[scheme] = min(per_pass[scheme], seconds_a_pass(*run, args.reps))
    for scheme, run in runs.items():
        print_steps(scheme, *run, args.reps, per_pass[scheme], config["n_layers"])
    if "pre" in per_pass:
        print("x Pre-LN: " + ", ".join(f"{s} {t / per_pass['pre']:.2f}" for s, t in per_pass.items()))


if __name__ == "__main__":
    main()
