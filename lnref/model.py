"""``build(scheme, ...)``: the one place where a configuration becomes parameters.

A model is a stack of ``n_layers`` layers between two stack-level stages:

    state_0 = scheme.embed(x)            (default: x)
    state_l+1 = scheme.layer(state_l, layer view l)
    y = scheme.readout(state_L)          (default: the last state)

A *state* is what flows between layers: one array for most schemes, a tuple for schemes
with several streams (ResiDual's two, DLCL's history). Keeping states explicit is what lets
the gradient checker re-run only the layers after a perturbed parameter, check one layer at
a time, and lets the probes read every layer's hidden state.

Parameter names (stable, documented in the README):
    layers.{i}.attn.{wq,bq,wk,bk,wv,bv,wo,bo}     self-attention
    layers.{i}.cross.{...}                        cross-attention to a memory (decoder stacks)
    layers.{i}.ffn.{w1,b1,w2,b2}                  feed-forward
    layers.{i}.<norm>.{gamma,beta}                the scheme's norms (RMSNorm: gamma only)
    layers.{i}.<extra>                            scheme scalars/vectors (omega_attn, alpha, ...)
    final_ln.*, embed_ln.*, ...                   stack-level norms
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import operator
from dataclasses import dataclass

import numpy as np

from lnref import nn
from lnref.autograd import Tape, Tensor, kernels, ops
from lnref.autograd.replay import Program, Recording
from lnref.autograd.tensor import cyclic_gc_paused
from lnref.schemes import SCHEMES, get_scheme, stream_names

NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("relu", "gelu")
DTYPES = ("float64", "float32")
MAX_PROGRAMS = 8  # recorded passes a model keeps for replay, one per shape of its inputs


class ConfigError(ValueError):
    """A configuration or input that cannot describe a model (exit code 2 in the CLI)."""


@dataclass(frozen=True)
class Config:
    scheme: str
    n_layers: int
    d_model: int = 16
    n_heads: int = 2
    d_ff: int = 64
    norm: str = "layernorm"
    activation: str = "relu"
    causal: bool = False
    cross_attention: bool = False
    eps: float = 1e-5
    dtype: str = "float64"
    seed: int = 0
    post_fraction: float = 0.25  # Mix-LN: share of the layers (from the bottom) that are Post-LN

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ConfigError(f"unknown scheme {self.scheme!r}; valid schemes: {', '.join(SCHEMES)}")
        for name in ("n_layers", "d_model", "n_heads", "d_ff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"eps must be a finite number > 0, got {self.eps!r}")
        if not (math.isfinite(self.post_fraction) and 0 <= self.post_fraction <= 1):
            raise ConfigError(f"post_fraction must be in [0, 1], got {self.post_fraction!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")

    def to_dict(self):
        return dataclasses.asdict(self)


# ----- what a scheme sees --------------------------------------------------------------

class Run:
    """One evaluation of the model: the parameter values in use and per-run options.

    ``relu_masks`` maps layer index -> {branch: 0/1 array}. When ``freeze`` is set the FFN
    multiplies by the stored pattern instead of applying ReLU; when ``record`` is set it
    stores the pattern it sees.
    """

    def __init__(self, model, params, memory=None, relu_masks=None, freeze=False, groups=None):
        self.model = model
        self.config = model.config
        self.params = params
        self.memory = memory
        self.relu_masks = relu_masks
        self.freeze = freeze
        # prefix -> {short name: value}; ``groups``, when given, holds them all already.
        self._groups = {} if groups is None else groups

    def group(self, prefix):
        """{short name: value} of the parameters named ``prefix.<short name>``.

        Built on first use and kept for the run (a layer may ask again, and the gradient
        checker re-runs layers on one run); ``params`` is not to be changed during a run."""
        group = self._groups.get(prefix)
        if group is None:
            group = self._groups[prefix] = {short: self.params[full] for short, full in self.model.groups[prefix]}
        return group


class Stack:
    """What a scheme's ``embed`` and ``readout`` see: stack-level norms and parameters."""

    def __init__(self, run):
        self.run = run
        self.config = run.config

    def param(self, name):
        return self.run.params[name]

    def norm(self, name, x):
        return nn.norm(x, self.run.group(name), self.config.norm, self.config.eps)


