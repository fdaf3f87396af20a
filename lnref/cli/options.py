"""What the commands share: the model options, finite floats, exit codes and one-line errors.

Only click and the light top of lnref are imported here; whatever needs NumPy is imported
inside the function that uses it, so that ``lnref --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from lnref import SCHEMES

if TYPE_CHECKING:
    from lnref.encdec import EncoderDecoder
    from lnref.model import Model

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

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


class SchemeName(click.ParamType):
    """A built-in scheme's name, or one's own: a path to a scheme file or an importable module
    (loaded when the command runs, never for ``--help``)."""

    name = "scheme"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(SCHEMES) + "|FILE.py|MODULE]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from lnref.schemes import get_scheme

        try:
            get_scheme(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)
        return str(value)


class LazyChoice(click.Choice):
    """A choice among the keys of a registry ("module:NAME"), imported only when a value is
    checked or the command's help is shown: ``lnref --help`` stays free of the engine."""

    def __init__(self, registry: str) -> None:
        super().__init__(())
        self.registry = registry

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        module, _, name = self.registry.partition(":")
        return tuple(getattr(importlib.import_module(module), name))

    @choices.setter
    def choices(self, _: Any) -> None:
        pass


def _scheme_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    options = {}
    for value in values:
        name, equals, setting = value.partition("=")
        if not equals or not name:
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", ctx, param)
        options[name.strip()] = setting.strip()
    return options


def model_options(function: Command | None = None, *, dtypes: tuple[str, ...] = ("float64", "float32")) -> Any:
    """The options that describe a model, shared by every command that builds one: as a
    decorator, ``@model_options``; with more --dtype choices, ``@model_options(dtypes=...)``."""
    if function is None:
        return lambda command: _with_model_options(command, dtypes)
    return _with_model_options(function, dtypes)


def _with_model_options(function: Command, dtypes: tuple[str, ...]) -> Command:
    options = [
        click.option(
            "--scheme",
            type=SchemeName(),
            required=True,
            help="LN placement: a built-in name, a scheme file of one's own, or a module.",
        ),
        click.option("--layers", type=COUNT, default=6, show_default=True, help="Number of layers."),
        click.option(
            "--encoder-layers",
            type=COUNT,
            default=None,
            help="With --decoder-layers: an encoder-decoder model of this many encoder layers (in place of --layers).",
        ),
        click.option(
            "--decoder-layers",
            type=COUNT,
            default=None,
            help="With --encoder-layers: the decoder's layers (causal, attending to the encoder's output).",
        ),
        click.option("--d-model", type=COUNT, default=16, show_default=True),
        click.option("--heads", type=COUNT, default=2, show_default=True),
        click.option("--d-ff", type=COUNT, default=64, show_default=True),
        click.option("--seq", type=COUNT, default=8, show_default=True, help="Sequence length."),
        click.option(
            "--source-len", type=COUNT, default=None, help="An encoder-decoder model's source length (default: --seq)."
        ),
        click.option("--batch", type=COUNT, default=2, show_default=True),
        click.option(
            "--norm",
            type=LazyChoice("lnref.norms:NORM_KINDS"),
            default="layernorm",
            show_default=True,
            help="The kind of every norm the scheme places.",
        ),
        click.option(
            "--activation",
            type=LazyChoice("lnref.nn:ACTIVATIONS"),
            default="relu",
            show_default=True,
            help="FFN activation: gelu is the exact x Phi(x) (PyTorch's default), gelu_tanh its tanh approximation.",
        ),
        click.option(
            "--qk-norm",
            type=LazyChoice("lnref.qk_norms:QK_NORMS"),
            default="none",
            show_default=True,
            help="Normalize the queries and keys of every attention.",
        ),
        click.option(
            "--option",
            "options",
            multiple=True,
            callback=_scheme_options,
            metavar="NAME=VALUE",
            help="One of the scheme's own options (lnref schemes --json lists them); repeatable.",
        ),
        click.option("--causal", is_flag=True, help="Causal mask in self-attention."),
        click.option("--cross-attention", is_flag=True, help="Decoder stack: cross-attention to a fixed memory."),
        click.option("--eps", type=POSITIVE, default=1e-5, show_default=True, help="Norm epsilon."),
        click.option("--dtype", type=click.Choice(list(dtypes)), default="float64", show_default=True),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option(
            "--post-fraction", type=FINITE, default=0.25, show_default=True, help="Mix-LN: share of Post-LN layers."
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def probe_forward(model: Model) -> None:
    """One small forward pass, so that a scheme of one's own whose layer returns the wrong
    shape or raises fails here in one line (exit 2), before any work starts."""
    x, _, memory = model.sample_inputs(batch=1, seq=2)
    model(*x) if isinstance(x, tuple) else model(x, memory)  # an encoder-decoder model: (source, target)


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
    qk_norm: str = "none",
    options: Mapping[str, Any] | None = None,
    encoder_layers: int | None = None,
    decoder_layers: int | None = None,
    **_: Any,
) -> Model | EncoderDecoder:
    """The model that :func:`model_options` describe (the other options are ignored): one stack
    of ``layers``, or an encoder-decoder model of ``encoder_layers`` and ``decoder_layers``."""
    from lnref.building import build

    depths = encoder_decoder_depths(encoder_layers, decoder_layers, causal, cross_attention)
    return build(
        scheme,
        None if depths else layers,
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
        qk_norm=qk_norm,
        options=dict(options or {}),
        **depths,
    )


def encoder_decoder_depths(
    encoder_layers: int | None, decoder_layers: int | None, causal: bool = False, cross_attention: bool = False
) -> dict[str, int]:
    """{"encoder_layers": N, "decoder_layers": M} when the options ask for an encoder-decoder
    model, {} when they ask for one stack; ValueError for options that cannot go together."""
    if encoder_layers is None and decoder_layers is None:
        if _given("source_len"):
            raise ValueError("--source-len is the source length of an encoder-decoder model: give --encoder-layers")
        return {}
    if encoder_layers is None or decoder_layers is None:
        raise ValueError("--encoder-layers and --decoder-layers go together: an encoder-decoder model needs both")
    if _given("layers"):
        raise ValueError("--layers counts the layers of one stack; an encoder-decoder model takes none")
    if causal or cross_attention:
        raise ValueError(
            "an encoder-decoder model sets --causal and --cross-attention itself: its encoder attends both "
            "ways, its decoder is causal and attends to the encoder's output"
        )
    return {"encoder_layers": encoder_layers, "decoder_layers": decoder_layers}


def _given(name: str) -> bool:
    """Whether the running command's option ``name`` was given on its command line."""
    context = click.get_current_context(silent=True)
    if context is None or name not in context.params:
        return False
    return context.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)


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
