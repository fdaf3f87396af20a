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
    STREAMS      names of the arrays a multi-stream state carries (or ``streams(index, config)``,
                 config None for the scheme's default options); one stream "x" when absent
    embed(x, stack), readout(x, stack)   the stack-level stages (default: the identity)
    layer_params(index, branches, config)   extra per-layer parameters, name -> initial array
    initialize(model, rng)  a change to the initialization, after every parameter exists
    OPTIONS      the scheme's own options: name -> Option(default, choices, help); a layer reads
                 one as ``layer.option(name)``, ``initialize`` as ``model.config.option(name)``
    REFUSES      the model options the scheme cannot take, name -> why ("norm": a scheme with
                 no norm anywhere; "qk_norm"): a configuration that sets one is refused
    project(params, config)   puts the parameters back on the set the scheme keeps them in,
                 in place (nGPT's unit-norm weight vectors): ``initialize`` calls it, and an
                 optimizer after every step (``lnref train`` does)
    UNJUDGED     model settings whose golden files no port can match, (name, value) -> why (a
                 gradient zero by structure, alone in its comparison group): the conformance
                 suite leaves those cases out

An alias (:data:`ALIASES`) is no scheme of its own: a name for a scheme with model settings
preset (Gemma 2 is ``sandwich`` with ``norm="rmsnorm_plus_one"``); it builds like a scheme.

``layer``, ``embed`` and ``readout`` compute on Tensors through primitives only (operators,
the view's norms and branches, ``lnref.autograd.ops``), and everything else they compute is a
constant of the configuration: a repeated gradient pass replays the primitives they called
(``lnref/autograd/replay.py``) without running them again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import traceback
from importlib import import_module
from importlib.metadata import entry_points
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
    "siamese",
    "ngpt",
    "gpas",
    "hyper",
    "mhc",
    "denseformer",
)

_REGISTERED: dict[str, ModuleType] = {}


class Option(NamedTuple):
    """One of a scheme's own options: its default, the values it takes (None: any number of
    the default's type) and what it means."""

    default: Any
    choices: tuple[Any, ...] | None
    help: str


def places_norms(scheme: ModuleType) -> bool:
    """Whether the scheme places any norm (a scheme with none, like ReZero, takes no --norm)."""
    names = ("NORMS", "LAYER_NORMS", "HEAD_NORMS", "FFN_NORMS", "STACK_NORMS")
    functions = ("layer_norms", "head_norms", "ffn_norms", "stack_norms")
    return any(getattr(scheme, name, ()) for name in names) or any(hasattr(scheme, name) for name in functions)


def options_of(scheme: ModuleType) -> dict[str, Option]:
    return dict(getattr(scheme, "OPTIONS", {}))


def refusals_of(scheme: ModuleType) -> dict[str, str]:
    return dict(getattr(scheme, "REFUSES", {}))


class Alias(NamedTuple):
    """A name for a built-in scheme with model settings preset (``lnref.build``'s keywords)."""

    base: str
    settings: dict[str, Any]
    what: str
    paper: str


ALIASES = {
    "gemma2": Alias(
        "sandwich",
        {"norm": "rmsnorm_plus_one", "eps": 1e-6},
        "Sandwich-LN with RMSNorm scaled by (1 + gamma), gamma_0 = 0, eps 1e-6; the embedding times "
        "sqrt(d) (lnref's stack starts after it: scale the input); attention logit soft-capping "
        "(tanh, 50) is left out",
        "Gemma Team 2024, Gemma 2: Improving Open Language Models at a Practical Size",
    ),
    "gemma3": Alias(
        "sandwich",
        {"norm": "rmsnorm_plus_one", "eps": 1e-6, "qk_norm": "head"},
        "Gemma 2's block with a norm on each head's q and k (the same (1 + gamma) RMSNorm); "
        "the embedding times sqrt(d) (scale the input)",
        "Gemma Team 2025, Gemma 3 Technical Report",
    ),
    "skipinit": Alias(
        "rezero",
        {},
        "ReZero: x <- x + alpha S(x), one scalar alpha per layer, alpha_0 = 0, no norm",
        "De and Smith 2020, Batch Normalization Biases Residual Blocks Towards the Identity Function",
    ),
}

ENTRY_POINT_GROUP = "lnref.schemes"  # installed packages register schemes under this group


class SchemeError(ValueError):
    """A scheme of one's own that cannot be used: the file, the module or what it defines."""


def register_scheme(name: str, module: ModuleType) -> None:
    """Make ``module`` (following the protocol above) the scheme ``name`` for this process."""
    if name in SCHEMES or name in ALIASES:
        raise ValueError(f"scheme {name!r} is built in")
    check_protocol(module, name)
    _REGISTERED[name] = module


def scheme_names() -> tuple[str, ...]:
    """The built-in schemes, those registered in this process, and those installed packages
    declare under the entry-point group ``lnref.schemes`` (named, not imported)."""
    installed = tuple(sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)))
    return tuple(dict.fromkeys(SCHEMES + tuple(_REGISTERED) + installed))


