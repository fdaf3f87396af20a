"""One module per LayerNorm placement; each is the paper's equations in code.

The scheme protocol. A scheme module defines:
    SUMMARY      the one-line equation (``lnref schemes`` prints it) and PAPER, its source
    layer(x, layer)   one layer; the view ``layer`` (``lnref/views.py``) gives its branches
                 (``layer.branches``: (name, function) for attn, cross in decoder stacks, ffn),
                 its norms (``layer.norm(name, x)``), its parameters (``layer.param(name)``) and
                 the sublayers with optional pieces (``layer.self_attention(x, q_norm=...)``)
and may define:
    NORMS        per-branch norm names, "{}" standing for the branch (attn, cross, ffn)
    LAYER_NORMS  further per-layer norms over d_model features
    HEAD_NORMS   per-layer norms over each head's d_model / n_heads features (q, k, v norms)
    FFN_NORMS    per-layer norms over the FFN's d_ff hidden features (``layer.ffn(x, hidden_norm=...)``)
    layer_norms(index, branches, config), head_norms(...), ffn_norms(...)   the same names
                 for layer ``index`` alone, where they depend on the layer or on an option
                 (they replace LAYER_NORMS, HEAD_NORMS, FFN_NORMS)
    STACK_NORMS  stack-level norms (final_ln, embed_ln: the latter comes first), or
                 ``stack_norms(config)`` where they depend on an option
    STREAMS      names of the arrays a multi-stream state carries (or ``streams(index)``);
                 one stream "x" when absent
    embed(x, stack), readout(x, stack)   the stack-level stages (default: the identity)
    layer_params(index, branches, config)   extra per-layer parameters, name -> initial array
    initialize(model, rng)  a change to the initialization, after every parameter exists
    OPTIONS      the scheme's own options: name -> Option(default, choices, help); a layer reads
                 one as ``layer.option(name)``, ``initialize`` as ``model.config.option(name)``
    REFUSES      the model options the scheme cannot take, name -> why ("norm": a scheme with
                 no norm anywhere; "qk_norm"): a configuration that sets one is refused

``layer``, ``embed`` and ``readout`` compute on Tensors through primitives only (operators,
the view's norms and branches, ``lnref.autograd.ops``), and everything else they compute is a
constant of the configuration: a repeated gradient pass replays the primitives they called
(``lnref/autograd/replay.py``) without running them again.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import Any, NamedTuple

SCHEMES = (
    "post",
    "pre",
    "residual",
    "b2t",
    "admin",
    "deepnorm",
    "sandwich",
    "peri",
    "mixln",
    "dlcl",
    "rezero",
    "reordered",
    "subln",
    "hybridnorm",
    "normformer",
    "lns",
    "layerscale",
    "parallel",
    "tfixup",
    "dslm",
)

_REGISTERED: dict[str, ModuleType] = {}


class Option(NamedTuple):
    """One of a scheme's own options: its default, the values it takes (None: any number of
    the default's type) and what it means."""

    default: Any
    choices: tuple[Any, ...] | None
    help: str


def options_of(scheme: ModuleType) -> dict[str, Option]:
    return dict(getattr(scheme, "OPTIONS", {}))


def refusals_of(scheme: ModuleType) -> dict[str, str]:
    return dict(getattr(scheme, "REFUSES", {}))


def register_scheme(name: str, module: ModuleType) -> None:
    """Make ``module`` (following the protocol above) the scheme ``name`` for this process."""
    if name in SCHEMES:
        raise ValueError(f"scheme {name!r} is built in")
    _REGISTERED[name] = module


def scheme_names() -> tuple[str, ...]:
    """The built-in schemes, then those registered in this process."""
    return SCHEMES + tuple(_REGISTERED)


def is_scheme(name: str) -> bool:
    return name in SCHEMES or name in _REGISTERED


def get_scheme(name: str) -> ModuleType:
    """The module of scheme ``name`` (ValueError listing the valid names if unknown)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in SCHEMES:
        raise ValueError(f"unknown scheme {name!r}; valid schemes: {', '.join(scheme_names())}")
    return import_module(f"lnref.schemes.{name}")


def stream_names(scheme: ModuleType, index: int) -> tuple[str, ...]:
    """Names of the arrays of the state entering layer ``index`` of ``scheme`` (a module):
    its ``streams(index)``, else its ``STREAMS``, else the one residual stream ("x",)."""
    streams = getattr(scheme, "streams", None)
    if streams is not None:
        return tuple(streams(index))
    return tuple(getattr(scheme, "STREAMS", ("x",)))
