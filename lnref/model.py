"""``Model``: the one place where a configuration becomes parameters (``lnref.build``, in
``lnref/building.py``, makes one from a scheme's name).

A model is a stack of ``n_layers`` layers between two stack-level stages:

    state_0   = scheme.embed(x)            (default: x)
    state_l+1 = scheme.layer(state_l, layer view l)
    y         = scheme.readout(state_L)    (default: the last state)

A *state* is what flows between layers: one array for most schemes, a tuple for schemes with
several streams (ResiDual's two, DLCL's history; the scheme names them). Keeping states
explicit is what lets the gradient checker re-run only the layers after a perturbed
parameter and check one layer at a time, and lets the probes read every layer's state.
``build(scheme, encoder_layers=N, decoder_layers=M)`` builds an encoder-decoder model of two
such stacks (``lnref/encdec.py``), staged the same way.

Parameter names (stable, documented in the README):
    layers.{i}.attn.{wq,bq,wk,bk,wv,bv,wo,bo}     self-attention
    layers.{i}.cross.{...}                        cross-attention to a memory (decoder stacks)
    layers.{i}.ffn.{w1,b1,w2,b2}                  feed-forward
    layers.{i}.<norm>.{gamma,beta}                the scheme's norms (RMSNorm: gamma only)
    layers.{i}.<extra>                            scheme scalars/vectors (omega_attn, alpha, ...)
    final_ln.*, embed_ln.*, ...                   stack-level norms
An encoder-decoder model names each stack's parameters so, after "encoder." or "decoder.".
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnref import nn
from lnref.autograd import Tensor
from lnref.autograd.replay import Replayer
from lnref.norms import NORM_KINDS
from lnref.qk_norms import QK_NORMS
from lnref.schemes import ALIASES, get_scheme, one_line_error, options_of, refusals_of, stream_names
from lnref.staged import ConfigError, Staged, as_state, index_groups
from lnref.views import Freeze, Layer, Run, Stack, State

ACTIVATIONS = tuple(nn.ACTIVATIONS)
DTYPES = ("float64", "float32")
# What a Config describes: a model of one stack; the encoder or the decoder of an
# encoder-decoder model (what its schemes see); the whole encoder-decoder model.
ROLES = ("stack", "encoder", "decoder", "encoder-decoder")
# The random streams of the two stacks of an encoder-decoder model (a model of one stack
# draws from its seed alone): the stacks' weights are independent draws.
STACK_STREAMS = {"encoder": 11, "decoder": 12}


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
    qk_norm: str = "none"  # a variant of lnref.qk_norms, in every attention
    options: Any = ()  # the scheme's own options (its OPTIONS), as {name: value}
    role: str = "stack"  # one of ROLES; a scheme reads it to tell an encoder's constants from a decoder's
    encoder_layers: int = 0  # N and M, the depths of an encoder-decoder model's two stacks (0: one stack)
    decoder_layers: int = 0

    def __post_init__(self) -> None:
        try:
            get_scheme(self.scheme)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        _apply_alias(self)
        object.__setattr__(self, "options", tuple(sorted(_scheme_options(self.scheme, self.options).items())))
        for name in ("n_layers", "d_model", "n_heads", "d_ff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        for name, value, valid in (
            ("norm", self.norm, tuple(NORM_KINDS)),
            ("activation", self.activation, ACTIVATIONS),
            ("dtype", self.dtype, DTYPES),
            ("qk_norm", self.qk_norm, tuple(QK_NORMS)),
        ):
            if value not in valid:
                raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"eps must be a finite number > 0, got {self.eps!r}")
        if not (math.isfinite(self.post_fraction) and 0 <= self.post_fraction <= 1):
            raise ConfigError(f"post_fraction must be in [0, 1], got {self.post_fraction!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        self._check_role()
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "scheme"}
        refused = refusal(self.scheme, **settings)
        if refused is not None:
            raise ConfigError(refused)

    def _check_role(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"unknown role {self.role!r}; valid: {', '.join(ROLES)}")
        depths = (self.encoder_layers, self.decoder_layers)
        for name, value in zip(("encoder_layers", "decoder_layers"), depths):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.role == "stack":
            if any(depths):
                raise ConfigError("encoder_layers and decoder_layers describe an encoder-decoder model, not one stack")
            return
        if min(depths) < 1:
            raise ConfigError(f"an encoder-decoder model needs encoder_layers and decoder_layers >= 1, got {depths}")
        layers = {"encoder": depths[0], "decoder": depths[1], "encoder-decoder": sum(depths)}[self.role]
        if self.n_layers != layers:
            raise ConfigError(f"n_layers of the {self.role} is {layers} (encoder_layers, decoder_layers {depths})")
        decoder = self.role == "decoder"
        if (self.causal, self.cross_attention) != (decoder, decoder):
            raise ConfigError(
                "an encoder-decoder model sets causal and cross_attention itself: "
                "its encoder attends both ways, its decoder is causal and attends to the encoder's output"
            )

    def stack(self, role: str) -> Config:
        """The config of the encoder's or the decoder's stack of this encoder-decoder model."""
        decoder = role == "decoder"
        layers = self.decoder_layers if decoder else self.encoder_layers
        return dataclasses.replace(self, role=role, n_layers=layers, causal=decoder, cross_attention=decoder)

    def option(self, name: str) -> Any:
        """The value of the scheme's own option ``name`` (its default unless set)."""
        return dict(self.options).get(name, options_of(get_scheme(self.scheme))[name].default)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "options": dict(self.options)}


