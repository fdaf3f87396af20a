"""What the commands share: the model options, finite floats, exit codes and one-line errors.

Only click and the light top of lnref are imported here; whatever needs NumPy is imported
inside the function that uses it, so that ``lnref --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from lnref import SCHEMES

if TYPE_CHECKING:
    from lnref.model import Model

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
ACTIVATION_NAMES = ("relu", "gelu", "gelu_tanh")  # lnref.nn.ACTIVATIONS, named here to keep --help light

Command = TypeVar("Command", bound=Callable[..., Any])


class FiniteFloat(click.ParamType):
    """A float that must be finite (click's FLOAT accepts 'nan' and 'inf')."""

    name = "float"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.positive and number <= 0:
            self.fail(f"{value!r} must be > 0", param, ctx)
        return number


FINITE = FiniteFloat()
POSITIVE = FiniteFloat(positive=True)
COUNT = click.IntRange(min=1)


def fail(message: str) -> NoReturn:
    """One clear line on stderr and exit code 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """Turn bad input found past click's parsing into one line and exit code 2."""
    try:
        yield
    except (ValueError, OSError, KeyError) as err:
        fail(str(err) if not isinstance(err, KeyError) else f"missing {err}")


def model_options(function: Command) -> Command:
    """The options that describe a model, shared by every command that builds one."""
    options = [
        click.option("--scheme", type=click.Choice(SCHEMES), required=True, help="LN placement."),
        click.option("--layers", type=COUNT, default=6, show_default=True, help="Number of layers."),
        click.option("--d-model", type=COUNT, default=16, show_default=True),
        click.option("--heads", type=COUNT, default=2, show_default=True),
        click.option("--d-ff", type=COUNT, default=64, show_default=True),
        click.option("--seq", type=COUNT, default=8, show_default=True, help="Sequence length."),
        click.option("--batch", type=COUNT, default=2, show_default=True),
        click.option("--norm", type=click.Choice(["layernorm", "rmsnorm"]), default="layernorm", show_default=True),
        click.option(
            "--activation",
            type=click.Choice(ACTIVATION_NAMES),
            default="relu",
            show_default=True,
            help="FFN activation: gelu is the exact x Phi(x) (PyTorch's default), gelu_tanh its tanh approximation.",
        ),
        click.option("--causal", is_flag=True, help="Causal mask in self-attention."),
        click.option("--cross-attention", is_flag=True, help="Decoder stack: cross-attention to a fixed memory."),
        click.option("--eps", type=POSITIVE, default=1e-5, show_default=True, help="Norm epsilon."),
        click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option(
            "--post-fraction", type=FINITE, default=0.25, show_default=True, help="Mix-LN: share of Post-LN layers."
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def model_from_options(
    scheme: str,
    layers: int,
    d_model: int,
    heads: int,
    d_ff: int,
    norm: str,
    activation: str,
    causal: bool,
    cross_attention: bool,
    eps: float,
    dtype: str,
    seed: int,
    post_fraction: float,
    **_: Any,
) -> Model:
    """The model that :func:`model_options` describe (the other options are ignored)."""
    from lnref.model import build

    return build(
        scheme,
        layers,
        d_model,
        heads,
        d_ff,
        norm=norm,
        activation=activation,
        causal=causal,
        cross_attention=cross_attention,
        eps=eps,
        dtype=dtype,
        seed=seed,
        post_fraction=post_fraction,
    )


def compile_if_cold(options: Mapping[str, Any]) -> None:
    """On a first run (the kernels this model runs first are neither compiled nor cached for
    its dtype and norm): one line on stderr, then those kernels compiled, on two cores where
    there are two."""
    from lnref.autograd.kernels.warmup import compile_cache_is_cold, compile_first_run_kernels

    if compile_cache_is_cold(options["dtype"], options["norm"]):
        click.echo("note: compiling kernels (first run only; cached afterwards)", err=True)
        compile_first_run_kernels(options["dtype"], options["norm"])


def warn_float32(dtype: str) -> None:
    """A note on stderr that finite differences in float32 are far less precise."""
    if dtype == "float32":
        click.echo(
            "note: float32 requested; finite differences are far less precise than in "
            "float64 (the default), tolerances are loosened accordingly",
            err=True,
        )
