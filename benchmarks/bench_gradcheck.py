"""Time `lnref gradcheck` (cold and warm Numba cache) against torch.autograd.gradcheck.

    python benchmarks/bench_gradcheck.py [--scheme residual] [--layers 48] [--repeats 3]

Every figure is measured in this run. lnref: the default directional check of every tensor
(and blockwise mode), in a fresh process with an empty Numba cache (cold) and again with the
cache filled (warm), plus the in-process time of a warm check. PyTorch, when installed: the
same model (an independent port, tests/interop/torch_port.py) at the same parameters, checked
by ``torch.autograd.gradcheck(fast_mode=True)`` over every parameter tensor and the input.
Prints a table and one JSON line per figure.
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
sys.path.insert(0, str(ROOT))


def lnref_process(args, cache_dir):
    """Wall time of one `python -m lnref gradcheck ...` in a fresh process."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lnref", "gradcheck", *args, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"lnref gradcheck failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return seconds, json.loads(done.stdout)


def lnref_in_process(scheme, layers, mode, repeats):
    import lnref
    from lnref import gradcheck

    model = lnref.build(scheme, n_layers=layers)
    gradcheck.gradcheck(model, mode=mode)  # compile and warm up
    times = []
    for _ in range(repeats):
        report = gradcheck.gradcheck(model, mode=mode)
        times.append(report.seconds)
    return statistics.median(times), report


def torch_fast_gradcheck(scheme, layers, repeats):
    """Median seconds of torch.autograd.gradcheck(fast_mode=True) on the same model, or None."""
    try:
        import torch
    except ImportError:
        return None
    sys.path.insert(0, str(ROOT / "tests" / "interop"))
    import lnref
    from lnref.gradcheck import jitter_params
    from torch_port import Transformer

    model = lnref.build(scheme, n_layers=layers)
    x, dy, _ = model.sample_inputs()
    params = jitter_params(model.params, model.config.seed)
    names = list(params)
    config = model.config.to_dict()
    leaves = [torch.tensor(params[n], requires_grad=True) for n in names]
    x_leaf = torch.tensor(x, requires_grad=True)

    def forward(*tensors):
        y, _ = Transformer(config, dict(zip(names, tensors[:-1]))).forward(tensors[-1])
        return y

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        ok = torch.autograd.gradcheck(forward, (*leaves, x_leaf), fast_mode=True, raise_exception=False)
        times.append(time.perf_counter() - started)
        if not ok:
            print("warning: torch gradcheck reported a mismatch", file=sys.stderr)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", default="residual")
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    options = parser.parse_args()
    args = ["--scheme", options.scheme, "--layers", str(options.layers)]

    figures = []
    with tempfile.TemporaryDirectory() as cache_dir:
        cold, cold_report = lnref_process(args, cache_dir)
        warm, _ = lnref_process(args, cache_dir)
    figures.append(("lnref gradcheck, fresh process, cold Numba cache", cold, cold_report["summary"]))
    figures.append(("lnref gradcheck, fresh process, warm Numba cache", warm, ""))
    directional, report = lnref_in_process(options.scheme, options.layers, "directional", options.repeats)
    figures.append(("lnref directional check (in process, warm)", directional, report.summary()))
    blockwise, block_report = lnref_in_process(options.scheme, options.layers, "blockwise", options.repeats)
    figures.append(("lnref blockwise check (in process, warm)", blockwise, block_report.summary()))
    torch_seconds = None if options.no_torch else torch_fast_gradcheck(options.scheme, options.layers,
                                                                       options.repeats)
    if torch_seconds is None:
        print("note: PyTorch not installed (or --no-torch): no torch.autograd.gradcheck comparison")
    else:
        figures.append(("torch.autograd.gradcheck(fast_mode=True)", torch_seconds, ""))

    print(f"\n{options.scheme}, {options.layers} layers, d_model 16, 2 heads, d_ff 64, seq 8, batch 2, float64")
    print(f"{'what':52s} {'seconds':>9s}  {'vs torch':>8s}  result")
    for label, seconds, result in figures:
        ratio = f"{seconds / torch_seconds:8.3f}" if torch_seconds else f"{'-':>8s}"
        print(f"{label:52s} {seconds:9.2f}  {ratio}  {result}")
    for label, seconds, result in figures:
        print(json.dumps({"benchmark": "gradcheck", "what": label, "seconds": round(seconds, 4),
                          "ratio_vs_torch_fast": None if not torch_seconds else round(seconds / torch_seconds, 4),
                          "scheme": options.scheme, "layers": options.layers, "result": result}))


if __name__ == "__main__":
    main()
