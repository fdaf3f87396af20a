"""The two update models of the output-change claims, and the sweep of the change over depth.

    random  delta W = eta E_W, E_W ~ N(0, 2/(d_in + d_out)) entrywise: Xavier's scale whatever
            the scheme's own init, every weight matrix, seeded apart from the model.
    adam    delta W = the first step of ``lnref.optim.Adam`` at learning rate eta on the loss of
            the batch, every weight matrix: after one step m^ = g and v^ = g^2, so the step is
            -eta g / (|g| + eps), which is -eta sign(g) wherever |g| >> eps.

The loss of the Adam step is lnref's sum(y * dy), dy the seeded cotangent of
``model.sample_inputs`` (the same dy at every depth for a seed, so depths are compared on one
loss). Adam's first step sees the loss only through the signs of its gradient: the loss's scale
never matters, only the direction dy gives each token's output. At init a softmax head's
cross-entropy gives token t the direction W_head (p_t - e_target(t)): a direction of its own per
token, of a size that does not depend on the depth, which a seeded Gaussian dy is; the head
would add weights, and an init of its own, that none of the papers' statements is about.

Biases, norm gains and scheme scalars stay put under both models: the theorems and bounds are
about the sublayers' weight matrices (an Adam step moves a bias by eta per entry, which changes
the output by O(eta); a weight moves it by O(eta d)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lnref.claims import common
from lnref.claims.perturb import network, output_tangent, predicted_output_change, update_direction, weight_names
from lnref.optim import Adam

UPDATES = ("random", "adam")


def adam_direction(net, dy, names=None):
    """name -> the first step of ``lnref.optim.Adam`` (learning rate 1, its default betas and eps)
    on the loss <F, dy>, for every weight matrix of ``net`` (or the listed names); also returns
    the gradient it was taken from."""
    grads = net.gradient(dy)
    names = weight_names(net.params) if names is None else list(names)
    weights = {name: np.array(net.params[name], dtype=np.float64) for name in names}
    Adam(weights).step(weights, {name: grads[name] for name in names}, lr=1.0)
    return {name: weights[name] - net.params[name] for name in names}, grads


def default_model(scheme, depth, seed, d_model, batch, seq):
    """The lnref setting's encoder stack and its seeded batch: (model, x, dy, memory)."""
    model = common.build(scheme, depth, seed, d_model, setting="lnref")
    x, dy, memory = model.sample_inputs(batch=batch, seq=seq)
    return model, x, dy, memory


def encoder_decoder_model(scheme, depth, seed, d_model, batch, seq):
    """An encoder and a decoder of ``depth`` layers each (the lnref setting's sizes: 4 heads,
    d_ff = 4d; the scheme's encoder and decoder constants) and its seeded batch: (model,
    (source, target), dy, None)."""
    from lnref.building import build

    model = build(
        scheme, encoder_layers=depth, decoder_layers=depth, d_model=d_model, n_heads=4, d_ff=4 * d_model, seed=seed
    )
    x, dy, _ = model.sample_inputs(batch=batch, seq=seq)
    return model, x, dy, None


@dataclass
class Sweep:
    """One scheme's output change over depths (rows: seeds, columns: depths).

    ``change`` is Delta. Under the Adam model also: ``descent`` = -<g, delta W> (the first-order
    decrease of the loss per eta, ||g||_1 up to Adam's eps), ``rho`` = <dy, dF>^2 / (||dy||^2
    ||dF||^2) (the share of the change along the loss's cotangent), ``identity_error`` (max
    relative gap between <dy, dF/d eta> by finite differences and -<g, delta W> by the tape) and
    ``sign_gap`` (max relative distance ||delta W + sign g|| / ||sign g|| of Adam's step from the
    sign step). ``formula``: the first-order formula of proofs/liu-output-change.md, sublayers in
    quadrature, when asked for."""

    depths: tuple
    change: np.ndarray
    formula: np.ndarray | None = None
    descent: np.ndarray | None = None
    rho: np.ndarray | None = None
    identity_error: float = 0.0
    sign_gap: float = 0.0


def sweep(
    scheme,
    depths,
    seeds,
    d_model,
    update,
    batch=2,
    seq=16,
    formula=False,
    make: Callable = default_model,
    prepare: Callable | None = None,
    progress=None,
    tag="",
    stack=None,
):
    """Measure Delta(N) for ``scheme`` under the ``update`` model. ``make(scheme, depth, seed,
    d_model, batch, seq)`` gives (model, x, dy, memory), lnref's encoder stack by default;
    ``prepare(model, x)`` may replace the input (T-Fixup's scaled embedding); ``stack``
    ("encoder", "decoder") moves only that stack's weights of an encoder-decoder model."""
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    shape = (len(seeds), len(depths))
    change, descent, rho = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    predicted = np.zeros(shape) if formula else None
    identity_error = sign_gap = 0.0
    for row, seed in enumerate(seeds):
        for column, depth in enumerate(depths):
            model, x, dy, memory = make(scheme, depth, seed, d_model, batch, seq)
            if prepare is not None:
                x = prepare(model, x)
            net = network(model, x, memory)
            names = None if stack is None else [n for n in weight_names(model.params) if n.startswith(f"{stack}.")]
            if update == "random":
                direction = update_direction(model, seed, names)
            else:
                direction, grads = adam_direction(net, dy, names)
            tangent = output_tangent(net, direction)
            change[row, column] = np.mean(tangent**2)
            if update == "adam":
                drop = -sum(float(np.sum(grads[name] * step)) for name, step in direction.items())
                slope = float(np.sum(tangent * dy))
                descent[row, column] = drop
                rho[row, column] = slope**2 / (np.sum(tangent**2) * np.sum(dy * dy))
                identity_error = max(identity_error, abs(slope + drop) / drop)
                sign_gap = max(sign_gap, _sign_gap(direction, grads))
            if predicted is not None:
                predicted[row, column] = predicted_output_change(model, x, direction, memory)
        common.progress_line(progress, f"{tag}: {scheme} ({update}), seed {seed}")
    if update == "random":
        return Sweep(tuple(depths), change, predicted)
    return Sweep(tuple(depths), change, predicted, descent, rho, identity_error, sign_gap)


def _sign_gap(direction, grads):
    """||delta W + sign g|| / ||sign g|| over every moved weight."""
    gap = sum(float(np.sum((step + np.sign(grads[name])) ** 2)) for name, step in direction.items())
    size = sum(float(np.sum(np.sign(grads[name]) ** 2)) for name in direction)
    return float(np.sqrt(gap / size))
