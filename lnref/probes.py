"""Per-layer probes: the one place where lnref measures a hidden state or a gradient.

``lnref profile`` and the proofs (``lnref prove``) both call these functions, so every
quantity they report is computed by exactly one piece of code.

One forward and one backward of ``loss = sum(y * dy)`` (``Model.gradients`` with
``keep_states=True``) give everything a :class:`LayerProfile` holds. With ``x_l`` the state
entering layer ``l`` (``l = 0..L-1``) and ``x_L`` the output of the last layer, before the
stack's readout (final LN, ResiDual's merge), all norms over the whole (batch, seq, d) array:

    hidden_norm[l]               ||x_l||_F                                      (L+1,)
    hidden_sq_norm_per_token[l]  mean over tokens i of ||x_{l,i}||^2             (L+1,)
                                 (Xiong et al. 2020, Lemma 2: E||x_{l,i}||^2)
    hidden_grad_norm[l]          ||dLoss/dx_l||_F                                (L+1,)
    relative_change[l]           ||x_{l+1} - x_l||_F / ||x_l||_F                 (L,)
    cosine[l]                    mean over tokens i of cos(x_{l,i}, x_{l+1,i})   (L,)
    weight_grad_norms[kind][l]   ||dLoss/dW||_F of layer l's weights of a kind   (L,)
                                 (Xiong et al. 2020, Theorem 1 and Fig. 3: kind "ffn.w2")

Weight kinds (a kind is absent when the model has no such parameter, e.g. no "cross" in an
encoder, no "norm_gain" in ReZero; several matrices of one kind are one Frobenius norm,
sqrt of the sum of their squared norms):

    "attn"        wq, wk, wv, wo of the self-attention (biases excluded)
    "attn.wq" ... each self-attention projection alone ("attn.wk", "attn.wv", "attn.wo")
    "cross"       wq, wk, wv, wo of the cross-attention (decoder stacks); "cross.wq" ... alone
    "ffn"         w1 and w2 of the feed-forward; "ffn.w1", "ffn.w2" alone
    "norm_gain"   every norm gain (gamma) of the layer
    "layer"       every parameter of the layer: weights, biases, norms, scheme extras

Streams. A state is a tuple of arrays, named by the scheme (``model.stream_names(l)``: its
``STREAMS`` or ``streams(l)``, one stream "x" by default); ``stream`` picks the entry that
is measured. Stream 0 is the stream the next layer reads: the residual stream x_l for
single-stream schemes, ResiDual's Post-LN stream x_a, DLCL's combined input x_l.

When several streams start as the same array (ResiDual's x_a = x_d = x, DLCL's x_0 = n_0 =
x), ``hidden_grad_norm[0]`` is the gradient with respect to that array, summed over every
place it is used: the gradient with respect to the input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lnref.autograd import Tensor

# Fields of a LayerProfile indexed by the state entering each layer (L+1 entries) or by the
# layer / the transition l -> l+1 (L entries).
STATE_FIELDS = ("hidden_norm", "hidden_sq_norm_per_token", "hidden_grad_norm")
TRANSITION_FIELDS = ("relative_change", "cosine")

_PROJECTIONS = ("wq", "wk", "wv", "wo")
_FFN_WEIGHTS = ("w1", "w2")


# ----- hidden states ----------------------------------------------------------------------


def stream_arrays(states, stream=0):
    """The arrays of one stream across layers: ``states[l][stream]`` as float64 arrays.

    ``states`` is what ``Model.hidden_states`` returns (tuples of arrays) or what
    ``Model.gradients(..., keep_states=True)`` returns (tuples of Tensors).
    Raises ValueError when a state has no entry ``stream``.
    """
    _check_stream(states, stream)
    return [_as_float64(_value(state[stream])) for state in states]


def hidden_norms(states, stream=0):
    """||x_l||_F over the whole (batch, seq, d) array, for l = 0..L. Shape (L+1,)."""
    return np.array([np.linalg.norm(x) for x in stream_arrays(states, stream)])


def hidden_sq_norms_per_token(states, stream=0):
    """Mean over the batch*seq tokens of ||x_{l,i}||^2, for l = 0..L. Shape (L+1,).

    The quantity of Xiong et al. 2020, Lemma 2 (E||x_{l,i}||^2 = (3/2)d after Post-LN's
    residual add; linear growth in l for Pre-LN).
    """
    return np.array([np.mean(np.sum(x * x, axis=-1)) for x in stream_arrays(states, stream)])


def hidden_grad_norms(states, stream=0):
    """||dLoss/dx_l||_F for l = 0..L. Shape (L+1,).

    ``states`` must come from ``Model.gradients(..., keep_states=True)`` (Tensors whose
    ``.grad`` the backward pass kept). A state that does not reach the loss has a zero
    gradient.
    """
    _check_stream(states, stream)
    norms = []
    for state in states:
        tensor = state[stream]
        if not isinstance(tensor, Tensor):
            raise ValueError("hidden_grad_norms needs the Tensor states of Model.gradients(keep_states=True)")
        norms.append(0.0 if tensor.grad is None else float(np.linalg.norm(_as_float64(tensor.grad))))
    return np.array(norms)


def relative_changes(states, stream=0):
    """||x_{l+1} - x_l||_F / ||x_l||_F for l = 0..L-1. Shape (L,).

    How much one layer moves the stream (Mix-LN's argument that deep Pre-LN layers barely
    change it). NaN where ||x_l|| is 0.
    """
    xs = stream_arrays(states, stream)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.array([np.linalg.norm(b - a) / np.linalg.norm(a) for a, b in zip(xs, xs[1:])])


def cosines(states, stream=0):
    """Mean over tokens i of cos(x_{l,i}, x_{l+1,i}) for l = 0..L-1. Shape (L,).

    1 - cosine is the angular distance between consecutive layers' representations
    (Mix-LN, Sec. 3). NaN where a token's vector is 0.
    """
    xs = stream_arrays(states, stream)
    values = []
    for a, b in zip(xs, xs[1:]):
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        values.append(np.mean(cos))
    return np.array(values)


# ----- weight gradients --------------------------------------------------------------------


def layer_weight_kinds(layer_param_names):
    """Map kind -> the short parameter names (within one layer) that make it up.

    ``layer_param_names`` are names relative to ``layers.{i}.`` (``attn.wq``, ``ln_ffn.gamma``,
    ``alpha``, ...). Kinds with no parameter are left out.
    """
    names = list(layer_param_names)
    present = set(names)
    kinds = {}
    for branch in ("attn", "cross"):
        projections = [f"{branch}.{p}" for p in _PROJECTIONS if f"{branch}.{p}" in present]
        if projections:
            kinds[branch] = projections
            for name in projections:
                kinds[name] = [name]
    ffn = [f"ffn.{w}" for w in _FFN_WEIGHTS if f"ffn.{w}" in present]
    if ffn:
        kinds["ffn"] = ffn
        for name in ffn:
            kinds[name] = [name]
    gains = [name for name in names if name.endswith(".gamma")]
    if gains:
        kinds["norm_gain"] = gains
    if names:
        kinds["layer"] = names
    return kinds


def weight_grad_norms(grads, n_layers):
    """Per-layer Frobenius norms of the weight gradients, kind -> array of shape (L,).

    ``grads`` is any name -> gradient dict of the model's parameters, such as the one
    ``Model.value_and_grad`` or ``Model.gradients`` returns (extra entries such as "input"
    are ignored). The kinds are listed in the module docstring; the kinds of layer 0 are
    those reported (every layer of a model has the same weights; "norm_gain" and "layer" take
    each layer's own norms and parameters, which differ in HybridNorm*'s first layer and in
    the length of DLCL's combination weights).
    """
    per_layer = []
    for index in range(n_layers):
        prefix = f"layers.{index}."
        per_layer.append({name[len(prefix) :]: grad for name, grad in grads.items() if name.startswith(prefix)})
    if not per_layer or not per_layer[0]:
        raise ValueError(f"weight_grad_norms: no parameter named layers.0.* among {len(grads)} gradients")
    kinds = layer_weight_kinds(per_layer[0])
    norms = {}
    for kind, members in kinds.items():
        values = []
        for index, layer_grads in enumerate(per_layer):
            if kind == "layer":
                members_here = list(layer_grads)
            elif kind == "norm_gain":
                members_here = [name for name in layer_grads if name.endswith(".gamma")]
            else:
                missing = [m for m in members if m not in layer_grads]
                if missing:
                    raise ValueError(f"weight_grad_norms: layers.{index}.{missing[0]} is missing")
                members_here = members
            values.append(_joint_norm(layer_grads[m] for m in members_here))
        norms[kind] = np.array(values)
    return norms


def _joint_norm(arrays):
    """sqrt of the sum of squared Frobenius norms: the norm of the arrays taken as one vector."""
    return float(np.sqrt(sum(float(np.sum(_as_float64(a) ** 2)) for a in arrays)))


# ----- one model, one batch ----------------------------------------------------------------


@dataclass(frozen=True)
class LayerProfile:
    """Every per-layer probe of one model on one batch (see the module docstring).

    Arrays are float64. ``metrics()`` flattens them into one name -> array dict, with the
    weight-gradient kinds as ``"grad.<kind>"``.
    """

    scheme: str
    n_layers: int
    stream: int
    loss: float
    hidden_norm: np.ndarray
    hidden_sq_norm_per_token: np.ndarray
    hidden_grad_norm: np.ndarray
    relative_change: np.ndarray
    cosine: np.ndarray
    weight_grad_norms: dict = field(default_factory=dict)

    def metrics(self):
        """name -> array: the state and transition fields, then ``grad.<kind>`` per kind."""
        values = {name: getattr(self, name) for name in STATE_FIELDS + TRANSITION_FIELDS}
        values.update({f"grad.{kind}": norms for kind, norms in self.weight_grad_norms.items()})
        return values


def layer_profile(model, x, dy, memory=None, stream=0, stack="decoder"):
    """Probe ``model`` on one batch: one forward and backward of loss = sum(y * dy).

    ``x``, ``dy`` (and ``memory`` for cross-attention stacks) as from
    ``model.sample_inputs``; ``stream`` picks the measured entry of multi-stream states. Of an
    encoder-decoder model the layers of ``stack`` ("encoder" or "decoder") are probed, with
    the gradients of the whole model's loss (an encoder's reach it through the memory).
    """
    model.check_input(x, memory)
    grads, loss, states = model.gradients(x, np.asarray(dy), memory, keep_states=True)
    n_layers = model.config.n_layers
    if model.config.role == "encoder-decoder":
        states = model.stack_states(states)[stack]
        prefix = f"{stack}."
        grads = {name[len(prefix) :]: g for name, g in grads.items() if name.startswith(prefix)}
        n_layers = getattr(model, stack).config.n_layers
    return LayerProfile(
        scheme=model.config.scheme,
        n_layers=n_layers,
        stream=stream,
        loss=float(loss),
        hidden_norm=hidden_norms(states, stream),
        hidden_sq_norm_per_token=hidden_sq_norms_per_token(states, stream),
        hidden_grad_norm=hidden_grad_norms(states, stream),
        relative_change=relative_changes(states, stream),
        cosine=cosines(states, stream),
        weight_grad_norms=weight_grad_norms(grads, n_layers),
    )


# ----- over seeds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedSummary:
    """Mean and spread over seeds of every metric of :meth:`LayerProfile.metrics`.

    ``std`` is the sample standard deviation (ddof=1) and ``sem = std / sqrt(n)`` its
    standard error; both are NaN with a single seed, where no spread can be measured.
    ``loss`` holds (mean, std, sem) of the scalar loss; ``profiles`` one profile per seed.
    """

    seeds: tuple
    mean: dict
    std: dict
    sem: dict
    loss: tuple
    profiles: tuple
    seconds: float = 0.0

    @property
    def n_layers(self):
        return self.profiles[0].n_layers


def summarize(profiles, seeds):
    """:class:`SeedSummary` of several :class:`LayerProfile` of one configuration."""
    metrics = [p.metrics() for p in profiles]
    names = list(metrics[0])
    for m in metrics[1:]:
        if list(m) != names:
            raise ValueError("summarize: the profiles do not have the same metrics")
    mean, std, sem = {}, {}, {}
    for name in names:
        mean[name], std[name], sem[name] = _spread(np.stack([m[name] for m in metrics]))
    loss_mean, loss_std, loss_sem = _spread(np.array([p.loss for p in profiles]))
    return SeedSummary(
        tuple(seeds), mean, std, sem, (float(loss_mean), float(loss_std), float(loss_sem)), tuple(profiles)
    )


def profile_over_seeds(build_kwargs, seeds, batch=2, seq=8, memory_len=None, stream=0, progress=None, stack="decoder"):
    """Build the model once per seed, probe it on that seed's inputs, summarize.

    ``build_kwargs`` are the keyword arguments of ``lnref.build`` (scheme, n_layers, d_model,
    ...; a "seed" entry is replaced by each seed in turn). Each seed gives a fresh
    initialization and ``model.sample_inputs(batch, seq, memory_len)``, whose inputs are
    seeded by the model's seed (an encoder-decoder model's source is ``memory_len`` long).
    ``stack``: which stack of an encoder-decoder model is probed. ``progress(message)``, if
    given, is called once per seed.
    """
    from lnref.building import build

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("profile_over_seeds: no seeds")
    kwargs = {k: v for k, v in dict(build_kwargs).items() if k != "seed"}
    start = time.perf_counter()
    profiles = []
    for count, seed in enumerate(seeds, 1):
        model = build(**kwargs, seed=seed)
        x, dy, memory = model.sample_inputs(batch=batch, seq=seq, memory_len=memory_len)
        profiles.append(layer_profile(model, x, dy, memory, stream=stream, stack=stack))
        if progress is not None:
            progress(f"{kwargs.get('scheme')} {kwargs.get('n_layers')} layers: seed {seed} ({count}/{len(seeds)})")
    summary = summarize(profiles, seeds)
    return SeedSummary(
        summary.seeds,
        summary.mean,
        summary.std,
        summary.sem,
        summary.loss,
        summary.profiles,
        seconds=time.perf_counter() - start,
    )


def _spread(samples):
    """(mean, std with ddof=1, standard error) over axis 0; NaN spreads for one sample."""
    samples = np.asarray(samples, dtype=np.float64)
    mean = samples.mean(axis=0)
    count = samples.shape[0]
    if count < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan.copy()
    std = samples.std(axis=0, ddof=1)
    return mean, std, std / np.sqrt(count)


# ----- helpers -----------------------------------------------------------------------------


def _value(entry):
    return entry.value if isinstance(entry, Tensor) else np.asarray(entry)


def _as_float64(array):
    return np.asarray(array, dtype=np.float64)


def _check_stream(states, stream):
    if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)) or stream < 0:
        raise ValueError(f"stream must be an integer >= 0, got {stream!r}")
    if not states:
        raise ValueError("no hidden states to probe")
    available = min(len(state) for state in states)
    if stream >= available:
        raise ValueError(
            f"stream {stream} does not exist: these states have {available} stream(s) (valid: 0..{available - 1})"
        )
