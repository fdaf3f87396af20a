"""lnref forward+backward against PyTorch on small, deep models, measured side by side.

    python3 benchmarks/bench_model.py [--threads 1,2] [--reps 7] [--min-time 0.3] [--processes 3]
                                      [--configs small,medium,large] [--schemes pre,post] [--no-split]

The three configurations of the performance targets (float64, Pre-LN and Post-LN):

    small   48 layers, d_model 16,  2 heads, d_ff 64,   seq 8,  batch 2   target lnref/torch <= 0.20
    medium  48 layers, d_model 64,  4 heads, d_ff 256,  seq 32, batch 4   target <= 0.70
    large   12 layers, d_model 256, 8 heads, d_ff 1024, seq 64, batch 8   target <= 0.90, and lnref
                                    >= 75% of the matmul ceiling at 1 thread, >= 65% at 2 threads

What is timed. lnref: ``model.value_and_grad(x, dy)``, the loss sum(y * dy) and the gradient of
every parameter and of the input. Its first call, in the warm-up, is a taped pass that also
traces its primitives; every timed call replays that trace (``lnref/autograd/replay.py``), as
any repeated call with inputs of the same shapes does. PyTorch: the same model written with
torch ops (``F.linear`` with weights stored (d_out, d_in) as ``nn.Linear`` does, ``F.layer_norm``,
``F.scaled_dot_product_attention``, ``F.relu``), the weights copied from lnref's, and
``torch.autograd.grad`` of the same loss with respect to every parameter and the input. Before
timing, the two are checked to agree (output, loss, every gradient) to 1e-10 relative.

How. Each thread count and configuration runs in ``--processes`` fresh processes, one
after the other, and every figure is the median over them (the ratio: the median of the
processes' own ratios). One process is one draw of the memory layout, which moves an
interpreter-bound pass by 10-15% from process to process (measured: 7.8 to 9.5 ms for the
small model's Pre-LN pass, same code, consecutive processes); the median of a few draws
does not hang on one. Each process (``OPENBLAS_NUM_THREADS``,
``OMP_NUM_THREADS`` and ``torch.set_num_threads`` all set to the thread count), which starts
by fixing glibc's malloc thresholds as the ``lnref`` command does (``lnref/process/allocator.py``), for
both sides: with the default, adaptive thresholds a pass's arrays can come from freshly mapped
pages every call, and what a process ran before changes how many (measured, lnref alone: 72,000
page faults per call on the large model, 742 ms against 554 ms with the thresholds fixed;
1,800 on the medium model). It also sets ``OPENBLAS_THREAD_TIMEOUT`` as the command does
(``lnref/process/blas.py``), before NumPy loads: OpenBLAS's idle workers then sleep after tens of
microseconds instead of spinning for a tenth of a second, which leaves the second core to the
large model's attention core, split over the BLAS threads' count of threads
(``kernels.attention_blocked.over_batch_parts``). PyTorch's own BLAS (MKL) does not read the variable, but
it gains too: NumPy's workers no longer spin into PyTorch's turn (measured, medium model at
2 threads, 4 runs of 2 processes: PyTorch 130-156 ms with the setting, 160-184 ms with
OpenBLAS's default; lnref 87-118 ms either way). In that process the two sides alternate, one
repetition each, so a change of machine load hits both alike; a repetition runs the callable
enough times to last ``--min-time`` seconds; each figure is the median over ``--reps``
repetitions. The ceiling is the float64 GFLOP/s of a 2048 x 2048 matrix product (NumPy's BLAS
and torch's, the better of the two), its repetitions alternating with the model's, so that it
sees the same load. The CPU time that other processes (and the hypervisor, as steal) took
during a measurement is read from /proc/stat; above a quarter of a CPU the figures are
flagged as inconclusive.

FLOPs. Exactly the matrix products, forward and backward, 2 FLOPs per multiply-add: per
linear map of N = batch * seq rows, N d_in d_out multiply-adds forward and twice that backward
(dx and dW); per attention, 2 B H T S Dh forward (Q K^T and P V) and 4 B H T S Dh backward.
Norms, softmax, biases and activations (a few percent) are not counted, so the GFLOP/s figures
are slight underestimates for both sides.

The split. The first process of each configuration also splits one forward+backward of each
side by kind of work (products, attention, norms, element-wise, compiled sublayers, and the
Python and tape overhead that remains; ``split.py`` says how), and describes the machine: CPU,
caches, BLAS and the kernel it picked, versions, and the OpenBLAS variables of the environment.

The products alone. Each process also times, alternating with the passes, the model's linear
maps' products with nothing around them, on each side's own BLAS (``products_alone.py``):
NumPy's time over PyTorch's is how far apart the two libraries alone put the sides, and
NumPy's time over PyTorch's whole pass is the lnref/torch that lnref would reach if nothing
but these products took time (printed beside each ratio's verdict).

Prints the machine, a table, the splits, one JSON line per figure, and the targets met or not. Without PyTorch it says
so and still reports lnref's own times and GFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from products_alone import products_callables  # noqa: E402
from split import describe_machine, format_split, lnref_split, machine_description, torch_split  # noqa: E402
from torch_twin import TorchTwin, check_agreement  # noqa: E402

CONFIGS = {
    "small": dict(n_layers=48, d_model=16, n_heads=2, d_ff=64, seq=8, batch=2),
    "medium": dict(n_layers=48, d_model=64, n_heads=4, d_ff=256, seq=32, batch=4),
    "large": dict(n_layers=12, d_model=256, n_heads=8, d_ff=1024, seq=64, batch=8),
}
TARGET_RATIO = {"small": 0.20, "medium": 0.70, "large": 0.90}  # lnref time / torch time, at most
TARGET_CEILING_SHARE = ("large", {1: 0.75, 2: 0.65})  # lnref GFLOP/s / matmul ceiling, at least, by threads
AGREEMENT_RTOL = 1e-10
OTHER_CPUS_LIMIT = 0.25  # CPUs' worth of other work during a measurement above which it is flagged
CEILING_SIZE = 2048


# ----- exact FLOP count ---------------------------------------------------------------------


def matmul_flops(config):
    """FLOPs of the matrix products of one forward+backward (see the module docstring)."""
    n_layers, d, d_ff = config["n_layers"], config["d_model"], config["d_ff"]
    rows = config["batch"] * config["seq"]
    linear_macs = rows * (4 * d * d + 2 * d * d_ff)  # q, k, v, o; W1, W2
    attention_macs = 2 * config["batch"] * config["seq"] * config["seq"] * d  # sum over heads of T S Dh
    forward = linear_macs + attention_macs
    backward = 2 * linear_macs + 2 * attention_macs
    return 2 * n_layers * (forward + backward)


# ----- timing -----------------------------------------------------------------------------


def calls_per_rep(fn, min_time):
    fn()  # warm-up: compiles, allocates, faults in pages
    started = time.perf_counter()
    fn()
    once = max(time.perf_counter() - started, 1e-6)
    return max(1, round(min_time / once))


def alternate(fns, reps, min_time):
    """Median seconds per call of each callable, repetitions alternating between them."""
    numbers = [calls_per_rep(fn, min_time) for fn in fns]
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, number, bucket in zip(fns, numbers, times):
            started = time.perf_counter()
            for _ in range(number):
                fn()
            bucket.append((time.perf_counter() - started) / number)
    return [statistics.median(b) for b in times], numbers


def matmul_callables(torch):
    """{"numpy": fn, "torch": fn}: one CEILING_SIZE^2 float64 product each."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, CEILING_SIZE, CEILING_SIZE))
    fns = {"numpy": lambda: a @ b}
    if torch is not None:
        ta, tb = torch.tensor(a), torch.tensor(b)
        fns["torch"] = lambda: ta @ tb
    return fns


