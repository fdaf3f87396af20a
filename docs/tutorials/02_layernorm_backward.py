# %% [markdown]
# # LayerNorm's backward, derived and checked
#
# LayerNorm is the one operation every scheme of lnref shares, and its backward pass is where a
# hand-written autodiff most easily goes wrong: three terms, two of them small. This tutorial
# derives the backward, writes it in NumPy, runs lnref's compiled kernel against it, and then
# shows the gradient check catching the backward with one term dropped.
#
# ## The forward
#
# Over the $d$ features of one token (one row) $x \in \mathbb{R}^d$:
#
# $$
# \mu = \frac1d \sum_j x_j, \qquad
# \sigma^2 = \frac1d \sum_j (x_j - \mu)^2, \qquad
# r = \frac{1}{\sqrt{\sigma^2 + \varepsilon}}, \qquad
# \hat x = (x - \mu)\, r, \qquad
# y = \gamma \odot \hat x + \beta .
# $$
#
# ## The backward
#
# Given $dy = \partial L/\partial y$ for every row, $\beta$ and $\gamma$ are easy:
# $d\beta = \sum_{\text{rows}} dy$ and $d\gamma = \sum_{\text{rows}} dy \odot \hat x$. The
# gradient that reaches $\hat x$ is $g = dy \odot \gamma$. What remains is the Jacobian of
# $\hat x$ in $x$. Since $\partial \mu/\partial x_i = 1/d$ and, because $\sum_k (x_k - \mu) = 0$,
#
# $$ \frac{\partial r}{\partial x_i} = -r^3\, \frac{x_i - \mu}{d}, $$
#
# we get
#
# $$
# \frac{\partial \hat x_j}{\partial x_i}
# = r\Big(\delta_{ij} - \frac1d\Big) + (x_j - \mu)\frac{\partial r}{\partial x_i}
# = r\Big(\delta_{ij} - \frac1d - \frac{\hat x_i\, \hat x_j}{d}\Big),
# $$
#
# and, contracting with $g$,
#
# $$
# dx = r\,\Big(g \;-\; \operatorname{mean}(g) \;-\; \hat x \,\operatorname{mean}(g \odot \hat x)\Big).
# $$
#
# Three terms: $g$ itself, the projection out of the constant direction (LayerNorm removed the
# mean), and the projection out of $\hat x$ (it removed the scale). The third term is the one
# a derivation by hand forgets; it is small when $g$ is nearly orthogonal to $\hat x$.

# %%
import inspect

import numpy as np

import lnref
from lnref.autograd import kernels, ops
from lnref.autograd.kernels import seam
from lnref.autograd.kernels.norms import layer_norm_backward_reference, layer_norm_forward_reference
from lnref.gradcheck import check_vjp, gradcheck

# %% [markdown]
# ## The NumPy twin
#
# The derivation, line by line, for rows `x` of shape `(n, d)`:


# %%
def layer_norm_backward(dy, x, gamma, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    r = 1.0 / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
    x_hat = (x - mu) * r
    g = dy * gamma
    dx = r * (g - g.mean(axis=-1, keepdims=True) - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))
    return dx, (dy * x_hat).sum(axis=0), dy.sum(axis=0)


# %% [markdown]
# lnref's own NumPy twin (`lnref/autograd/kernels/norms.py`) is the same formula; its forward
# hands the backward each row's mean and $r$ rather than recomputing them:

# %%
print(inspect.getsource(layer_norm_backward_reference))

# %%
rng = np.random.default_rng(0)
n, d = 6, 16
x = rng.standard_normal((n, d)) * 3 + 1
gamma = rng.standard_normal(d)
beta = rng.standard_normal(d)
dy = rng.standard_normal((n, d))

_, mean, rstd = layer_norm_forward_reference(x, gamma, beta, 1e-5)
ours = layer_norm_backward(dy, x, gamma)
twin = layer_norm_backward_reference(dy, x, gamma, mean, rstd)
for name, a, b in zip(("dx", "dgamma", "dbeta"), ours, twin):
    print(f"{name:7s} largest difference from lnref's twin: {np.max(np.abs(a - b)):.1e}")
    assert np.allclose(a, b, rtol=1e-12, atol=1e-12)