class Layer:
    """What a scheme's ``layer`` sees of layer ``index``.

    ``branches`` lists (name, function) for the layer's sublayers in order: self-attention
    ``attn``, cross-attention ``cross`` (decoder stacks only) and ``ffn``.
    """

    def __init__(self, run, index):
        self.run = run
        self.index = index
        self.config = run.config
        self.n_layers = run.config.n_layers
        self.prefix = f"layers.{index}."

    @property
    def branches(self):
        # Built per access: a list of bound methods kept on the view would be a reference
        # cycle (view -> list -> method -> view), which only the cyclic GC could free, and
        # through the run it would keep every parameter's leaf alive until then.
        branches = [("attn", self.self_attention)]
        if self.config.cross_attention:
            branches.append(("cross", self.cross_attention))
        branches.append(("ffn", self.ffn))
        return branches

    def param(self, name):
        return self.run.params[self.prefix + name]

    def norm(self, name, x):
        return nn.norm(x, self.run.group(self.prefix + name), self.config.norm, self.config.eps)

    def self_attention(self, x):
        return nn.attention(x, self.run.group(self.prefix + "attn"), self.config.n_heads, self.config.causal)

    def cross_attention(self, x):
        params = self.run.group(self.prefix + "cross")
        return nn.attention(x, params, self.config.n_heads, memory=self.run.memory)

    def ffn(self, x):
        params = self.run.group(self.prefix + "ffn")
        masks = self.run.relu_masks
        if self.config.activation != "relu" or masks is None:
            return nn.ffn(x, params, self.config.activation)
        if self.run.freeze:
            return nn.ffn(x, params, relu_mask=masks[self.index])
        # The FFN's own first product (the same loops, or the same BLAS call, at every size):
        # a pre-activation within rounding of 0 gets the pattern the FFN's ReLU applies.
        value = _value(x)
        hidden = kernels.linear_forward(value.reshape(-1, value.shape[-1]), _value(params["w1"]),
                                        _value(params["b1"]))
        masks[self.index] = (hidden > 0).astype(hidden.dtype).reshape(*value.shape[:-1], hidden.shape[1])
        return nn.ffn(x, params, self.config.activation)


# ----- the model -----------------------------------------------------------------------

def _as_state(value):
    """A tuple of Tensors (a stream passed through unchanged may still be a plain array)."""
    if isinstance(value, Tensor):
        return (value,)
    streams = value if isinstance(value, tuple) else (value,)
    return tuple(s if isinstance(s, Tensor) else Tensor(s) for s in streams)


def _from_state(state):
    return state[0] if len(state) == 1 else state


