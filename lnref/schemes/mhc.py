"""mHC, manifold-constrained hyper-connections (Xie et al. 2026, "mHC: Manifold-Constrained
Hyper-Connections", Sec. 4), on Pre-LN sublayers.

Hyper-connections (``hyper``) whose residual mixing is kept doubly stochastic, so that products
of it over depth stay bounded. Per token, with the n copies x_1..x_n flattened to one vector of
n d features and normalized, u = N_mix(vec(x)) (``ln_{S}_mix``, the paper's RMSNorm: the --norm
kind here):

    H_pre  = sigmoid(a_pre (u phi_pre) + b_pre)                  (n,)
    H_post = 2 sigmoid(a_post (u phi_post) + b_post)             (n,)
    H_res  = SinkhornKnopp(a_res mat(u phi_res) + b_res)         (n, n), rows and columns sum to 1
    x_i   <- sum_j H_res[i, j] x_j + H_post[i] S(LN_S(sum_j H_pre[j] x_j))   for each sublayer S
    y      = LN_final(sum_i x_i)

SinkhornKnopp(M~): M = exp(M~), then ``sinkhorn_iterations`` (20, the paper's t_max) rounds of
dividing each row by its sum and then each column by its sum, all in one primitive
(``ops.sinkhorn``) whose VJP is the derivative of those unrolled rounds (not of the exact
projection). After the last round the columns sum to 1 to rounding and the rows to within the
iteration's convergence.
In code, each map a (u phi) + b is one step with its sigmoid (``ops.scaled_linear``),
sum_j H_pre[j] x_j a weighted sum with per-token weights, and the mixing H_res x + H_post S one
step for all n new copies (``ops.mix_streams`` with H_res's rows as the weights), stacked as one
array (n, batch, seq, d) and handed on one by one.
The first sublayer sees n equal copies, which any mixing with unit row sums leaves as they are:
its H_res parameters have no gradient (the gradient checker reports them unresolved).

Parameters: ``mhc_{S}.{phi_pre, phi_post}`` (n d, n), ``mhc_{S}.phi_res`` (n d, n^2),
``mhc_{S}.{alpha_pre, alpha_post, alpha_res}`` (), ``mhc_{S}.{b_pre, b_post}`` (n,),
``mhc_{S}.b_res`` (n, n). Init: the gating factors a = 0.01 (HC's s, and the value reviews
of the paper give), phi = 0 (as HC's dynamic weights), b_pre = -log(n - 1) (H_pre = 1/n),
b_post = 0 (H_post = 1), b_res = 0 (H_res = J/n): every copy starts as Pre-LN's stream, as with
``hyper``. The biases' init is lnref's choice: the text read gives none. No official code is
public: the equations (Eq. 6-8 of arXiv 2512.24880, Sec. 4.1-4.2; t_max = 20) are read from
stored reviews and reimplementations that quote them, as lnref's notes summarize the paper; the
stored copy of the paper itself was not found. n >= 2. DeepSeek-V4's implementation differs
(Sinkhorn from a softmax plus an epsilon, an epsilon on H_pre); lnref follows the paper.
"""

import math

import numpy as np

from lnref import nn
from lnref.autograd import ops
from lnref.schemes import Option
from lnref.schemes.hyper import sum_of

SUMMARY = "x_i <- sum_j H_res[i,j] x_j + H_post[i] S(LN(sum_j H_pre[j] x_j)), H_res doubly stochastic (Sinkhorn)"
PAPER = "Xie et al. 2026, mHC: Manifold-Constrained Hyper-Connections, Sec. 4"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)
OPTIONS = {
    "n": Option(4, None, "the number of copies of the stream (the expansion rate), >= 2"),
    "sinkhorn_iterations": Option(20, None, "rounds of row and column normalization, >= 1"),
}
GATE_INIT = 0.01


def copies(config):
    n = OPTIONS["n"].default if config is None else config.option("n")
    if n < 2:
        raise ValueError(f"option n of mhc must be an integer >= 2, got {n}")
    return n


def streams(index, config):
    return tuple(f"x_{i}" for i in range(copies(config)))


def layer_params(index, branches, config):
    if config.option("sinkhorn_iterations") < 1:
        raise ValueError(f"option sinkhorn_iterations of mhc must be >= 1, got {config.option('sinkhorn_iterations')}")
    n, nd, params = copies(config), copies(config) * config.d_model, {}
    for name in branches:
        params.update(
            {f"ln_{name}_mix.{k}": v for k, v in nn.init_norm(config.norm, nd, np.dtype(config.dtype)).items()}
        )
        params.update(
            {f"mhc_{name}.phi_{m}": np.zeros((nd, cols)) for m, cols in (("pre", n), ("post", n), ("res", n * n))}
        )
        params.update({f"mhc_{name}.alpha_{m}": np.full((), GATE_INIT) for m in ("pre", "post", "res")})
        params.update({f"mhc_{name}.b_pre": np.full(n, -math.log(n - 1)), f"mhc_{name}.b_post": np.zeros(n)})
        params[f"mhc_{name}.b_res"] = np.zeros((n, n))
    return params


def mappings(layer, name, flat, n):
    """(H_pre, H_post, H_res) per token, (batch, seq, n), (batch, seq, n), (batch, seq, n, n),
    from vec(x) (batch, seq, n d)."""
    p = lambda short: layer.param(f"mhc_{name}.{short}")  # noqa: E731
    u = layer.norm(f"ln_{name}_mix", flat)
    h_pre = ops.scaled_linear(u, p("phi_pre"), p("alpha_pre"), p("b_pre"), activation="sigmoid")
    h_post = ops.scaled_linear(u, p("phi_post"), p("alpha_post"), p("b_post"), activation="sigmoid", gain=2.0)
    res = ops.scaled_linear(u, p("phi_res"), p("alpha_res"), p("b_res"))  # a_res (u phi_res) + vec(b_res)
    h_res = ops.sinkhorn(
        ops.reshape(res, shape=(*res.shape[:-1], n, n)), iterations=layer.option("sinkhorn_iterations")
    )
    return h_pre, h_post, h_res


def embed(x, stack):
    return (x,) * copies(stack.config)


def layer(x, layer):
    n = len(x)
    for name, branch in layer.branches:
        x = x if isinstance(x, tuple) else tuple(x[i] for i in range(n))  # the copies one by one
        h_pre, h_post, h_res = mappings(layer, name, ops.concatenate(*x, axis=-1), n)  # from vec(x)
        output = branch(layer.norm(f"ln_{name}", ops.weighted_sum(h_pre, *x)))  # S(LN(sum_j H_pre[j] x_j))
        x = ops.mix_streams(h_res, h_post, output, *x, transpose=True)  # H_res x + H_post S, (n, ..., d)
    return tuple(x[i] for i in range(n))


def readout(x, stack):
    return stack.norm("final_ln", sum_of(list(x)))
