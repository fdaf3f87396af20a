"""Hyper-connections (Zhu et al. 2025, "Hyper-Connections", ICLR, Sec. 2), static and dynamic,
on Pre-LN sublayers.

The stream is widened into n copies H = (h_1, ..., h_n), all the input at first. Each sublayer
S (the k-th of the stack, counting attention and FFN sublayers alike, 0-based) reads a weighted
sum of the copies and writes its output into each, while the copies are mixed:

    h_in = sum_i A_m[i] h_i                              (width connection)
    h_j <- sum_i A_r[i, j] h_i + B[j] S(LN_S(h_in))      (depth connection), for each j
    y    = LN_final(sum_i h_i)

Static: A_m (n,), A_r (n, n), B (n,) learned, initialized to A_m = e_{k mod n}, A_r = I, B = 1:
every copy then follows Pre-LN's stream, and y is Pre-LN's output after the final norm (n times
the stream, which a norm divides out up to its eps: LN(n x, eps) = LN(x, eps / n^2)). Dynamic
(``dynamic=true``): per token, from the copies normalized, H_bar = N_hc(H) (``ln_{S}_hc``),

    A_m(H) = s_a tanh(H_bar W_m) + A_m,  A_r(H) = s_a tanh(H_bar W_r) + A_r,
    B(H)   = s_b tanh(H_bar W_b)^T + B,  W_m (d, 1), W_r (d, n), W_b (d, 1) zero and s_a = s_b
    = 0.01 at init (the static connections alone, as above).

In code, the n depth connections of a sublayer are one step (``ops.mix_streams``, the matrix
form H <- A_r^T H + B^T S of the paper's HC matrix), and so is each dynamic connection s
tanh(H_bar W) + A (``ops.scaled_tanh``); between a layer's two sublayers the copies stay one
array (n, batch, seq, d), and the layer hands them on one by one.

Parameters: ``hc_{S}.{am,ar,b}``, and ``hc_{S}.{wm,wr,wb,s_alpha,s_beta}`` when dynamic. No
official code is public. The equations follow the paper (arXiv 2409.19606, Sec. 2.1-2.3: the
matrix HC = [[0, B], [A_m, A_r]], its dynamic form and the Pre-Norm-equivalent init of Eq. 14)
as lnref's notes record them, checked there against lucidrains/hyper-connections @4775103 (not
the authors'); the stored copy of the paper shows its opening only, and third-party summaries
of it agree. The paper's runs take n = 4 (its x4 models), lnref's default.
"""

import numpy as np

from lnref.autograd import ops
from lnref.schemes import Option

SUMMARY = "n copies h_i; h_in = sum A_m[i] h_i; h_j <- sum A_r[i,j] h_i + B[j] S(LN(h_in)); y = LN(sum h_i)"
PAPER = "Zhu et al. 2025, Hyper-Connections, ICLR, Sec. 2"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)
OPTIONS = {
    "n": Option(4, None, "the number of copies of the stream (the expansion rate), >= 1"),
    "dynamic": Option(False, (False, True), "connections that also depend on each token's copies"),
}
DYNAMIC_SCALE_INIT = 0.01


def copies(config):
    n = OPTIONS["n"].default if config is None else config.option("n")
    if n < 1:
        raise ValueError(f"option n of {config.scheme} must be an integer >= 1, got {n}")
    return n


def streams(index, config):
    return tuple(f"h_{i}" for i in range(copies(config)))


def layer_norms(index, branches, config):
    return tuple(f"ln_{name}_hc" for name in branches) if config.option("dynamic") else ()


def layer_params(index, branches, config):
    n, d, params = copies(config), config.d_model, {}
    for position, name in enumerate(branches):
        k = index * len(branches) + position
        params.update({f"hc_{name}.am": np.eye(n)[k % n], f"hc_{name}.ar": np.eye(n), f"hc_{name}.b": np.ones(n)})
        if config.option("dynamic"):
            params.update({f"hc_{name}.{w}": np.zeros((d, cols)) for w, cols in (("wm", 1), ("wr", n), ("wb", 1))})
            params.update({f"hc_{name}.{s}": np.full((), DYNAMIC_SCALE_INIT) for s in ("s_alpha", "s_beta")})
    return params


def connections(layer, name, h):
    """(A_m, A_r, B): the weights of the width connection h_in = sum_i A_m[i] h_i, (n,), and
    of the depth connections h_j <- sum_i A_r[i, j] h_i + B[j] S(...), (n, n) and (n,); per
    token, (batch, seq, n), (batch, seq, n, n) and (batch, seq, n), when dynamic."""
    p = lambda short: layer.param(f"hc_{name}.{short}")  # noqa: E731
    if not layer.option("dynamic"):
        return p("am"), p("ar"), p("b")
    n = len(h)
    rows = (*h[0].shape[:-1], n, h[0].shape[-1])  # H per token: the paper's n x d matrix
    h_bar = layer.norm(f"ln_{name}_hc", ops.reshape(ops.concatenate(*h, axis=-1), shape=rows))
    s_a, s_b = p("s_alpha"), p("s_beta")
    a_m = ops.scaled_tanh(ops.reshape(ops.matmul(h_bar, p("wm")), shape=rows[:-1]), s_a, p("am"))  # s_a tanh(.) + A_m
    a_r = ops.scaled_tanh(ops.matmul(h_bar, p("wr")), s_a, p("ar"))
    b = ops.scaled_tanh(ops.reshape(ops.matmul(h_bar, p("wb")), shape=rows[:-1]), s_b, p("b"))
    return a_m, a_r, b


def width(a_m, h):
    """h_in = sum_i A_m[i] h_i, of the copies h, a tuple or stacked as one array (n, ..., d)."""
    if isinstance(h, tuple):
        return ops.weighted_sum(a_m, *h)
    return ops.weighted_sum(a_m, h, stacked=True)


def depth(a_r, b, h, output):
    """h_j <- sum_i A_r[i, j] h_i + B[j] output for every j: the n new copies stacked as one
    array (n, ..., d), from the copies h, a tuple or stacked."""
    if isinstance(h, tuple):
        return ops.mix_streams(a_r, b, output, *h)
    return ops.mix_streams(a_r, b, output, h, stacked=True)


def embed(x, stack):
    return (x,) * copies(stack.config)


def layer(h, layer):
    h = h if isinstance(h, tuple) else (h,)  # one copy: the model passes a lone stream as it is
    n = len(h)
    for name, branch in layer.branches:
        a_m, a_r, b = connections(layer, name, h)
        output = branch(layer.norm(f"ln_{name}", width(a_m, h)))
        h = depth(a_r, b, h, output)
        if layer.option("dynamic"):
            h = tuple(h[j] for j in range(n))  # the dynamic connections read the copies one by one
    return h if isinstance(h, tuple) else tuple(h[j] for j in range(n))


def sum_of(terms):
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def readout(h, stack):
    return stack.norm("final_ln", sum_of(list(h)) if isinstance(h, tuple) else h)
