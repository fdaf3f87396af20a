"""Output change under a small seeded parameter update, and Liu's residual dependency beta.

Update model. Adam's first step moves every weight by about the same absolute amount,
whatever its initial scale; a seeded random update of that kind is

    delta W = eta * E_W,   E_W ~ N(0, 2/(d_in + d_out)) entrywise (Xavier's scale, never
                           DeepNorm's beta-scaled one), for every weight matrix,

biases, norm gains and scheme scalars untouched. The output change is measured to first
order by a fourth-order central difference in eta with the ReLU patterns frozen,

    Delta = ||dF/d eta||^2 / (batch * seq * d)     (the per-element variance of the change per eta^2)

which is Liu et al.'s Var[F(x, W*) - F(x, W)] / eta^2 at eta -> 0. Per-sublayer changes are
measured the same way with only that sublayer's weights moving.
"""

from __future__ import annotations

import numpy as np

from lnref.claims.trace import central_difference, record_frozen_point, trace

WEIGHTS = ("wq", "wk", "wv", "wo", "w1", "w2")


def update_direction(model, seed, names=None):
    """name -> E_W for every weight matrix (or the listed names), seeded."""
    rng = np.random.default_rng([seed, 2024])
    direction = {}
    for name, value in model.params.items():
        if name.rsplit(".", 1)[-1] not in WEIGHTS:
            continue
        d_in, d_out = value.shape
        e = rng.standard_normal(value.shape) * np.sqrt(2.0 / (d_in + d_out))
        if names is None or name in names:
            direction[name] = e
    return direction


def output_tangent(model, x, direction, memory=None, step=1e-3):
    """dF/d eta at eta = 0 for params + eta * direction, by a fourth-order central difference
    on the smooth piece of the network (ReLU patterns frozen)."""
    frozen = record_frozen_point(model, x, memory)

    def output(t):
        params = dict(model.params)
        for name, e in direction.items():
            params[name] = model.params[name] + t * e
        y, _ = model.forward(model.run(params, memory, freeze=frozen.hold()), x)
        return y.value

    return central_difference(output, step)


def output_change(model, x, direction, memory=None):
    """Delta: the per-element mean square of dF/d eta (see the module docstring)."""
    tangent = output_tangent(model, x, direction, memory)
    return float(np.mean(tangent**2))


def linearity_gap(model, x, direction, eta, memory=None):
    """How far a finite update of size eta is from first order: | ||F(eta) - F(0)|| / (eta ||dF/d eta||) - 1 |."""
    params = dict(model.params)
    for name, e in direction.items():
        params[name] = model.params[name] + eta * e
    y1, _ = model.forward(model.run(params=params, memory=memory), x)
    y0, _ = model.forward(model.run(memory=memory), x)
    tangent = output_tangent(model, x, direction, memory)
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


def branch_tangents(model, x, direction, memory=None, step=1e-3):
    """For every branch call i: t_i = d branch_i(x_in; theta + eta E)/d eta at its own fixed
    input x_in (fourth-order central difference of the branch alone, ReLU patterns frozen),
    with the traced forward it was taken on."""
    frozen = record_frozen_point(model, x, memory)
    traced = trace(model, x, memory=memory, frozen=frozen)

    def runs(t):
        params = dict(model.params)
        for name, e in direction.items():
            params[name] = model.params[name] + t * e
        return model.run(params, memory, freeze=frozen.hold())

    shifted = {}
    tangents = []
    for event in traced.select("branch"):

        def branch_at(t, event=event):
            if t not in shifted:
                shifted[t] = runs(t)
            function = dict(model.layer_view(shifted[t], event.layer).branches)[event.name]
            return function(event.input.value).value

        tangents.append(central_difference(branch_at, step))
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
