# %% [markdown]
# # The tape
#
# lnref computes gradients the way micrograd teaches it, with one difference that makes it a
# reference: every primitive's backward is written by hand, beside its forward, and nothing is
# hidden. While a `Tape` is active, each primitive call through which a gradient flows appends
# one *record* to it: the primitive, its arguments, its static parameters, the *residuals* its
# forward kept for the backward, and its output. The backward pass walks the records newest
# first, handing each output's gradient to the primitive's vector-Jacobian product (VJP).
#
# This tutorial builds a small computation, prints its tape, walks the backward pass record by
# record by hand, and checks the result against the tape's own backward and against finite
# differences. Then it looks at the tape of one Transformer layer.

# %%
import shutil

import numpy as np

import lnref
from lnref.autograd import Tape, Tensor, ops
from lnref.finite_diff import central_difference

# %% [markdown]
# ## A small computation
#
# One linear map, a ReLU, a LayerNorm, and the loss $L = \sum_{ij} y_{ij}\, c_{ij}$ for a fixed
# cotangent $c$ (the loss every gradient check of lnref uses). The leaves are Tensors that
# require a gradient; `c` is a plain array, a constant.

# %%
rng = np.random.default_rng(0)
x = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
w = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
b = Tensor(np.zeros(4), requires_grad=True)
gamma = Tensor(np.ones(4), requires_grad=True)
beta = Tensor(np.zeros(4), requires_grad=True)
c = rng.standard_normal((2, 4))

with Tape() as tape:
    h = ops.relu(ops.linear(x, w, b))
    y = ops.layer_norm(h, gamma, beta, eps=1e-5)
    loss = ops.sum(y * c)

names = {"x": x, "W": w, "b": b, "gamma": gamma, "beta": beta}
print(tape.format(names=names))

# %% [markdown]
# Read it row by row. `#1 relu` took the output of record `#0`; `y * c` became the record
# `mul`, whose second input is the plain array `c` (no label: it needs no gradient). Arrays are
# shown as dtype and shape, `f64[2,4]`. The last column is what each forward kept for its
# backward:
#
# - `linear` keeps its input rows and its weight: $dX = dY\,W^\top$ and $dW = X^\top dY$ need
#   both, $db$ needs neither.
# - `relu` keeps its output: the gradient passes where the output is positive.
# - `layer_norm` keeps its input rows, $\gamma$, and each row's mean and $1/\sigma$: two
#   numbers per row rather than the normalized array (the backward recomputes $\hat x$).
# - `sum` keeps only the input's shape: its VJP broadcasts the gradient back to it.
#
# `print(tape)` gives the same table with the leaves numbered (`leaf0`, `leaf1`, ...) instead
# of named.

# %% [markdown]
# ## The backward pass, record by record
#
# `tape.backward(loss)` runs `lnref.autograd.tape.backprop`: newest record first, it hands the
# gradient of the record's output to the primitive's VJP and *adds* the returned cotangents
# into the gradients of the arguments (added, never assigned: a tensor read twice, as a residual
# stream is, gets both contributions). Here is that loop written out, printing what flows.

# %%
gradient = {id(loss): np.ones(())}  # dL/dL = 1
for index in reversed(range(len(tape.records))):
    primitive, args, params, residuals, out = tape.records[index]
    dout = gradient.pop(id(out))
    cotangents = primitive.vjp(dout, residuals)
    sent = []
    for arg, darg in zip(args, cotangents):
        if isinstance(arg, Tensor) and arg.requires_grad and darg is not None:
            gradient[id(arg)] = gradient.get(id(arg), 0) + darg
            sent.append(f"d{np.shape(darg)}")
    print(f"#{index} {primitive.name:10s} gets d{np.shape(dout)}, sends {', '.join(sent)}")

by_hand = {name: gradient[id(leaf)] for name, leaf in names.items()}

# %% [markdown]
# Each record received a gradient of its output's shape and sent one per input that needs a
# gradient. After the walk, `gradient` holds $\partial L/\partial\theta$ for every leaf. The
# tape's own backward must give the same arrays, bit for bit: it is the same loop.

# %%
tape.backward(loss)
for name, leaf in names.items():
    assert np.array_equal(leaf.grad, by_hand[name]), name
    print(f"{name:6s} dL/d{name} of shape {leaf.grad.shape}: identical to the walk by hand")

# %% [markdown]
# ## Against finite differences
#
# A hand-written backward is only as good as its check. Move one weight along a direction $v$
# and compare $\langle \partial L/\partial W, v\rangle$ with the fourth-order central difference
# of $f(t) = L(W + t v)$, the difference every check of lnref takes (`lnref.finite_diff`, which
# also estimates its own rounding noise).


# %%
def loss_at(w_value):
    h = ops.relu(ops.linear(x.value, w_value, b.value))
    return float(ops.sum(ops.layer_norm(h, gamma.value, beta.value, eps=1e-5) * c).value)


v = rng.standard_normal(w.shape)
v /= np.linalg.norm(v)
numeric, noise = central_difference(lambda t: loss_at(w.value + t * v), h=1e-3)
analytic = float(np.sum(w.grad * v))
print(f"analytic {analytic:.12f}\nnumeric  {numeric:.12f}\ndifference {abs(analytic - numeric):.1e}")
assert abs(analytic - numeric) < 1e-8

# %% [markdown]
# ## The tape of a Transformer layer
#
# A model records the same way. Here is one Pre-LN layer, $x \leftarrow x + S(\operatorname{LN}(x))$
# for the attention and the FFN, then the final LN, with the fast paths off: every record is
# one primitive of the readable composition (`lnref/nn.py`).

# %%
model = lnref.build("pre", n_layers=1, d_model=8, n_heads=2, d_ff=16, seed=0)
x_in, dy, _ = model.sample_inputs(batch=1, seq=3)
leaves = {name: Tensor(value, requires_grad=True) for name, value in model.params.items()}
x_leaf = Tensor(x_in, requires_grad=True)

model.fast = False
with Tape() as layer_tape:
    model.forward(model.run(leaves), x_leaf)
print(layer_tape.format(names={**leaves, "x": x_leaf}))

# %% [markdown]
# The attention sublayer is five records (three projections, the attention core, the output
# projection), the FFN three (linear, ReLU, linear). With the fast paths on (the default), each
# sublayer is one fused record whose hand-written backward covers the whole sublayer; the tests
# hold the two to the same function and gradients (`tests/test_fast_paths.py`).

# %%
model.fast = True
with Tape() as fast_tape:
    model.forward(model.run(leaves), x_leaf)
print(fast_tape)

# %% [markdown]
# ## Drawing the tape
#
# `tape.to_dot()` writes the records as a Graphviz graph, and `tape.draw(path)` renders it
# where Graphviz's `dot` program is installed (`apt-get install graphviz`). Leaves are ellipses,
# records boxes; an edge is an input that needs a gradient.

# %%
if shutil.which("dot"):
    tape.draw("tape.svg", names=names)
    print("drawn to tape.svg")
else:
    print("Graphviz's dot is not installed here; the graph in its own language:\n")
    print(tape.to_dot(names=names))