# %% [markdown]
# ## The compiled kernel
#
# The model runs a Numba loop, declared once beside the twin as a `Twin` (`kernels/seam.py`):
# one pass over each row for the two means, one for the element-wise terms. The seam chooses it;
# `seam.forced` runs either path on purpose, which is how the tests hold them together.

# %%
with seam.forced("reference", "layer_norm_backward"):
    reference = kernels.layer_norm_backward(dy, x, gamma, mean, rstd)
with seam.forced("loop", "layer_norm_backward"):
    loop = kernels.layer_norm_backward(dy, x, gamma, mean, rstd)
for name, a, b in zip(("dx", "dgamma", "dbeta"), reference, loop):
    print(f"{name:7s} loop against twin: {np.max(np.abs(a - b)):.1e}")
    assert np.allclose(a, b, rtol=1e-12, atol=1e-13)
print(f"(Numba compiles the loops here: {seam.USE_NUMBA})")

# %% [markdown]
# ## The gradient check
#
# `check_vjp` compares the primitive's VJP, for each argument along a seeded direction, with a
# fourth-order central difference (`lnref.finite_diff`); `gradcheck` does the same for every
# tensor of a model. The primitive first, then a 4-layer Post-LN Transformer, whose every
# sublayer ends in a LayerNorm.

# %%
for check, name in zip(check_vjp(lambda *t: ops.layer_norm(*t, eps=1e-5), x, gamma, beta), ("x", "gamma", "beta")):
    print(f"d/d{name:6s} analytic {check.analytic:+.10f}  numeric {check.numeric:+.10f}  {check.status}")
    assert check.status == "passed"

model = lnref.build("post", n_layers=4, d_model=16, n_heads=2, d_ff=32, seed=0)
report = gradcheck(model, workers=1)
print(report.summary())
assert report.ok

# %% [markdown]
# ## A dropped term, caught
#
# Now the backward a hurried derivation gives, without the projection out of $\hat x$. It is put
# in the kernel's place through the seam, so the primitive, the fused paths and every model use
# it, exactly as a bug in the kernel would be used.


# %%
def dropped_term(dy, x, gamma, mean, rstd):
    x_hat = (x - mean[:, None]) * rstd[:, None]
    g = dy * gamma
    dx = rstd[:, None] * (g - g.mean(axis=-1, keepdims=True))  # the x_hat term is missing
    return dx, (dy * x_hat).sum(axis=0), dy.sum(axis=0)


with seam.replaced("layer_norm_backward", dropped_term):
    broken = gradcheck(model, workers=1)
    broken_primitive = check_vjp(lambda *t: ops.layer_norm(*t, eps=1e-5), x, gamma, beta)
print(broken.summary())
print("primitive:", ", ".join(f"d/d{name} {c.status}" for c, name in zip(broken_primitive, ("x", "gamma", "beta"))))
assert not broken.ok and broken_primitive[0].status == "failed"

# %% [markdown]
# The primitive's $dx$ fails while its $d\gamma$ and $d\beta$, which do not use the dropped
# term, pass. In the model every gradient that flows back through a LayerNorm's $dx$ fails: all of
# them but the last LayerNorm's own $\gamma$ and $\beta$. The report, as `lnref gradcheck`
# prints it:

# %%
print(broken.to_text(worst=3))
passed = [result.tensor for result in broken.results if result.status == "passed"]
print("passed:", ", ".join(passed))
assert passed == ["layers.3.ln_ffn.gamma", "layers.3.ln_ffn.beta"]

# %% [markdown]
# Two details of the checker matter here. It checks at a *generic* point: each tensor is jittered
# first, since at the initialization ($\gamma = 1$, $\beta = 0$) a backward that forgot
# $\gamma$ would look right. And a comparison whose values both lie under the estimated rounding
# noise is reported *unresolved*, never passed: a vanishing gradient cannot be told from a wrong
# one there. The test suite breaks this very tutorial the same way and expects it to fail
# (`tests/test_tutorials.py`).
