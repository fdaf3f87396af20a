"""A replayed pass with its residual branches fused (``lnref/autograd/fusion.py``) against the
same pass run as its recorded steps, in one process.

    python3 benchmarks/bench_fusion.py [--config small|medium] [--scheme pre] [--reps 9] [--processes 3]

Each process builds the model, replays its pass until both variants are warm, then alternates
them, one repetition each (a repetition: ``--min-time`` seconds of passes), so that both see
the same machine load; it prints the median ms per forward+backward of each and their ratio.
The recorded steps run when the fusion's check of the registry fails, which the script forces by
replacing that check, the one thing it changes. One BLAS thread, glibc's malloc thresholds
fixed as the ``lnref`` command fixes them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "small": (dict(n_layers=48, d_model=16, n_heads=2, d_ff=64), 2, 8),
    "medium": (dict(n_layers=48, d_model=64, n_heads=4, d_ff=256), 4, 32),
}


def child(args):
    sys.path.insert(0, str(ROOT))
    from lnref.process.allocator import keep_freed_memory

    keep_freed_memory()
    import lnref
    from lnref.autograd import fusion

    dims, batch, seq = CONFIGS[args.config]
    model = lnref.build(args.scheme, **dims)
    x, dy, _ = model.sample_inputs(batch=batch, seq=seq)
    in_place = fusion.defined_primitives_in_place

    def passes(fused, number):
        fusion.defined_primitives_in_place = in_place if fused else (lambda: False)
        started = time.perf_counter()
        for _ in range(number):
            model.value_and_grad(x, dy)
        return (time.perf_counter() - started) / number

    number = max(1, round(args.min_time / passes(True, 3)))
    passes(False, 3)
    times = {True: [], False: []}
    for _ in range(args.reps):
        for fused in (True, False):
            times[fused].append(passes(fused, number))
    fused, recorded = (statistics.median(times[key]) * 1e3 for key in (True, False))
    print(f"{fused:.3f} {recorded:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=CONFIGS, default="small")
    parser.add_argument("--scheme", default="pre")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--min-time", type=float, default=0.3)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--child", "--config", args.config, "--scheme", args.scheme]
    command += ["--reps", str(args.reps), "--min-time", str(args.min_time)]
    print(f"# {args.config} {args.scheme}: ms per forward+backward, median of {args.reps} repetitions")
    print("process  fused  recorded  fused/recorded")
    for process in range(args.processes):
        out = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout.split()
        fused, recorded = float(out[0]), float(out[1])
        print(f"{process:7d} {fused:6.2f} {recorded:9.2f} {fused / recorded:15.3f}")


if __name__ == "__main__":
    main()