def _apply_alias(config: Config) -> None:
    """An alias's preset settings, where ``config`` leaves them at their defaults; a setting
    given otherwise is refused (the alias would no longer be what its name says)."""
    alias = ALIASES.get(config.scheme)
    if alias is None:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for name, preset in alias.settings.items():
        value = getattr(config, name)
        if value == defaults[name]:
            object.__setattr__(config, name, preset)
        elif value != preset:
            raise ConfigError(f"{config.scheme} is {alias.base} with {name}={preset}, got {name}={value!r}")


def refusal(scheme: str, **settings: Any) -> str | None:
    """Why ``scheme`` refuses one of ``settings`` (``build``'s options, set away from their
    defaults: its REFUSES), or None when it takes them all."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for name, why in refusals_of(get_scheme(scheme)).items():
        if name in settings and settings[name] != defaults[name]:
            return f"scheme {scheme} takes no {name} option: {why}"
    return None


def _scheme_options(scheme: str, given: Any) -> dict[str, Any]:
    """``given`` ({name: value} or pairs) checked against the scheme's OPTIONS."""
    declared = options_of(get_scheme(scheme))
    try:
        given = dict(given or {})
    except (TypeError, ValueError):
        raise ConfigError(f"options must be a mapping of names to values, got {given!r}") from None
    checked = {}
    for name, value in given.items():
        if name not in declared:
            valid = ", ".join(declared) or "none"
            raise ConfigError(f"scheme {scheme} has no option {name!r}; its options: {valid}")
        option = declared[name]
        value = _coerced(scheme, name, value, option.default)
        if option.choices is not None and value not in option.choices:
            choices = ", ".join(map(str, option.choices))
            raise ConfigError(f"option {name} of {scheme} must be one of {choices}, got {value!r}")
        checked[name] = value
    return checked


def _coerced(scheme: str, name: str, value: Any, default: Any) -> Any:
    """``value`` (as given, or as typed on a command line) in the type of the option's default."""
    kind = type(default)
    if kind is bool:
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if isinstance(value, bool) or str(value).lower() in words:
            return value if isinstance(value, bool) else words[str(value).lower()]
    elif not isinstance(value, bool):
        try:
            value = kind(value)
        except (TypeError, ValueError):
            pass
        else:
            if not (isinstance(value, float) and not math.isfinite(value)):
                return value
    raise ConfigError(f"option {name} of {scheme} must be a finite {kind.__name__}, got {value!r}")


def fast_paths_enabled(environ: Any = os.environ) -> bool:
    """Whether models take the fast paths (fused sublayers, replayed passes) by default:
    yes, unless ``LNREF_FAST=0`` (or ``off``)."""
    return environ.get("LNREF_FAST", "1").strip().lower() not in ("0", "off", "false", "no")


