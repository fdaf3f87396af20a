"""Numba loop twins vs their NumPy twins, measured in one run: where each loop stops paying.

    python3 benchmarks/bench_ops.py [--reps N] [--min-time SECONDS]

For LayerNorm, softmax, attention, the attention sublayer (projections, attention and output
projection), the linear map, the FFN and the DyT, Derf and ScaleNorm norm kinds, times forward +
backward of each twin (taken from the seam, ``seam.twin(name).loop`` and ``.reference``, and
called directly, so the comparison holds whatever ``LNREF_KERNELS`` says). Attention is
timed on the token-major layout the model uses, (B, T, H, Dh), for both compiled paths, the
loop twins and the blocked path (BLAS products and in-place softmax kernels), against the
NumPy twin on the same arrays. The shapes of attention, the sublayer, the linear map and the
FFN straddle the limits their twins declare (``loop_pays_up_to``, up to which the seam picks the
loop): the "picked" column says which path the seam takes at each shape, so these rows are
the evidence for the limits (``docs/performance.md``).

Every kernel is called once first so Numba's compile time is excluded. Each figure is the
median over ``--reps`` repetitions; one repetition runs the callable enough times to last
``--min-time`` seconds, and reports the time per call. Repetitions of the implementations
compared alternate, so they see the same machine load.

Prints a table with the speedup (NumPy time / Numba time), then one JSON line per figure,
then whether the target (LayerNorm forward+backward at (2048, 64) at least 3x faster with
Numba) was met. A quick look: ``--reps 1 --min-time 0.001``.

Allocator: on a VM whose host takes back the memory glibc returns to the kernel, touching a
freshly mapped page costs microseconds. With glibc's default (adaptive) trim and mmap
thresholds, whether the 1 MB+ output arrays of a call are fresh pages depends on the heap's
history, and that can swamp the kernels themselves (``docs/performance.md``). By default
this script therefore pins both thresholds with ``mallopt`` (for this process only, both
twins alike) so each figure measures the kernel; ``--default-malloc`` keeps glibc's
defaults to see the page-fault-bound numbers.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lnref.autograd.kernels import feed_forward, linear, seam  # noqa: E402
from lnref.autograd.kernels.attention import attention_work  # noqa: E402
from lnref.autograd.kernels.attention_sublayer import attention_sublayer_work  # noqa: E402

ROW_SHAPES = [(64, 16), (2048, 64), (8192, 256)]
# (B, H, T, Dh), S = T: the small model, its gradient checker's batched passes, the
# medium and large models of benchmarks/bench_model.py, and one near the crossover.
ATTENTION_SHAPES = [(2, 2, 8, 8), (20, 2, 8, 8), (2, 4, 16, 16), (4, 4, 32, 16), (8, 8, 64, 32)]
# (B, T, d_model, H), self-attention: the small model, its gradient checker's batches, two
# sizes between, the medium model. They straddle the sublayer twins' two limits, up to which
# the whole sublayer runs as one compiled call each way ("numba") instead of NumPy/BLAS
# products around the attention kernels.
SUBLAYER_SHAPES = [(2, 8, 16, 2), (20, 8, 16, 2), (2, 16, 32, 4), (8, 16, 32, 4), (4, 32, 64, 4)]
# (n, d_in, d_out): the small model's two FFN maps, larger ones straddling the linear twins'
# limit (the FFN's too; it depends on the kernels OpenBLAS runs), the medium model's attention
# projections (which the family's NumPy twins take through the linear kernels) and its FFN map.
LINEAR_SHAPES = [(16, 16, 64), (16, 64, 16), (32, 16, 64), (64, 16, 64), (160, 16, 64), (512, 16, 64)]
LINEAR_SHAPES += [(1024, 16, 64), (128, 64, 64), (128, 64, 256)]
# (n, d_model, d_ff): the FFN's rows around the same limit.
FFN_SHAPES = [(16, 16, 64), (32, 16, 64), (64, 16, 64), (160, 16, 64), (512, 16, 64)]
# (n, d): the small model's norms, and larger ones straddling DyT's limit (Derf and ScaleNorm
# have none).
NORM_KIND_SHAPES = [(16, 16), (32, 16), (64, 16), (128, 64), (1024, 128)]
EPS = 1e-5
TARGET = ("layer_norm fwd+bwd", (2048, 64), 3.0)


def twins(kernel, path):
    """The forward and backward implementations of ``kernel`` on ``path`` (as the seam names them)."""
    return tuple(seam.twin(f"{kernel}_{direction}").paths[path] for direction in ("forward", "backward"))


def picked(kernel, *work):
    """The path the seam takes for a call of ``kernel``'s forward of this much work."""
    twin = seam.twin(f"{kernel}_forward")
    chosen = twin.pick(*work)
    return next(name for name, implementation in twin.paths.items() if implementation is chosen)


