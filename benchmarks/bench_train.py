"""One training step of the 18-layer language model: lnref against the same model in PyTorch.

A step is forward, backward and one Adam update, on a batch of the ``reverse`` task
(16 sequences of 16 tokens, d_model 32, 2 heads, d_ff 128, float64). The PyTorch twin
is written out here from its equations. Its weights are copied from lnref, and before timing
the script checks that both give the same loss and the same updated weights. Both are timed in the same
process with one thread each. The figure is the median over repetitions, after warm-up
steps that are not counted.

    python benchmarks/bench_train.py [--scheme post|pre] [--layers 18] [--repeats 30]

Without PyTorch, it still prints lnref's time and says the ratio was not measured.
"""

from __future__ import annotations

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # before NumPy loads BLAS: one thread, like torch below

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lnref.optim import Adam  # noqa: E402
from lnref.tasks import (
    IGNORE,  # noqa: E402
    get_task,  # noqa: E402
)
from lnref.train import TrainConfig, make_lm  # noqa: E402

BETAS, ADAM_EPS, LR = (0.9, 0.98), 1e-8, 1e-3


def lnref_step(lm, optimizer, tokens, targets):
    _, grads = lm.value_and_grad(tokens, targets)
    optimizer.step(lm.params, grads, LR)


def torch_twin(torch, lm, scheme):
    """The same language model as a PyTorch function of a dict of float64 leaf tensors."""
    import torch.nn.functional as F

    config = lm.config
    heads, d_model, eps = config.n_heads, config.d_model, config.eps
    params = {name: torch.tensor(value, requires_grad=True) for name, value in lm.params.items()}

    def norm(x, prefix):
        return F.layer_norm(x, (d_model,), params[prefix + ".gamma"], params[prefix + ".beta"], eps)

    def attention(x, prefix):
        batch, seq, _ = x.shape

        def project(name):
            y = x @ params[f"{prefix}.w{name}"] + params[f"{prefix}.b{name}"]
            return y.view(batch, seq, heads, d_model // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(project("q"), project("k"), project("v"), is_causal=True)
        out = out.transpose(1, 2).reshape(batch, seq, d_model)
        return out @ params[f"{prefix}.wo"] + params[f"{prefix}.bo"]

    def ffn(x, prefix):
        hidden = torch.relu(x @ params[f"{prefix}.w1"] + params[f"{prefix}.b1"])
        return hidden @ params[f"{prefix}.w2"] + params[f"{prefix}.b2"]

    def loss_fn(tokens, targets):
        x = params["embed.tokens"][tokens] + params["embed.positions"][: tokens.shape[1]]
        for i in range(config.n_layers):
            for name, branch in (("attn", attention), ("ffn", ffn)):
                prefix = f"layers.{i}."
                if scheme == "post":
                    x = norm(x + branch(x, prefix + name), prefix + f"ln_{name}")
                else:
                    x = x + branch(norm(x, prefix + f"ln_{name}"), prefix + name)
        if scheme == "pre":
            x = norm(x, "final_ln")
        flat_targets = targets.reshape(-1)
        rows = torch.nonzero(flat_targets != IGNORE).squeeze(1)
        logits = x.reshape(-1, d_model)[rows] @ params["head.w"] + params["head.b"]
        return F.cross_entropy(logits, flat_targets[rows])

    return params, loss_fn


def median_seconds(step, repeats, warmup=3):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", choices=("post", "pre"), default="post")
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    task = get_task("reverse")
    config = TrainConfig(scheme=args.scheme, layers=args.layers, task="reverse", lr=LR, warmup=0, steps=1)
    tokens, targets = task.batch(np.random.default_rng(0), config.batch)
    lm = make_lm(config, task)
    print(
        f"one training step (forward + backward + Adam) of a {args.layers}-layer {args.scheme} language model: "
        f"d_model {config.d_model}, d_ff {4 * config.d_model}, batch {config.batch} x seq {task.seq_len}, "
        f"{lm.n_params()} parameters, float64, one thread"
    )

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(1)
        params, loss_fn = torch_twin(torch, lm, args.scheme)
        torch_optimizer = torch.optim.Adam(params.values(), lr=LR, betas=BETAS, eps=ADAM_EPS)
        torch_tokens, torch_targets = torch.tensor(tokens), torch.tensor(targets)
        # Same model: equal loss before the step, and equal weights after one step of each.
        ours = lm.loss(tokens, targets)
        with torch.no_grad():
            theirs = float(loss_fn(torch_tokens, torch_targets))
        check_lm = make_lm(config, task)
        lnref_step(check_lm, Adam(check_lm.params, betas=BETAS, eps=ADAM_EPS), tokens, targets)
        torch_optimizer.zero_grad()
        loss_fn(torch_tokens, torch_targets).backward()
        torch_optimizer.step()
        weight_gap = max(float(np.abs(check_lm.params[n] - p.detach().numpy()).max()) for n, p in params.items())
        print(
            f"same model: loss {ours:.12f} (lnref) vs {theirs:.12f} (PyTorch); "
            f"largest weight difference after one Adam step {weight_gap:.1e}"
        )
        if abs(ours - theirs) > 1e-9 * abs(ours) or weight_gap > 1e-8:
            print("error: the two models disagree; the timing would compare different computations")
            return 1

        def torch_step():
            torch_optimizer.zero_grad()
            loss_fn(torch_tokens, torch_targets).backward()
            torch_optimizer.step()

    optimizer = Adam(lm.params, betas=BETAS, eps=ADAM_EPS)
    lnref_time = median_seconds(lambda: lnref_step(lm, optimizer, tokens, targets), args.repeats)
    print(f"lnref:   {1e3 * lnref_time:8.2f} ms per step (median of {args.repeats})")
    if torch is None:
        print("PyTorch: not installed, ratio not measured (pip install torch==2.13.0)")
        return 0
    torch_time = median_seconds(torch_step, args.repeats)
    print(f"PyTorch: {1e3 * torch_time:8.2f} ms per step (median of {args.repeats}, torch {torch.__version__})")
    print(f"ratio lnref / PyTorch: {lnref_time / torch_time:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
