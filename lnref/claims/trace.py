"""Measurements below the layer: every sublayer's branch and norm, the closed-form norm
Jacobian, and central finite differences on the smooth piece of the network.

The per-layer quantities (hidden-state norms, per-layer gradients, relative change, cosine)
come from :mod:`lnref.probes`. The proofs also need what happens *inside* a layer: the input
of each LN (Xiong's x^{post,5}), the gradient on either side of each LN and each residual
branch (Wang 2019's two factors), the output of each branch (Liu's residual dependency).
:func:`trace` gets these without re-implementing any scheme: it runs the scheme's own
``layer`` function on a view of the layer that records every branch call and norm call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lnref import finite_diff
from lnref.autograd import Tape, Tensor, ops
from lnref.views import Layer, record_frozen

# ----- recording every sublayer --------------------------------------------------------------


@dataclass
class Event:
    """One call inside layer ``layer``: a branch (attn, cross, ffn) or a norm (ln_attn, ...).

    ``input`` and ``output`` are Tensors; after a traced backward their ``.grad`` holds the
    gradient of the loss with respect to them.
    """

    layer: int
    kind: str  # "branch" or "norm"
    name: str
    input: Tensor
    output: Tensor


class _RecordingLayer:
    """A layer view whose branches and norms log their inputs and outputs, otherwise the
    model's own view (the scheme sees no difference)."""

    def __init__(self, layer, events):
        self._layer = layer
        self._events = events
        self.branches = [(name, self._recorded_branch(name, fn)) for name, fn in layer.branches]

    def __getattr__(self, attribute):
        return getattr(self._layer, attribute)

    def _recorded_branch(self, name, function):
        def branch(x, **pieces):
            out = function(x, **pieces)
            self._events.append(Event(self._layer.index, "branch", name, x, out))
            return out

        return branch

    def norm(self, name, x):
        out = self._layer.norm(name, x)
        self._events.append(Event(self._layer.index, "norm", name, x, out))
        return out


def recording_run(model, events, params=None, memory=None, frozen=None):
    """A run of ``model`` whose layers append their branch and norm calls to ``events``."""
    return model.run(
        params,
        memory,
        freeze=None if frozen is None else frozen.hold(),
        view=lambda run, index: _RecordingLayer(Layer(run, index), events),
    )


@dataclass
class Trace:
    """One traced forward (and, when a cotangent was given, backward) of a model."""

    y: Tensor
    states: list  # states[l]: tuple of Tensors entering layer l; states[L]: last layer's output
    events: list
    loss: float | None
    x: Tensor
    tape: Tape | None = None  # kept (unreplayed) when traced with ``keep_tape``

    def select(self, kind=None, name=None, layer=None):
        return [
            e
            for e in self.events
            if (kind is None or e.kind == kind)
            and (name is None or e.name == name)
            and (layer is None or e.layer == layer)
        ]


def trace(model, x, dy=None, memory=None, params=None, frozen=None, state=None, start=0, keep_tape=False):
    """Run ``model`` (from ``x``, or from ``state`` entering layer ``start``) recording every
    branch and norm call; with ``dy``, also backpropagate loss = sum(y * dy) and keep the
    gradient of every recorded tensor and every state. With ``keep_tape`` (and no ``dy``)
    the forward is recorded and the tape returned, for backward passes of one's choosing.

    ``frozen`` (a :class:`lnref.views.Freezer`, see :func:`record_frozen`) holds the ReLU
    patterns of its point, so finite differences stay on the smooth piece of the network.
    """
    events = []
    run = recording_run(model, events, params, memory, frozen)
    differentiate = dy is not None or keep_tape  # otherwise nothing is recorded on the tape
    with Tape() as tape:
        if state is None:
            x_leaf = Tensor(np.asarray(x), requires_grad=differentiate)
            y, states = model.forward(run, x_leaf, keep_states=True)
        else:
            current = tuple(Tensor(np.asarray(getattr(s, "value", s)), requires_grad=differentiate) for s in state)
            x_leaf = current[0]
            y, states = model.forward(run, state=current, start=start, keep_states=True)
        loss = None
        if dy is not None:
            loss_tensor = ops.sum(ops.mul(y, np.asarray(dy)))
    if dy is not None:
        for tensor in _tensors(states, events):
            tensor.retain_grad = True
        tape.backward(loss_tensor)
        loss = float(loss_tensor.value)
    return Trace(y, states, events, loss, x_leaf, tape if keep_tape and dy is None else None)


def _tensors(states, events):
    for state in states:
        yield from (t for t in state if isinstance(t, Tensor))
    for event in events:
        for t in (event.input, event.output):
            if isinstance(t, Tensor):
                yield t


def sublayers(traced):
    """(layer, branch event, norm event) for every residual sublayer of a Post-LN-type layer
    (post, admin, deepnorm, mixln's Post-LN part): the branch reads the stream x_in, the norm
    takes z = skip + branch and returns x_out."""
    out = []
    pending = {}
    for event in traced.events:
        if event.kind == "branch":
            pending[event.layer] = event
        elif event.layer in pending:
            out.append((event.layer, pending.pop(event.layer), event))
    return out