def layer_norm_case(shape, rng):
    n, d = shape
    x = rng.standard_normal((n, d))
    gamma = rng.standard_normal(d)
    beta = rng.standard_normal(d)
    dy = rng.standard_normal((n, d))

    def make(forward, backward):
        def run():
            _, mean, rstd = forward(x, gamma, beta, EPS)
            return backward(dy, x, gamma, mean, rstd)

        return run

    return make(*twins("layer_norm", "loop")), make(*twins("layer_norm", "reference"))


def softmax_case(shape, rng):
    x = 3.0 * rng.standard_normal(shape)
    dp = rng.standard_normal(shape)

    def make(forward, backward):
        def run():
            return backward(dp, forward(x))

        return run

    return make(*twins("softmax", "loop")), make(*twins("softmax", "reference"))


def attention_case(shape, rng, causal, path):
    """(compiled path, NumPy twin) on token-major arrays (B, T, H, Dh)."""
    batch, heads, seq, head_dim = shape
    q, k, v, dout = (rng.standard_normal((batch, seq, heads, head_dim)) for _ in range(4))

    def make(forward, backward):
        def run():
            _, probs = forward(q, k, v, causal)
            return backward(dout, q, k, v, probs)

        return run

    return make(*twins("attention", path)), make(*twins("attention", "reference"))


def attention_sublayer_case(shape, rng):
    """(one compiled call each way, NumPy/BLAS composition) for a self-attention sublayer
    of x (B, T, d) with H heads."""
    batch, seq, d_model, heads = shape
    x, dout = (rng.standard_normal((batch, seq, d_model)) for _ in range(2))
    weights = [
        rng.standard_normal((d_model, d_model)) / math.sqrt(d_model) if i % 2 == 0 else rng.standard_normal(d_model)
        for i in range(8)
    ]

    def make(forward, backward):
        def run():
            outputs = forward(x, None, *weights, heads, False)
            return backward(dout, x, None, *weights[::2], *outputs[1:])

        return run

    return make(*twins("attention_sublayer", "loop")), make(*twins("attention_sublayer", "reference"))


def linear_case(shape, rng):
    """(loop kernels, NumPy/BLAS products) for y = x W + b, x of shape (n, d_in)."""
    n, d_in, d_out = shape
    x, w, b, dy = (rng.standard_normal(s) for s in ((n, d_in), (d_in, d_out), (d_out,), (n, d_out)))

    def make(forward, backward):
        def run():
            forward(x, w, b)
            return backward(dy, x, w)

        return run

    return make(*twins("linear", "loop")), make(*twins("linear", "reference"))


def ffn_case(shape, rng):
    """(the FFN's loop kernels, its NumPy/BLAS composition: BLAS's products around the
    activation, whatever path the linear twins would pick) for x of shape (n, d_model), ReLU."""
    n, d_model, d_ff = shape
    x, dy = rng.standard_normal((n, d_model)), rng.standard_normal((n, d_model))
    w1, w2 = rng.standard_normal((d_model, d_ff)) / 4, rng.standard_normal((d_ff, d_model)) / 8
    b1, b2 = rng.standard_normal(d_ff), rng.standard_normal(d_model)
    loop_forward, loop_backward = twins("feed_forward", "loop")

    def looped():
        _, hidden, acted = loop_forward(x, w1, b1, w2, b2, "relu")
        return loop_backward(dy, x, w1, w2, hidden, acted, "relu")

    def composed():
        hidden = linear.linear_forward_reference(x, w1, b1)
        acted = feed_forward.activate(hidden, "relu")
        linear.linear_forward_reference(acted, w2, b2)
        dacted, _, _ = linear.linear_backward_reference(dy, acted, w2)
        dhidden = feed_forward.activation_backward(dacted, hidden, acted, "relu")
        return linear.linear_backward_reference(dhidden, x, w1)

    return looped, composed


def norm_kind_case(kernel, shape, rng):
    """(loop twins, NumPy twins) of the DyT, Derf or ScaleNorm kernels on rows (n, d)."""
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    alpha, shift, g = np.asarray(0.5), np.asarray(0.1), np.asarray(math.sqrt(shape[1]))
    gamma, beta = 1.0 + 0.1 * rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    arguments = {
        "dyt": ((x, alpha, gamma, beta), lambda out: (dy, x, alpha, gamma)),
        "derf": ((x, alpha, shift, gamma, beta), lambda out: (dy, x, alpha, shift, gamma)),
        "scale_norm": ((x, g, EPS), lambda out: (dy, x, g, out[1], EPS)),
    }[kernel]

    def make(forward, backward):
        def run():
            return backward(*arguments[1](forward(*arguments[0])))

        return run

    return make(*twins(kernel, "loop")), make(*twins(kernel, "reference"))