def busy_cpu_seconds():
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq) or
    taken by the hypervisor (steal), from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process, BLAS's too
    return usage.ru_utime + usage.ru_stime


def child(args):
    """Measure everything at one thread count; print one JSON document."""
    import lnref
    from lnref.process import blas
    from lnref.process.allocator import keep_freed_memory

    # As the lnref command does, for both sides (see lnref/process/allocator.py, lnref/process/blas.py and the
    # docstring). NumPy is not loaded yet: OpenBLAS will read the setting.
    allocator = "glibc thresholds fixed" if keep_freed_memory() else "default"
    blas_idle_workers = "sleep" if blas.let_idle_workers_sleep() else "spin"

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
    figures = {
        "threads": args.threads,
        "torch": None if torch is None else torch.__version__,
        "reps": args.reps,
        "min_time": args.min_time,
        "allocator": allocator,
        "blas_idle_workers": blas_idle_workers,
        "runs": [],
    }
    if args.split:
        figures["machine"] = machine_description()
    started, busy_before, own_before = time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds()
    matmuls = matmul_callables(torch)
    for config_name in args.configs:
        config = CONFIGS[config_name]
        dims = {k: v for k, v in config.items() if k not in ("seq", "batch")}
        for scheme in args.schemes:
            model = lnref.build(scheme, **dims)
            x, dy, _ = model.sample_inputs(batch=config["batch"], seq=config["seq"])
            fns = {"lnref": lambda model=model, x=x, dy=dy: model.value_and_grad(x, dy)}
            run = {"config": config_name, "scheme": scheme, "flops": matmul_flops(config)}
            if torch is not None:
                twin = TorchTwin(model, torch)
                run["agreement"] = check_agreement(model, twin, x, dy, torch)
                if not run["agreement"] <= AGREEMENT_RTOL:
                    raise SystemExit(f"{config_name} {scheme}: lnref and torch differ by {run['agreement']:.3g}")
                tx, tdy = torch.tensor(x, requires_grad=True), torch.tensor(dy)
                fns["torch"] = lambda twin=twin, tx=tx, tdy=tdy: twin.value_and_grad(tx, tdy)
            # The ceiling's products alternate with the model runs: they see the same load.
            fns.update({f"matmul {name}": fn for name, fn in matmuls.items()})
            fns.update(products_callables(config, torch))
            seconds, numbers = alternate(list(fns.values()), args.reps, args.min_time)
            timed = dict(zip(fns, seconds))
            run["lnref_s"], run["lnref_calls_per_rep"] = timed["lnref"], numbers[0]
            if torch is not None:
                run["torch_s"], run["torch_calls_per_rep"] = timed["torch"], numbers[1]
            run["ceiling"] = {name: 2 * CEILING_SIZE**3 / timed[f"matmul {name}"] / 1e9 for name in matmuls}
            run["products_alone"] = {name.split()[0]: seconds for name, seconds in timed.items() if "products" in name}
            if args.split:
                run["split"] = {"lnref": lnref_split(fns["lnref"])}
                if torch is not None:
                    run["split"]["torch"] = torch_split(fns["torch"], torch)
            figures["runs"].append(run)
            print(f"  threads {args.threads}: {config_name} {scheme} done", file=sys.stderr, flush=True)
    if busy_before is not None:
        # What the rest of the machine took meanwhile, in CPUs: the contention these figures saw.
        others = busy_cpu_seconds() - busy_before - (own_cpu_seconds() - own_before)
        figures["other_cpus"] = max(others, 0.0) / (time.perf_counter() - started)
    print(json.dumps(figures))


