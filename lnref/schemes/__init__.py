"""One module per LayerNorm placement; each is the paper's equations in code.

A scheme module defines:
    SUMMARY      the one-line equation (``lnref schemes`` prints it) and PAPER, its source
    NORMS        per-branch norm names, "{}" standing for the branch (attn, cross, ffn)
    LAYER_NORMS  further per-layer norms; STACK_NORMS: stack-level norms (final_ln, embed_ln)
    STREAMS      names of the arrays a multi-stream state carries (or ``streams(index)``);
                 one stream "x" when absent
    layer(x, layer)         one layer; the view ``layer`` gives its branches, norms and parameters
    embed(x, stack), readout(x, stack)   optional stack-level stages
    layer_params(index, branches, config)   optional extra per-layer parameters
    initialize(model, rng)  optional change to the initialization

``layer``, ``embed`` and ``readout`` compute on Tensors through primitives only (operators,
the view's norms and branches, ``lnref.autograd.ops``): a repeated gradient pass replays the
primitives they called (``lnref/autograd/replay.py``) without running them again.
"""

from importlib import import_module

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
)


def stream_names(scheme, index):
    """Names of the arrays of the state entering layer ``index`` of ``scheme`` (a module):
    its ``streams(index)``, else its ``STREAMS``, else the one residual stream ("x",)."""
    streams = getattr(scheme, "streams", None)
    if streams is not None:
        return tuple(streams(index))
    return tuple(getattr(scheme, "STREAMS", ("x",)))


def get_scheme(name):
    """The module of scheme ``name`` (ValueError listing the valid names if unknown)."""
    if name not in SCHEMES:
        raise ValueError(f"unknown scheme {name!r}; valid schemes: {', '.join(SCHEMES)}")
    return import_module(f"lnref.schemes.{name}")
