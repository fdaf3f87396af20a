"""The model's matrix products alone, as each side's BLAS runs them: the floor under a pass.

Used by ``bench_model.py``. A Pre-LN layer has six linear maps (q, k, v, o; W1, W2), and a
forward+backward runs three products for each: the forward's, dx's and dW's. Here they run
with nothing around them (no bias adds, row sums, attention or norms), in the layouts each
side uses in its pass:

    lnref  (W stored (d_in, d_out))   x @ W,        dy @ W^T,   kernels.linear.weight_gradient(x, dy)
    torch  (W stored (d_out, d_in))   x @ W^T,      dy @ W,     dy^T @ x

Each layer has weights of its own, as in the model, so that a layer's products find its
weights where the pass would (in the outer caches once the model is bigger than the inner
ones); the activations are shared by the layers. NumPy's product runs on NumPy's BLAS
(OpenBLAS in the wheels), torch's on PyTorch's (MKL in the x86 CPU wheels): the ratio of the
two is how far apart the libraries alone put the sides, whatever either does around them.
"""

from __future__ import annotations


def linear_shapes(config):
    """(d_in, d_out) of each linear map of one Pre-LN layer."""
    d, d_ff = config["d_model"], config["d_ff"]
    return [(d, d)] * 4 + [(d, d_ff), (d_ff, d)]


def products_callables(config, torch):
    """{"numpy products": fn, "torch products": fn}: one pass's linear products on each side."""
    import numpy as np

    from lnref.autograd.kernels.linear import weight_gradient

    rng = np.random.default_rng(0)
    rows = config["batch"] * config["seq"]
    maps = linear_shapes(config)
    inputs = {d_in: rng.standard_normal((rows, d_in)) for d_in, _ in maps}
    cotangents = {d_out: rng.standard_normal((rows, d_out)) for _, d_out in maps}
    weights = [[rng.standard_normal((d_in, d_out)) for d_in, d_out in maps] for _ in range(config["n_layers"])]

    def numpy_products():
        for layer in weights:
            for w in layer:
                x, dy = inputs[w.shape[0]], cotangents[w.shape[1]]
                x @ w
                dy @ w.T
                weight_gradient(x, dy)

    fns = {"numpy products": numpy_products}
    if torch is not None:
        t_inputs = {key: torch.tensor(value) for key, value in inputs.items()}
        t_cotangents = {key: torch.tensor(value) for key, value in cotangents.items()}
        t_weights = [[torch.tensor(w.T.copy()) for w in layer] for layer in weights]  # (d_out, d_in)

        def torch_products():
            with torch.no_grad():
                for layer in t_weights:
                    for w in layer:
                        x, dy = t_inputs[w.shape[1]], t_cotangents[w.shape[0]]
                        x @ w.T
                        dy @ w
                        dy.T @ x

        fns["torch products"] = torch_products
    return fns
