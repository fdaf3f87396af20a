"""Output change under a small parameter update, and Liu's residual dependency beta.

Update models (lnref/claims/updates.py makes them): a direction E in parameter space, one array
per moved parameter. The output change is measured to first order by a fourth-order central
difference in eta of F(params + eta E), with the ReLU patterns frozen at the point,

    Delta = ||dF/d eta||^2 / (batch * seq * d)     (the per-element variance of the change per eta^2)

which is Liu et al.'s Var[F(x, W*) - F(x, W)] / eta^2 at eta -> 0. The step of the difference is
taken along the unit direction (``lnref.finite_diff``'s convention), so directions of any size
(a Xavier-scale draw, Adam's sign step of one per entry) are differenced alike.

The machinery reads a model through a :class:`Network`: its parameters, its output at other
parameter values (the nonlinearities' patterns held at the point), and the gradient of
<output, dy>. :func:`network` makes one of lnref's staged model, encoder or decoder stack; a model
with another stack (an encoder-decoder pair) supplies the same three things.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from lnref.claims.trace import central_difference, record_frozen_point, trace

WEIGHTS = ("wq", "wk", "wv", "wo", "w1", "w2")
STEP = 1e-4  # the finite-difference step along the unit direction


@dataclass(frozen=True)
class Network:
    """What the update machinery needs of a model, whatever its stack.

    ``params``: name -> array at the point. ``output(params)``: the model's output array on the
    fixed batch at other parameter values, nonlinearities held at the point (so that finite
    differences stay on one smooth piece). ``gradient(dy)``: name -> d<output, dy>/d param at
    the point."""

    params: Mapping[str, np.ndarray]
    output: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    gradient: Callable[[np.ndarray], dict[str, np.ndarray]]


def network(model, x, memory=None):
    """The :class:`Network` of lnref's staged model on the batch ``x`` (and ``memory``); ``x`` is
    the (source, target) pair of an encoder-decoder model."""
    frozen = record_frozen_point(model, x, memory)

    def output(params):
        y, _ = model.forward(model.run(dict(params), memory, freeze=frozen.hold()), x)
        return y.value

    def gradient(dy):
        if isinstance(x, tuple):
            return model.value_and_grad(*x, dy)[1]
        return model.value_and_grad(x, dy, memory)[1]

    return Network(model.params, output, gradient)


def weight_names(params):
    """The names of the weight matrices (every W_q, W_k, W_v, W_o, W_1, W_2) among ``params``."""
    return [name for name in params if name.rsplit(".", 1)[-1] in WEIGHTS]


def update_direction(model, seed, names=None):
    """name -> E_W for every weight matrix (or the listed names), seeded: the random update."""
    rng = np.random.default_rng([seed, 2024])
    direction = {}
    for name in weight_names(model.params):
        d_in, d_out = model.params[name].shape
        e = rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / (d_in + d_out))
        if names is None or name in names:
            direction[name] = e
    return direction


def direction_norm(direction):
    return float(np.sqrt(sum(float(np.sum(e * e)) for e in direction.values())))


def moved(params, direction, t):
    """params + t * direction (the parameters the direction does not name unchanged)."""
    out = dict(params)
    for name, e in direction.items():
        out[name] = params[name] + t * e
    return out


def output_tangent(net, direction, step=STEP):
    """dF/d eta at eta = 0 for params + eta * direction (``net`` a :class:`Network`), by a
    fourth-order central difference with a step ``step`` along the unit direction."""
    h = step / direction_norm(direction)
    return central_difference(lambda t: net.output(moved(net.params, direction, t)), h)


def output_change(net, direction):
    """Delta: the per-element mean square of dF/d eta (see the module docstring)."""
    return float(np.mean(output_tangent(net, direction) ** 2))


def linearity_gap(model, x, direction, eta, memory=None):
    """How far a finite update of size eta is from first order: | ||F(eta) - F(0)|| / (eta ||dF/d eta||) - 1 |."""
    y1, _ = model.forward(model.run(params=moved(model.params, direction, eta), memory=memory), x)
    y0, _ = model.forward(model.run(memory=memory), x)
    tangent = output_tangent(network(model, x, memory), direction)
    return abs(np.linalg.norm(y1.value - y0.value) / (eta * np.linalg.norm(tangent)) - 1.0)


# ----- residual dependency (Liu et al. 2020, Sec. 4.1) ---------------------------------------


def residual_dependency(model, traced):
    """beta_{i,i}^2 for every sublayer i: the share of the stream's variance that comes from
    the newest branch output, by carrying every branch output as its own component through the
    network with the same linear maps the stream sees (skip scale omega or alpha, the LN's
    centring and division by the LN input's per-token scale, the gain gamma):

        beta_{i,j} = std(c_j) / sqrt(sum_k std(c_k)^2),    sum_j beta_{i,j}^2 = 1.

    Schemes: post, admin, deepnorm (a norm after every branch) and pre (no norm on the
    stream). Returns (beta_ii^2 per sublayer, branch variance per sublayer, max relative error
    of the components' sum against the real stream)."""
    scheme = model.config.scheme
    if scheme not in ("post", "admin", "deepnorm", "pre"):
        raise ValueError(f"residual dependency is implemented for post, admin, deepnorm and pre, not {scheme}")
    eps = model.config.eps
    components = [np.asarray(traced.states[0][0].value, dtype=np.float64)]
    beta_sq, variances, errors = [], [], []
    alpha = None
    if scheme == "deepnorm":
        from lnref.schemes.deepnorm import constants

        alpha = constants(model.config)[0]
    events = traced.events
    for index, event in enumerate(events):
        if event.kind != "branch":
            continue
        a = np.asarray(event.output.value, dtype=np.float64)
        if scheme == "pre":
            components.append(a)
            stream = events[index + 1].input.value if index + 1 < len(events) else traced.states[-1][0].value
        else:
            norm = events[index + 1]
            if scheme == "admin":
                omega = model.params[f"layers.{event.layer}.omega_{event.name}"]
                components = [c * omega for c in components]
            elif scheme == "deepnorm":
                components = [c * alpha for c in components]
            components.append(a)
            z = np.asarray(norm.input.value, dtype=np.float64)
            centred = z - z.mean(axis=-1, keepdims=True)
            scale = np.sqrt(np.mean(centred**2, axis=-1, keepdims=True) + eps)
            gamma = model.params[f"layers.{event.layer}.{norm.name}.gamma"]
            components = [(c - c.mean(axis=-1, keepdims=True)) / scale * gamma for c in components]
            stream = norm.output.value
        total = sum(components)
        errors.append(np.linalg.norm(total - stream) / np.linalg.norm(stream))
        stds = np.array([np.std(c) for c in components])
        beta_sq.append(stds[-1] ** 2 / np.sum(stds**2))
        variances.append(float(np.var(a)))
    return np.array(beta_sq), np.array(variances), max(errors)


# ----- the first-order formula: each branch's own change, scaled to the output ------------------


def branch_tangents(model, x, direction, memory=None, step=STEP):
    """For every branch call i: t_i = d branch_i(x_in; theta + eta E)/d eta at its own fixed
    input x_in (fourth-order central difference of the branch alone, ReLU patterns frozen, the
    step along the unit direction), with the traced forward it was taken on."""
    frozen = record_frozen_point(model, x, memory)
    traced = trace(model, x, memory=memory, frozen=frozen)
    h = step / direction_norm(direction)

    def runs(t):
        return model.run(moved(model.params, direction, t), memory, freeze=frozen.hold())

    shifted = {}
    tangents = []
    for event in traced.select("branch"):

        def branch_at(t, event=event):
            if t not in shifted:
                shifted[t] = runs(t)
            function = dict(model.layer_view(shifted[t], event.layer).branches)[event.name]
            return function(event.input.value).value

        tangents.append(central_difference(branch_at, h))
    return tangents, traced


def predicted_output_change(model, x, direction, memory=None):
    """Delta predicted by the derivation (proofs/liu-output-change.md, proofs/deepnet.md):
    branch i's own change t_i reaches the output scaled by 1/sigma_i and otherwise unchanged,
    and the branches' contributions add in quadrature,

        norm after the branch (post, admin, deepnorm):  Delta = sum_i ||J_LN(z_i) t_i||^2 / (n d)
        no norm on the stream (pre):                    Delta = sum_i ||t_i||^2 / sigma_i^2 / (n d)

    with z_i the input of the LN that follows branch i (J_LN by Lemma 3) and sigma_i^2 the
    per-token variance of the Pre-LN stream once branch i is added."""
    from lnref.claims.trace import layer_norm_vjp

    tangents, traced = branch_tangents(model, x, direction, memory)
    scheme = model.config.scheme
    events = traced.events
    branch_indices = [k for k, e in enumerate(events) if e.kind == "branch"]
    total = 0.0
    for t, k in zip(tangents, branch_indices):
        if scheme == "pre":
            after = events[k + 1].input.value if k + 1 < len(events) else traced.states[-1][0].value
            sigma_sq = np.var(after, axis=-1, keepdims=True)
            total += float(np.sum(t * t / sigma_sq))
        elif scheme in ("post", "admin", "deepnorm"):
            total += float(np.sum(layer_norm_vjp(events[k + 1].input.value, t, model.config.eps) ** 2))
        else:
            raise ValueError(f"the output-change formula is derived for post, admin, deepnorm and pre, not {scheme}")
    return total / traced.y.value.size