# ----- the report -------------------------------------------------------------------------


def measure(threads, config, args):
    """The figures of one configuration at one thread count: the medians over ``args.processes``
    fresh processes (the ratio, the median of theirs), each process's own figures under "draws"."""
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    command = [
        sys.executable,
        __file__,
        "--child",
        "--threads",
        str(threads),
        "--reps",
        str(args.reps),
        "--min-time",
        str(args.min_time),
        "--configs",
        config,
        "--schemes",
        ",".join(args.schemes),
    ]
    draws = []
    for draw in range(args.processes):
        split = ["--split"] if draw == 0 and not args.no_split else []  # one process's split is enough
        done = subprocess.run(command + split, env=env, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the measurement of {config} at {threads} thread(s) failed (exit {done.returncode})")
        draws.append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = dict(draws[0], runs=[], processes=len(draws))
    if all("other_cpus" in draw for draw in draws):
        result["other_cpus"] = max(draw["other_cpus"] for draw in draws)  # the worst contention any saw
    for index, first in enumerate(draws[0]["runs"]):
        runs = [draw["runs"][index] for draw in draws]
        run = dict(first, draws=runs)
        for key in ("lnref_s", "torch_s"):
            if key in first:
                run[key] = statistics.median(r[key] for r in runs)
        if "torch_s" in first:
            run["ratio"] = statistics.median(r["lnref_s"] / r["torch_s"] for r in runs)
        run["ceiling"] = {name: statistics.median(r["ceiling"][name] for r in runs) for name in first["ceiling"]}
        run["products_alone"] = {
            name: statistics.median(r["products_alone"][name] for r in runs) for name in first["products_alone"]
        }
        run["agreement"] = max(r.get("agreement", 0.0) for r in runs) if "agreement" in first else None
        result["runs"].append(run)
    return result


def openblas_environment():
    """The OpenBLAS variables of the environment (a forced kernel or cache size changes the figures)."""
    return ", ".join(f"{key}={value}" for key, value in sorted(os.environ.items()) if key.startswith("OPENBLAS_"))


def print_splits(results):
    """Per configuration and thread count, one forward+backward by kind of work (split.py)."""
    runs = [(result["threads"], run) for result in results for run in result["runs"] if "split" in run]
    if not runs:
        return
    print()
    print("# one forward+backward by kind of work, ms (share of the pass), from the first process:")
    for threads, run in runs:
        print(f"{run['config']} {run['scheme']}, {threads} thread(s):")
        ceiling = max(run["ceiling"].values())
        for side, split in run["split"].items():
            line = format_split(side, split)
            if split["products"] > 0 and not split.get("compiled sublayers"):
                # Every counted FLOP is a product's: the rate of the products alone, against the ceiling.
                rate = run["flops"] / (split["products"] + split["attention"]) / 1e9
                line += f"; products and attention at {rate:.1f} GFLOP/s, {rate / ceiling:.0%} of the ceiling"
            print(line)


def print_products_alone(results):
    """Per configuration and thread count, the model's linear products alone on each side's BLAS
    (products_alone.py), and the ratio they leave: NumPy's products alone over PyTorch's pass."""
    print()
    print("# the linear maps' products alone, each side's BLAS (products_alone.py), ms a pass:")
    for result in results:
        for run in result["runs"]:
            alone = run["products_alone"]
            line = f"{run['config']:7s} {result['threads']} thread(s): NumPy {alone['numpy'] * 1e3:8.2f}"
            if "torch" in alone:
                line += (
                    f", PyTorch {alone['torch'] * 1e3:8.2f} ({alone['numpy'] / alone['torch']:.2f}x); "
                    f"NumPy's alone / PyTorch's pass {alone['numpy'] / run['torch_s']:.3f}"
                )
            print(line)


def report(results, load_before, load_after):
    print(
        f"# python {platform.python_version()}, {os.cpu_count()} cpus, float64; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    machine = next((result["machine"] for result in results if "machine" in result), None)
    if machine is not None:
        print("\n".join(describe_machine(machine)))
        print(f"# OpenBLAS settings from the environment: {openblas_environment() or 'none'}")
    lines = []
    header = (
        f"{'config':7s} {'scheme':6s} {'thr':>3s} {'lnref ms':>9s} {'torch ms':>9s} {'ratio':>6s} "
        f"{'target':>7s} {'lnref GF/s':>10s} {'torch GF/s':>10s} {'ceiling':>8s} {'share':>6s}"
    )
    print(header)
    print("-" * len(header))
    verdicts = []
    for result in results:
        for run in result["runs"]:
            ceiling = max(run["ceiling"].values())
            lnref_gflops = run["flops"] / run["lnref_s"] / 1e9
            torch_s = run.get("torch_s")
            ratio = run.get("ratio")
            torch_gflops = run["flops"] / torch_s / 1e9 if torch_s else None
            share = lnref_gflops / ceiling
            target = TARGET_RATIO[run["config"]]
            print(
                f"{run['config']:7s} {run['scheme']:6s} {result['threads']:3d} {run['lnref_s'] * 1e3:9.2f} "
                + (f"{torch_s * 1e3:9.2f} {ratio:6.3f}" if torch_s else f"{'-':>9s} {'-':>6s}")
                + f" {'<=' + str(target):>7s} {lnref_gflops:10.2f} "
                + (f"{torch_gflops:10.2f}" if torch_gflops else f"{'-':>10s}")
                + f" {ceiling:8.1f} {share:6.1%}"
            )
            lines.append(
                {
                    "benchmark": "model forward+backward",
                    "config": run["config"],
                    "dims": CONFIGS[run["config"]],
                    "scheme": run["scheme"],
                    "threads": result["threads"],
                    "lnref_median_s": run["lnref_s"],
                    "torch_median_s": torch_s,
                    "ratio_lnref_over_torch": ratio,
                    "target_ratio_at_most": target,
                    "flops": run["flops"],
                    "lnref_gflops": lnref_gflops,
                    "torch_gflops": torch_gflops,
                    "ceiling_gflops": run["ceiling"],
                    "lnref_share_of_ceiling": share,
                    "agreement_max_rel_diff": run.get("agreement"),
                    "torch_version": result["torch"],
                    "reps": result["reps"],
                    "processes": result["processes"],
                    "ratio_per_process": [r["lnref_s"] / r["torch_s"] for r in run["draws"]] if torch_s else None,
                    "other_cpus": result.get("other_cpus"),
                    "allocator": result["allocator"],
                    "blas_idle_workers": result["blas_idle_workers"],
                    "split_s": run.get("split"),
                    "products_alone_s": run["products_alone"],
                }
            )
            if ratio is not None:
                floor = run["products_alone"]["numpy"] / torch_s  # lnref/torch were nothing but the products timed
                verdicts.append(
                    (
                        f"{run['config']} {run['scheme']} {result['threads']} thread(s): "
                        f"lnref/torch {ratio:.3f} <= {target} (NumPy's products alone: {floor:.3f})",
                        ratio <= target,
                    )
                )
            name, minimums = TARGET_CEILING_SHARE
            minimum = minimums.get(result["threads"], min(minimums.values()))
            if run["config"] == name:
                verdicts.append(
                    (
                        f"{name} {run['scheme']} {result['threads']} thread(s): "
                        f"{share:.1%} of the float64 matmul ceiling ({ceiling:.1f} GFLOP/s) >= {minimum:.0%}",
                        share >= minimum,
                    )
                )
    print_splits(results)
    print_products_alone(results)
    print()
    for line in lines:
        print(json.dumps(line))
    print()
    for result in results:
        others = result.get("other_cpus")
        if others is not None and others > OTHER_CPUS_LIMIT:
            configs = ", ".join(sorted({run["config"] for run in result["runs"]}))
            print(
                f"note: {configs} at {result['threads']} thread(s): other work used {others:.2f} of "
                f"{os.cpu_count()} cpus meanwhile: those figures competed with it and are inconclusive"
            )
    if results and results[0]["torch"] is None:
        print("note: PyTorch is not installed: no comparison, lnref's own figures only")
    for text, met in verdicts:
        print(f"target: {text}: {'met' if met else 'NOT met'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (parent) or one (child)")
    parser.add_argument("--reps", type=int, default=7, help="repetitions per figure (median taken)")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per repetition, at least")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per figure (median taken)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: small, medium, large")
    parser.add_argument("--schemes", default="pre,post", help="comma-separated: pre, post")
    parser.add_argument("--no-split", action="store_true", help="leave out the split of a pass by kind of work")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--split", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.schemes = [s for s in args.schemes.split(",") if s]
    unknown = [c for c in args.configs if c not in CONFIGS] + [s for s in args.schemes if s not in ("pre", "post")]
    if unknown:
        parser.error(f"unknown config or scheme: {', '.join(unknown)}")
    if args.processes < 1 or args.reps < 1:
        parser.error("--processes and --reps must be at least 1")
    if args.child:
        args.threads = int(args.threads)
        child(args)
        return 0
    load_before = os.getloadavg()
    results = []
    for threads in (int(t) for t in args.threads.split(",")):
        print(f"measuring at {threads} thread(s)...", file=sys.stderr, flush=True)
        for config in args.configs:
            results.append(measure(threads, config, args))
    report(results, load_before, os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