def pin_glibc_malloc():
    """Stop glibc from trimming the heap and from mmap-ing large blocks.

    Returns whether it worked (False off glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    # 32 MiB is glibc's ceiling for the mmap threshold on 64-bit systems.
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def _calls_per_rep(fn, min_time):
    fn()  # warm-up: compiles the Numba kernel, faults in the first buffers
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, math.ceil(min_time / once))


def median_seconds_per_call(fns, reps, min_time):
    """Median time per call of each callable in ``fns``, over ``reps`` repetitions.

    Repetitions of the callables alternate, so a change in machine load hits
    all of them alike rather than one twin's whole measurement.
    """
    numbers = [_calls_per_rep(fn, min_time) for fn in fns]
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, number, bucket in zip(fns, numbers, times):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            bucket.append((time.perf_counter() - start) / number)
    return [statistics.median(bucket) for bucket in times], numbers


def cases():
    """(name, shape, (numba callable, numpy callable), the path the seam picks at that shape)."""
    rng = np.random.default_rng(0)
    for shape in ROW_SHAPES:
        yield "layer_norm fwd+bwd", shape, layer_norm_case(shape, rng), picked("layer_norm")
    for shape in ROW_SHAPES:
        yield "softmax fwd+bwd", shape, softmax_case(shape, rng), picked("softmax")
    for shape in ATTENTION_SHAPES:
        batch, heads, seq, head_dim = shape
        path_picked = picked("attention", attention_work(batch, heads, seq, seq, head_dim))
        for causal in (False, True):
            for path in ("loop", "blocked"):
                name = f"attention {path}" + (" causal" if causal else "")
                yield name, shape, attention_case(shape, rng, causal, path), path_picked
    for shape in SUBLAYER_SHAPES:
        batch, seq, d_model, _ = shape
        path_picked = picked("attention_sublayer", *attention_sublayer_work(batch, seq, seq, d_model))
        yield "attention sublayer", shape, attention_sublayer_case(shape, rng), path_picked
    for shape in LINEAR_SHAPES:
        n, d_in, d_out = shape
        yield "linear fwd+bwd", shape, linear_case(shape, rng), picked("linear", n * d_in * d_out)
    for shape in FFN_SHAPES:
        n, d_model, d_ff = shape
        yield "ffn fwd+bwd", shape, ffn_case(shape, rng), picked("feed_forward", n * d_model * d_ff)
    for kernel in ("dyt", "derf", "scale_norm"):
        for shape in NORM_KIND_SHAPES:
            yield f"{kernel} fwd+bwd", shape, norm_kind_case(kernel, shape, rng), picked(kernel, shape[0] * shape[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="repetitions per figure (median taken)")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per repetition, at least")
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's adaptive malloc thresholds")
    args = parser.parse_args(argv)
    malloc = "glibc default" if args.default_malloc else ("pinned" if pin_glibc_malloc() else "default (pin failed)")

    from numba import config as numba_config

    if numba_config.DISABLE_JIT:
        print("NUMBA_DISABLE_JIT is set: the loop kernels would run as Python; nothing to compare.")
        return 1

    print(
        f"# numpy {np.__version__}, numba {__import__('numba').__version__}, python {platform.python_version()}, "
        f"{os.cpu_count()} cpus; float64; median of {args.reps} reps, >= {args.min_time}s each; malloc {malloc}"
    )
    header = f"{'kernel':<26} {'shape':<16} {'numpy ms':>10} {'numba ms':>10} {'speedup':>8}  {'picked':<9}"
    print(header)
    print("-" * len(header))
    rows = []
    for name, shape, (numba_fn, numpy_fn), path_picked in cases():
        (numba_s, numpy_s), (numba_n, numpy_n) = median_seconds_per_call([numba_fn, numpy_fn], args.reps, args.min_time)
        speedup = numpy_s / numba_s
        rows.append((name, shape, numpy_s, numba_s, speedup, numpy_n, numba_n, path_picked))
        print(
            f"{name:<26} {str(shape):<16} {numpy_s * 1e3:>10.4f} {numba_s * 1e3:>10.4f} {speedup:>7.2f}x  "
            f"{path_picked:<9}",
            flush=True,
        )

    print()
    for name, shape, numpy_s, numba_s, speedup, numpy_n, numba_n, path_picked in rows:
        for impl, seconds, number in (("numpy", numpy_s, numpy_n), ("numba", numba_s, numba_n)):
            print(
                json.dumps(
                    {
                        "benchmark": name,
                        "shape": list(shape),
                        "dtype": "float64",
                        "impl": impl,
                        "median_s": seconds,
                        "reps": args.reps,
                        "calls_per_rep": number,
                        "malloc": malloc,
                        "speedup_numpy_over_numba": speedup,
                        "picked": path_picked,
                    }
                )
            )

    target_name, target_shape, target_ratio = TARGET
    measured = next(r[4] for r in rows if r[0] == target_name and r[1] == target_shape)
    verdict = "met" if measured >= target_ratio else "NOT met"
    print(f"\ntarget: {target_name} at {target_shape} >= {target_ratio:.0f}x faster with Numba: ", end="")
    print(f"{measured:.2f}x, {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