class Model(Staged):
    """A stack of one scheme's layers with its parameters (see the module docstring).

    ``fast`` (default: :func:`fast_paths_enabled`) lets passes take the fused sublayers and
    replay a repeated ``value_and_grad``; with it off, every pass is the readable composition
    on the tape. The two give the same function and gradients (tests hold them together).
    ``encoder``: for the decoder stack of an encoder-decoder model, its encoder stack, whose
    output is the decoder's memory (Admin profiles the decoder with it).
    """

    def __init__(self, config: Config, encoder: Model | None = None) -> None:
        self.config = config
        self.scheme = get_scheme(config.scheme)
        self.dtype = np.dtype(config.dtype)
        self.fast = fast_paths_enabled()
        self.replayer = Replayer()
        self.head_norms: set[str] = set()
        self.encoder = encoder
        seed = config.seed if config.role == "stack" else [config.seed, STACK_STREAMS[config.role]]
        rng = np.random.default_rng(seed)
        self.params = self._init_params(rng)
        self.groups = index_groups(self.params)
        initialize = getattr(self.scheme, "initialize", None)
        if initialize is not None:
            initialize(self, rng)

    # -- parameters --

    def _init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        cfg, dtype, scheme = self.config, self.dtype, self.scheme
        branch_names = ["attn"] + (["cross"] if cfg.cross_attention else []) + ["ffn"]
        declared_stack_norms = getattr(scheme, "stack_norms", None)
        stack_norms = declared_stack_norms(cfg) if declared_stack_norms else getattr(scheme, "STACK_NORMS", ())
        params: dict[str, np.ndarray] = {}

        def add_norm(name: str, width: int) -> None:
            params.update(_prefixed(name, nn.init_norm(cfg.norm, width, dtype)))

        if "embed_ln" in stack_norms:
            add_norm("embed_ln", cfg.d_model)
        for i in range(cfg.n_layers):
            prefix = f"layers.{i}."
            qk_params = QK_NORMS[cfg.qk_norm].init(cfg, dtype)
            params.update(_prefixed(prefix + "attn", nn.init_attention(rng, cfg.d_model, dtype)))
            params.update(_prefixed(prefix + "attn", qk_params))
            if cfg.cross_attention:
                params.update(_prefixed(prefix + "cross", nn.init_attention(rng, cfg.d_model, dtype)))
                params.update(_prefixed(prefix + "cross", {name: v.copy() for name, v in qk_params.items()}))
            params.update(_prefixed(prefix + "ffn", nn.init_ffn(rng, cfg.d_model, cfg.d_ff, dtype)))
            for name in [p.format(b) for b in branch_names for p in getattr(scheme, "NORMS", ())]:
                add_norm(prefix + name, cfg.d_model)
            for name in _layer_names(scheme, "layer_norms", i, branch_names, cfg):
                add_norm(prefix + name, cfg.d_model)
            for name in _layer_names(scheme, "head_norms", i, branch_names, cfg):
                add_norm(prefix + name, cfg.d_model // cfg.n_heads)
                self.head_norms.add(prefix + name)
            for name in _layer_names(scheme, "ffn_norms", i, branch_names, cfg):
                add_norm(prefix + name, cfg.d_ff)
            layer_params = getattr(scheme, "layer_params", None)
            if layer_params is not None:
                for name, value in layer_params(i, branch_names, cfg).items():
                    params[prefix + name] = np.asarray(value, dtype=dtype)
        for name in stack_norms:
            if name != "embed_ln":
                add_norm(name, cfg.d_model)
        return params

    @property
    def linear_params(self) -> set[str]:
        """Names of the parameters that only the sublayers' linear maps read."""
        linear = set(nn.ATTENTION_PARAMS) | set(nn.FFN_PARAMS)
        return {
            full
            for prefix, members in self.groups.items()
            if prefix.rpartition(".")[2] in ("attn", "cross", "ffn")
            for short, full in members
            if short in linear
        }

    def load(self, params: dict[str, Any]) -> None:
        """Replace every parameter; names, shapes and dtypes must match exactly."""
        self.params = self._checked_params(params)

    # -- inputs --

    def check_input(self, x: Any, memory: Any = None) -> None:
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
                raise ConfigError(f"memory must have shape ({x.shape[0]}, mem_len, {cfg.d_model}), got {memory.shape}")
            if memory.dtype != self.dtype or not np.isfinite(memory).all():
                raise ConfigError("memory must be finite and of the model's dtype")
        elif memory is not None:
            raise ConfigError("memory given but the model has no cross-attention")
        if cfg.causal and x.shape[1] < 1:
            raise ConfigError("causal attention needs seq >= 1")

    def sample_inputs(
        self, batch: int = 2, seq: int = 8, memory_len: int | None = None, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
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

    def stream_names(self, index: int) -> tuple[str, ...]:
        """Names of the arrays of the state entering layer ``index`` (the scheme declares them)."""
        return stream_names(self.scheme, index, self.config)

    @property
    def n_blocks(self) -> int:
        """The blocks of the staged model: its layers."""
        return int(self.config.n_layers)

    def layer_of(self, name: str) -> int | None:
        """The block (layer) whose parameter ``name`` is; None for a stack-level one."""
        return int(name.split(".")[1]) if name.startswith("layers.") else None

    def block_label(self, index: int) -> tuple[str, str]:
        """(name, place) of block ``index``: ("layers.3", "layer 3")."""
        return f"layers.{index}", f"layer {index}"

    # -- the stack, stage by stage --

    def run(
        self,
        params: dict[str, Any] | None = None,
        memory: Any = None,
        freeze: Freeze | None = None,
        **options: Any,
    ) -> Run:
        """A run over ``params`` (default: the model's); see :class:`lnref.views.Run`."""
        return Run(self, self.params if params is None else params, memory, freeze=freeze, **options)

    def layer_view(self, run: Run, index: int) -> Layer:
        return Layer(run, index)

    def embed(self, run: Run, x: Any) -> State:
        embed = getattr(self.scheme, "embed", None)
        if embed is None:
            return as_state(x)
        return self._checked_state("embed", lambda: embed(x, Stack(run, "embed")), np.shape(_value(x)))

    def layer(self, run: Run, index: int, state: State) -> State:
        view = run.layer_view(index)
        return self._checked_state(
            f"layer {index}", lambda: self.scheme.layer(_from_state(state), view), state[0].shape
        )

    def readout(self, run: Run, state: State) -> Tensor:
        readout = getattr(self.scheme, "readout", None)
        if readout is None:
            y = _from_state(state)
            return y if isinstance(y, Tensor) else Tensor(y)
        (y,) = self._checked_state(
            "readout", lambda: readout(_from_state(state), Stack(run, "readout")), state[0].shape
        )
        return y

    def _checked_state(self, stage: str, compute: Any, shape: tuple[int, ...]) -> State:
        """What a scheme's stage returns, as a state whose every stream has ``shape``. A scheme
        of one's own that breaks this, or raises, gets one line naming the stage."""
        origin = getattr(self.scheme, "__lnref_origin__", None)
        try:
            value = compute()
        except ValueError:
            raise
        except Exception as err:
            if origin is None:
                raise  # a built-in scheme's error is lnref's bug: keep its traceback
            raise ConfigError(f"{origin}: {stage} raised {one_line_error(err)}") from None
        streams = value if isinstance(value, tuple) else (value,)
        for stream in streams:
            if not isinstance(stream, (Tensor, np.ndarray)) or stream.shape != shape:
                got = f"shape {stream.shape}" if isinstance(stream, (Tensor, np.ndarray)) else type(stream).__name__
                where = stage if self.config.role == "stack" else f"{self.config.role} {stage}"
                raise ConfigError(
                    f"{origin or 'scheme ' + self.config.scheme}: {where} returned a stream of {got}, "
                    f"expected shape {shape}"
                )
        return as_state(value)

    # -- the public face --

    def __call__(self, x: Any, memory: Any = None) -> np.ndarray:
        self.check_input(x, memory)
        y, _ = self.forward(self.run(memory=memory), x)
        return y.value

    def hidden_states(self, x: Any, memory: Any = None) -> list[tuple[np.ndarray, ...]]:
        """Per layer, the arrays of the state entering it (index L: the last layer's output)."""
        self.check_input(x, memory)
        _, states = self.forward(self.run(memory=memory), x, keep_states=True)
        assert states is not None
        return [tuple(np.asarray(s.value if isinstance(s, Tensor) else s) for s in state) for state in states]

    def value_and_grad(self, x: Any, dy: Any, memory: Any = None) -> tuple[float, dict[str, np.ndarray]]:
        """loss = sum(y * dy) and its gradient for every parameter, plus "input" (and "memory").

        With ``fast`` on, a repeated pass with inputs of the same shapes replays the primitive
        calls of the first (``autograd/replay.py``), without the Python of the layers."""
        self.check_input(x, memory)
        return self._value_and_grad(x, dy, memory, self.fast)


def _value(x: Any) -> Any:
    return x.value if isinstance(x, Tensor) else x


def _from_state(state: State) -> Any:
    return state[0] if len(state) == 1 else state


def _layer_names(scheme: Any, kind: str, index: int, branches: list[str], config: Config) -> tuple[str, ...]:
    """The norms of one kind in layer ``index``: the scheme's ``layer_norms(index, branches,
    config)`` (likewise ``head_norms``, ``ffn_norms``) where it defines one, else its
    ``LAYER_NORMS`` (``HEAD_NORMS``, ``FFN_NORMS``)."""
    declared = getattr(scheme, kind, None)
    if declared is not None:
        return tuple(declared(index, branches, config))
    return tuple(getattr(scheme, kind.upper(), ()))


def _prefixed(prefix: str, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}.{name}": value for name, value in params.items()}
