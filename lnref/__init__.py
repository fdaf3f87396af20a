"""lnref: every LayerNorm placement of the Transformer literature, as a readable NumPy
reference with its own autodiff, a finite-difference gradient checker and the papers'
gradient claims checked numerically.

    import lnref
    model = lnref.build("residual", n_layers=48, d_model=16, n_heads=2, d_ff=64, seed=0)
    y = model(x)
    loss, grads = model.value_and_grad(x, dy)

Attributes are imported on first use so that ``import lnref`` (and ``lnref --help``)
stays instant: Numba is loaded only when a model runs.
"""

__version__ = "0.1.0"

from lnref.schemes import SCHEMES  # noqa: E402  (a tuple of names; imports nothing heavy)

_LAZY = {
    "build": "lnref.building",
    "Model": "lnref.model",
    "Config": "lnref.model",
    "ConfigError": "lnref.model",
    "load_golden": "lnref.golden",
    "from_golden": "lnref.golden",
}

__all__ = ["SCHEMES", "__version__", *_LAZY]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lnref' has no attribute {name!r}")