class Model:
    """A stack of one scheme's layers with its parameters (see the module docstring)."""

    def __init__(self, config: Config):
        self.config = config
        self.scheme = get_scheme(config.scheme)
        self.dtype = np.dtype(config.dtype)
        rng = np.random.default_rng(config.seed)
        self.params = self._init_params(rng)
        self.groups = self._index_groups()
        self._names = [full for members in self.groups.values() for _, full in members]  # group order
        self._reused_leaves = None  # (params, leaves, groups) of the last pass: see _leaves
        self._programs = {}  # input shapes -> replay.Program (None: not replayable), see gradients
        initialize = getattr(self.scheme, "initialize", None)
        if initialize is not None:
            initialize(self, rng)

    # -- parameters --

    def _init_params(self, rng):
        cfg, dtype = self.config, self.dtype
        branch_names = ["attn"] + (["cross"] if cfg.cross_attention else []) + ["ffn"]
        params = {}
        for stack_name in getattr(self.scheme, "STACK_NORMS", ()):
            if stack_name == "embed_ln":
                params.update(_prefixed(stack_name, nn.init_norm(cfg.norm, cfg.d_model, dtype)))
        for i in range(cfg.n_layers):
            prefix = f"layers.{i}."
            params.update(_prefixed(prefix + "attn", nn.init_attention(rng, cfg.d_model, dtype)))
            if cfg.cross_attention:
                params.update(_prefixed(prefix + "cross", nn.init_attention(rng, cfg.d_model, dtype)))
            params.update(_prefixed(prefix + "ffn", nn.init_ffn(rng, cfg.d_model, cfg.d_ff, dtype)))
            norm_names = [p.format(b) for b in branch_names for p in getattr(self.scheme, "NORMS", ())]
            norm_names += list(getattr(self.scheme, "LAYER_NORMS", ()))
            for norm_name in norm_names:
                params.update(_prefixed(prefix + norm_name, nn.init_norm(cfg.norm, cfg.d_model, dtype)))
            layer_params = getattr(self.scheme, "layer_params", None)
            if layer_params is not None:
                for name, value in layer_params(i, branch_names, cfg).items():
                    params[prefix + name] = np.asarray(value, dtype=dtype)
        for stack_name in getattr(self.scheme, "STACK_NORMS", ()):
            if stack_name != "embed_ln":
                params.update(_prefixed(stack_name, nn.init_norm(cfg.norm, cfg.d_model, dtype)))
        return params

    @property
    def per_row_params(self):
        """Names of the parameters the model also accepts one per batch row (a leading axis
        as long as the batch): the FFN's, which reach only ``ops.linear``. The gradient
        checker runs many moved copies of one of them in one batched run."""
        return {full for prefix, members in self.groups.items() if prefix.endswith(".ffn") for _, full in members}

    def _index_groups(self):
        groups = {}
        for full in self.params:
            prefix, _, short = full.rpartition(".")
            groups.setdefault(prefix, []).append((short, full))
        return groups

    def load(self, params):
        """Replace every parameter; names, shapes and dtypes must match exactly."""
        missing = [n for n in self.params if n not in params]
        extra = [n for n in params if n not in self.params]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
            if extra:
                parts.append(f"unexpected {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
            raise ConfigError("load: parameter names differ: " + "; ".join(parts))
        loaded = {}
        for name, current in self.params.items():
            value = np.asarray(params[name])
            if value.shape != current.shape:
                raise ConfigError(f"load: {name} has shape {value.shape}, expected {current.shape}")
            if value.dtype != current.dtype:
                raise ConfigError(f"load: {name} has dtype {value.dtype}, expected {current.dtype}")
            if not np.isfinite(value).all():
                raise ConfigError(f"load: {name} contains NaN or inf")
            loaded[name] = value.copy()
        self.params = loaded
        self._reused_leaves = None  # nor keep the replaced arrays alive

    # -- running --

    def check_input(self, x, memory=None):
        cfg = self.config
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[-1] != cfg.d_model:
            raise ConfigError(f"input x must have shape (batch, seq, {cfg.d_model}), got {x.shape}")
        if x.dtype != self.dtype:
            raise ConfigError(f"input x has dtype {x.dtype}, the model is {self.dtype}")
        if not np.isfinite(x).all():
            raise ConfigError("input x contains NaN or inf")
        if cfg.cross_attention:
            if memory is None:
                raise ConfigError("a cross-attention model needs a memory (batch, mem_len, d_model)")
            memory = np.asarray(memory)
            if memory.ndim != 3 or memory.shape[0] != x.shape[0] or memory.shape[-1] != cfg.d_model:
                raise ConfigError(
                    f"memory must have shape ({x.shape[0]}, mem_len, {cfg.d_model}), got {memory.shape}"
                )
            if memory.dtype != self.dtype or not np.isfinite(memory).all():
                raise ConfigError("memory must be finite and of the model's dtype")
        elif memory is not None:
            raise ConfigError("memory given but the model has no cross-attention")
        if cfg.causal and x.shape[1] < 1:
            raise ConfigError("causal attention needs seq >= 1")

    def sample_inputs(self, batch=2, seq=8, memory_len=None, seed=None):
        """Seeded standard-normal (x, dy, memory) for this model (memory None without
        cross-attention; its length defaults to ``seq``). The seed defaults to the model's."""
        rng = np.random.default_rng([self.config.seed if seed is None else seed, 1])
        shape = (batch, seq, self.config.d_model)
        x = rng.standard_normal(shape).astype(self.dtype)
        dy = rng.standard_normal(shape).astype(self.dtype)
        memory = None
        if self.config.cross_attention:
            mem_shape = (batch, seq if memory_len is None else memory_len, self.config.d_model)
            memory = rng.standard_normal(mem_shape).astype(self.dtype)
        return x, dy, memory

    def run(self, params=None, memory=None, relu_masks=None, freeze=False):
        return Run(self, self.params if params is None else params, memory, relu_masks, freeze)

    def stream_names(self, index):
        """Names of the arrays of the state entering layer ``index`` (the scheme declares them)."""
        return stream_names(self.scheme, index)

    def layer_view(self, run, index):
        return Layer(run, index)

    def embed(self, run, x):
        embed = getattr(self.scheme, "embed", None)
        return _as_state(x if embed is None else embed(x, Stack(run)))

    def layer(self, run, index, state):
        return _as_state(self.scheme.layer(_from_state(state), self.layer_view(run, index)))

    def readout(self, run, state):
        readout = getattr(self.scheme, "readout", None)
        y = _from_state(state) if readout is None else readout(_from_state(state), Stack(run))
        return y if isinstance(y, Tensor) else Tensor(y)

    def forward(self, run, x=None, state=None, start=0, keep_states=False):
        """Run layers ``start..`` from ``state`` (or from ``x`` when start is 0).

        Returns (y, states) with states[l] the input state of layer l (and states[L] the
        last) when ``keep_states``, else (y, None).
        """
        if state is None:
            state = self.embed(run, x)
        states = [state] if keep_states else None
        for index in range(start, self.config.n_layers):
            state = self.layer(run, index, state)
            if keep_states:
                states.append(state)
        return self.readout(run, state), states

    def __call__(self, x, memory=None):
        self.check_input(x, memory)
        y, _ = self.forward(self.run(memory=memory), x)
        return y.value

    def hidden_states(self, x, memory=None):
        """Per layer, the arrays of the state entering it (index L: the last layer's output)."""
        self.check_input(x, memory)
        _, states = self.forward(self.run(memory=memory), x, keep_states=True)
        return [tuple(_value(s) for s in state) for state in states]

    def value_and_grad(self, x, dy, memory=None):
        """loss = sum(y * dy) and its gradient for every parameter, plus "input" (and "memory")."""
        self.check_input(x, memory)
        dy = np.asarray(dy)
        grads, loss, _ = self.gradients(x, dy, memory)
        return loss, grads

    def gradients(self, x, dy, memory=None, params=None, relu_masks=None, keep_states=False):
        """Forward and backward; returns (grads, loss, states or None).

        A pass is recorded on a tape. The primitives of the first pass with inputs of given
        shapes are also traced, and a later pass with inputs of the same shapes replays them
        (``autograd.replay``: the same bits, without the Python of the layers), unless it
        takes ReLU patterns, keeps its states or names its parameters otherwise.
        """
        params = self.params if params is None else params
        replay_key = None
        if relu_masks is None and not keep_states and list(params) == self._names:
            replay_key = (np.shape(x), np.shape(dy), None if memory is None else np.shape(memory))
            if replay_key in self._programs:
                program = self._programs[replay_key]
                if program is not None:
                    return self._replay(program, x, dy, memory, params)
                replay_key = None  # traced already, and not replayable
        # One pause of the cyclic GC over the pass, ended once the tape is freed (see
        # autograd.tensor.cyclic_gc_paused): the collector then has nothing left to walk.
        with cyclic_gc_paused():
            leaves, groups = self._leaves(params)
            x_leaf = Tensor(x, requires_grad=True)
            memory_leaf = None if memory is None else Tensor(memory, requires_grad=True)
            with Tape() as tape, Recording() if replay_key is not None else contextlib.nullcontext() as recording:
                run = Run(self, leaves, memory_leaf, relu_masks, groups=groups)
                y, states = self.forward(run, x_leaf, keep_states=keep_states)
                if y.shape != dy.shape:
                    raise ConfigError(f"dy must have the output's shape {y.shape}, got {dy.shape}")
                loss = ops.sum(ops.mul(y, dy))
            if replay_key is not None:
                inputs = [leaves[name] for name in self._names] + [x_leaf]
                inputs += [memory_leaf, dy] if memory_leaf is not None else [dy]
                if len(self._programs) == MAX_PROGRAMS:
                    del self._programs[next(iter(self._programs))]  # the oldest
                differentiable = [True] * (len(inputs) - 1) + [False]  # not dy
                self._programs[replay_key] = Program.from_recording(recording, inputs, differentiable, loss)
                del recording, inputs
            if keep_states:
                for state in states:
                    for tensor in state:
                        tensor.retain_grad = True
            tape.backward(loss)
            del tape, run, y  # the records and the residuals they hold, freed within the pause
            grads = {}
            for name, leaf in leaves.items():
                grads[name] = _grad_or_zeros(leaf)
                leaf.grad = None  # the caller owns the gradients; the leaves may be reused
            if groups is not None:
                self._reused_leaves = (params, leaves, groups)
            grads["input"] = _grad_or_zeros(x_leaf)
            if memory_leaf is not None:
                grads["memory"] = _grad_or_zeros(memory_leaf)
            del leaves, groups
        return grads, float(loss.value), states

    def _replay(self, program, x, dy, memory, params):
        """``gradients`` by the program of an earlier pass; the inputs as the taped pass takes
        them (each parameter as its leaf's array, x and memory as a Tensor's)."""
        dtype = self.dtype
        values = list(params.values())
        # (Set comparisons over C-level maps: a Python loop over 10^3 parameters would cost
        # about 1% of the small model's pass.)
        if set(map(type, values)) != {np.ndarray} or set(map(_DTYPE, values)) != {dtype}:
            values = [_leaf(value, dtype).value for value in values]
        values.append(Tensor(x).value)
        if memory is not None:
            values.append(Tensor(memory).value)
        values.append(dy)
        loss, input_grads = program.run(values)
        names = self._names + (["input", "memory"] if memory is not None else ["input"])
        reached = input_grads[:len(names)]  # (not dy's)
        grads = dict(zip(names, reached))
        if any(map(operator.is_, reached, itertools.repeat(None))):  # no gradient reached one
            for name, value in zip(names, values):
                if grads[name] is None:
                    grads[name] = np.zeros_like(value)
        return grads, float(loss), None

    def _leaves(self, params):
        """({name: leaf Tensor}, {prefix: {short name: leaf Tensor}}) for ``params``, both in
        one pass over the groups (the leaves in the order of ``params``)."""
        dtype = self.dtype
        if list(params) != self._names:  # other names, or another order: the groups come later
            return {name: _leaf(value, dtype) for name, value in params.items()}, None
        # Repeated passes over the same arrays (training steps, benchmarks) reuse the leaves
        # of the last pass that completed (``gradients`` hands them back, gradients cleared):
        # making 10^3 Tensors costs about a tenth of a small model's pass. An array replaced
        # since (another object) means new leaves.
        reused, self._reused_leaves = self._reused_leaves, None
        if reused is not None and reused[0] is params and all(
                map(operator.is_, map(_VALUE, reused[1].values()), params.values())):
            return reused[1], reused[2]
        leaves, groups = {}, {}
        for prefix, members in self.groups.items():
            group = groups[prefix] = {}
            for short, full in members:
                leaves[full] = group[short] = _leaf(params[full], dtype)
        return leaves, groups


_VALUE = operator.attrgetter("value")
_DTYPE = operator.attrgetter("dtype")


def _leaf(value, dtype):
    """A Tensor that requires a gradient; an array of the model's dtype (the common case,
    checked in two identity tests) is wrapped without ``Tensor``'s checks."""
    if type(value) is np.ndarray and value.dtype is dtype:
        return Tensor.wrap(value, True)
    return Tensor(value, requires_grad=True)


def _value(tensor):
    return tensor.value if isinstance(tensor, Tensor) else np.asarray(tensor)


def _grad_or_zeros(tensor):
    return tensor.grad if tensor.grad is not None else np.zeros_like(tensor.value)


def _prefixed(prefix, params):
    return {f"{prefix}.{name}": value for name, value in params.items()}


def build(scheme: str, n_layers: int, d_model: int = 16, n_heads: int = 2, d_ff: int = 64, **options):
    """A model of ``scheme`` with freshly initialized (seeded) parameters.

    Options: norm ("layernorm" | "rmsnorm"), activation ("relu" | "gelu"), causal,
    cross_attention, eps, dtype ("float64" | "float32"), seed, post_fraction (Mix-LN).
    """
    unknown = set(options) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ConfigError(f"build: unknown option(s) {', '.join(sorted(unknown))}")
    return Model(Config(scheme, n_layers, d_model, n_heads, d_ff, **options))