def branch_vjp(model, run, layer, name, x_in, cotangent):
    """J_branch(x_in)^T cotangent for one branch alone, by lnref's autodiff."""
    view = model.layer_view(run, layer)
    function = dict(view.branches)[name]
    leaf = Tensor(np.asarray(x_in), requires_grad=True)
    with Tape() as tape:
        out = function(leaf)
    if not out.requires_grad:  # the branch does not read its input (cross-attention values)
        return np.zeros_like(leaf.value)
    tape.backward(out, cotangent)
    return grad_of(leaf)


def block_jacobian_deviation(model, state, layer, probes, rng, memory=None):
    """||dx_{l+1}/dx_l - I||_F / sqrt(n d) for layer ``layer`` at ``state`` (the state entering
    it; the first stream is the one differentiated), estimated by random probes u ~ N(0, I):
    ||A||_F^2 = E||A^T u||^2, with A^T u = J^T u - u one backward pass of the layer alone."""
    x = np.asarray(getattr(state[0], "value", state[0]), dtype=np.float64)
    rest = tuple(state[1:])
    total = 0.0
    for _ in range(probes):
        u = rng.standard_normal(x.shape)
        leaf = Tensor(x, requires_grad=True)
        with Tape() as tape:
            out = model.layer(model.run(memory=memory), layer, (leaf, *rest))
        tape.backward(out[0], u)
        total += float(np.sum((grad_of(leaf) - u) ** 2))
    return float(np.sqrt(total / probes / x.size))


def grad_of(tensor):
    """The gradient kept on a traced tensor (zeros when the loss does not reach it)."""
    return tensor.grad if tensor.grad is not None else np.zeros_like(tensor.value)


def record_frozen_point(model, x, memory=None, params=None):
    """The ReLU on/off patterns of every layer at this point, held for later runs (``frozen=``)."""
    return record_frozen(model, lambda run: model.forward(run, x), params, memory)


# ----- the Xiong et al. 2020 theory setting ----------------------------------------------------


def uniform_attention(model):
    """Zero W^Q and W^K (and their biases) of every attention in place: with equal logits
    every token attends uniformly, the setting of Xiong et al. 2020, Sec. 3.3. Returns the
    model."""
    for name, value in model.params.items():
        if name.rsplit(".", 1)[-1] in ("wq", "wk", "bq", "bk"):
            value[...] = 0.0
    return model


# ----- closed-form norm Jacobians (Xiong et al. 2020, Lemma 3) ------------------------------------


def layer_norm_jacobian(z, eps, gamma=None):
    """dLN(z)/dz for one vector z of length d, gamma = 1 unless given, in closed form:

    J = diag(gamma) (1/sigma) (I - 1 1^T/d - x_hat x_hat^T/d),
    sigma = sqrt(||z - mean z||^2/d + eps),   x_hat = (z - mean z)/sigma.
    """
    z = np.asarray(z, dtype=np.float64)
    d = z.shape[-1]
    centred = z - z.mean()
    sigma = np.sqrt(centred @ centred / d + eps)
    x_hat = centred / sigma
    jac = (np.eye(d) - np.full((d, d), 1.0 / d) - np.outer(x_hat, x_hat) / d) / sigma
    return jac if gamma is None else np.asarray(gamma)[:, None] * jac


def rms_norm_jacobian(z, eps, gamma=None):
    """dRMSNorm(z)/dz = diag(gamma) (1/r) (I - z_hat z_hat^T/d), r = sqrt(||z||^2/d + eps), z_hat = z/r."""
    z = np.asarray(z, dtype=np.float64)
    d = z.shape[-1]
    r = np.sqrt(z @ z / d + eps)
    z_hat = z / r
    jac = (np.eye(d) - np.outer(z_hat, z_hat) / d) / r
    return jac if gamma is None else np.asarray(gamma)[:, None] * jac


def layer_norm_spectral_norm(z, eps):
    """||dLN(z)/dz||_2 = 1/sqrt(||z - mean z||^2/d + eps) (gamma = 1): Lemma 3 with eps."""
    z = np.asarray(z, dtype=np.float64)
    centred = z - z.mean(axis=-1, keepdims=True)
    return 1.0 / np.sqrt(np.mean(centred * centred, axis=-1) + eps)


def layer_norm_vjp(z, g, eps):
    """J_LN(z)^T g for every token (rows of z and g), gamma = 1, by the closed form.

    J is symmetric, so this is also J g: (1/sigma)(g - mean(g) - x_hat <x_hat, g>/d).
    """
    z = np.asarray(z, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    d = z.shape[-1]
    centred = z - z.mean(axis=-1, keepdims=True)
    sigma = np.sqrt(np.sum(centred * centred, axis=-1, keepdims=True) / d + eps)
    x_hat = centred / sigma
    return (g - g.mean(axis=-1, keepdims=True) - x_hat * np.sum(x_hat * g, axis=-1, keepdims=True) / d) / sigma


# ----- finite differences ------------------------------------------------------------------------


def central_difference(function, step):
    """The fourth-order central difference of a scalar or array function of t at t = 0
    (``lnref.finite_diff``, without its noise estimate)."""
    return finite_diff.central_difference(function, step)[0]


def relative_error(approx, exact):
    approx = np.asarray(approx, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    return float(np.linalg.norm(approx - exact) / max(np.linalg.norm(exact), np.finfo(float).tiny))