def is_scheme(name: str) -> bool:
    try:
        get_scheme(name)
    except ValueError:
        return False
    return True


def get_scheme(name: str) -> ModuleType:
    """The module of scheme ``name``: a built-in name, a registered or installed name, a path to
    a Python file (``./my_scheme.py``) or an importable module (``mypkg.my_scheme``). A
    ValueError names the valid schemes, or says in one line what is wrong with one's own."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in SCHEMES:
        return import_module(f"lnref.schemes.{name}")
    if name in ALIASES:
        return import_module(f"lnref.schemes.{ALIASES[name].base}")
    installed = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if installed:
        return _loaded(name, lambda: installed[0].load(), f"installed scheme {name}")
    if name.endswith(".py") or os.sep in name or "/" in name:
        return _loaded(name, lambda: _module_from_file(name), f"scheme file {name}")
    if "." in name and all(part.isidentifier() for part in name.split(".")):
        return _loaded(name, lambda: import_module(name), f"scheme module {name}")
    raise ValueError(
        f"unknown scheme {name!r}; valid schemes: {', '.join(scheme_names())}; aliases: "
        f"{', '.join(ALIASES)} (or a path to a scheme file, or an importable scheme module)"
    )


def _loaded(name: str, load: Any, origin: str) -> ModuleType:
    try:
        module = load()
    except SchemeError:
        raise
    except SyntaxError as err:
        raise SchemeError(f"{origin}: syntax error at line {err.lineno}: {err.msg}") from None
    except Exception as err:  # the user's code: one line, whatever it raised
        raise SchemeError(f"{origin} cannot be loaded: {one_line_error(err)}") from None
    module.__lnref_origin__ = origin
    check_protocol(module, origin)
    _REGISTERED[name] = module
    return module


def _module_from_file(path: str) -> ModuleType:
    if not os.path.isfile(path):
        raise SchemeError(f"scheme file {path} does not exist")
    absolute = os.path.abspath(path)
    module_name = "lnref_scheme_" + hashlib.sha256(absolute.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, absolute)
    if spec is None or spec.loader is None:
        raise SchemeError(f"scheme file {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # (dataclasses and pickling look modules up by name)
    spec.loader.exec_module(module)
    return module


def one_line_error(err: BaseException) -> str:
    """``Type: message (file:line)`` of the innermost frame outside lnref, for errors raised by
    code of one's own."""
    place = ""
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if f"{os.sep}lnref{os.sep}" not in frame.filename:
            place = f" ({os.path.basename(frame.filename)}:{frame.lineno})"
            break
    return f"{type(err).__name__}: {err}{place}".replace("\n", " ")


_TUPLES_OF_NAMES = ("NORMS", "LAYER_NORMS", "HEAD_NORMS", "FFN_NORMS", "STACK_NORMS", "STREAMS")
_FUNCTIONS = (
    "embed",
    "readout",
    "layer_params",
    "initialize",
    "streams",
    "layer_norms",
    "head_norms",
    "ffn_norms",
    "stack_norms",
    "project",
)


def check_protocol(module: ModuleType, origin: str) -> None:
    """Raise SchemeError naming the first thing ``module`` gets wrong of the scheme protocol."""
    layer = getattr(module, "layer", None)
    if layer is None:
        raise SchemeError(f"{origin} defines no layer(x, layer) function")
    if not callable(layer):
        raise SchemeError(f"{origin}: layer is not a function")
    try:
        inspect.signature(layer).bind(None, None)
    except TypeError:
        raise SchemeError(f"{origin}: layer must take two arguments, (x, layer)") from None
    for name in _FUNCTIONS:
        if hasattr(module, name) and not callable(getattr(module, name)):
            raise SchemeError(f"{origin}: {name} is not a function")
    for name in _TUPLES_OF_NAMES:
        value = getattr(module, name, ())
        if isinstance(value, str) or not all(isinstance(item, str) for item in value):
            raise SchemeError(f"{origin}: {name} must be a tuple of names, got {value!r}")
    for name, kind in (("OPTIONS", Option), ("REFUSES", str)):
        value = getattr(module, name, {})
        if not isinstance(value, dict) or not all(isinstance(v, kind) for v in value.values()):
            raise SchemeError(f"{origin}: {name} must be a dict of {kind.__name__}")


def stream_names(scheme: ModuleType, index: int, config: Any = None) -> tuple[str, ...]:
    """Names of the arrays of the state entering layer ``index`` of ``scheme`` (a module) in a
    model of ``config`` (None: the scheme's default options): its ``streams(index, config)``,
    else its ``STREAMS``, else the one residual stream ("x",)."""
    streams = getattr(scheme, "streams", None)
    if streams is not None:
        return tuple(streams(index, config))
    return tuple(getattr(scheme, "STREAMS", ("x",)))
