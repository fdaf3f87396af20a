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


ENTRY_POINT_GROUP = "lnref.schemes"  # installed packages register schemes under this group


class SchemeError(ValueError):
    """A scheme of one's own that cannot be used: the file, the module or what it defines."""


def register_scheme(name: str, module: ModuleType) -> None:
    """Make ``module`` (following the protocol above) the scheme ``name`` for this process."""
    if name in SCHEMES:
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
    installed = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if installed:
        return _loaded(name, lambda: installed[0].load(), f"installed scheme {name}")
    if name.endswith(".py") or os.sep in name or "/" in name:
        return _loaded(name, lambda: _module_from_file(name), f"scheme file {name}")
    if "." in name and all(part.isidentifier() for part in name.split(".")):
        return _loaded(name, lambda: import_module(name), f"scheme module {name}")
    raise ValueError(
        f"unknown scheme {name!r}; valid schemes: {', '.join(scheme_names())} "
        "(or a path to a scheme file, or an importable scheme module)"
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


def stream_names(scheme: ModuleType, index: int) -> tuple[str, ...]:
    """Names of the arrays of the state entering layer ``index`` of ``scheme`` (a module):
    its ``streams(index)``, else its ``STREAMS``, else the one residual stream ("x",)."""
    streams = getattr(scheme, "streams", None)
    if streams is not None:
        return tuple(streams(index))
    return tuple(getattr(scheme, "STREAMS", ("x",)))
