"""Building a model: ``build`` from a scheme's name and options, ``from_config`` from a Config.
Either gives a model of one stack (``lnref.model.Model``) or an encoder-decoder model
(``lnref.encdec.EncoderDecoder``): the one place that knows both."""

from __future__ import annotations

import dataclasses
from typing import Any

from lnref.encdec import EncoderDecoder
from lnref.model import Config, Model
from lnref.staged import ConfigError


def build(
    scheme: str, n_layers: int | None = None, d_model: int = 16, n_heads: int = 2, d_ff: int = 64, **options: Any
) -> Model | EncoderDecoder:
    """A model of ``scheme`` with freshly initialized (seeded) parameters: a stack of ``n_layers``
    layers, or with ``encoder_layers=N, decoder_layers=M`` (and no ``n_layers``) an
    encoder-decoder model (``lnref.encdec.EncoderDecoder``).

    Options: norm (a kind of ``lnref.norms``: "layernorm", "rmsnorm"), activation (``lnref.nn.ACTIVATIONS``:
    "relu", "gelu", "gelu_tanh"), causal, cross_attention, eps, dtype ("float64" | "float32"), seed, post_fraction
    (Mix-LN), qk_norm (a variant of ``lnref.qk_norms``), options (the scheme's own, a dict).
    """
    unknown = set(options) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ConfigError(f"build: unknown option(s) {', '.join(sorted(unknown))}")
    encoder_layers, decoder_layers = options.pop("encoder_layers", 0), options.pop("decoder_layers", 0)
    if encoder_layers or decoder_layers or options.get("role") == "encoder-decoder":
        if n_layers is not None and n_layers != encoder_layers + decoder_layers:
            raise ConfigError("build: give n_layers for one stack, or encoder_layers and decoder_layers, not both")
        for flag in ("causal", "cross_attention"):
            if options.pop(flag, False):
                raise ConfigError(
                    f"build: an encoder-decoder model takes no {flag} option: its encoder attends both "
                    "ways, its decoder is causal and attends to the encoder's output"
                )
        depths = {"encoder_layers": encoder_layers, "decoder_layers": decoder_layers}
        options.setdefault("role", "encoder-decoder")
        return EncoderDecoder(
            Config(scheme, encoder_layers + decoder_layers, d_model, n_heads, d_ff, **depths, **options)
        )
    if n_layers is None:
        raise ConfigError("build: give n_layers (a model of one stack), or encoder_layers and decoder_layers")
    return Model(Config(scheme, n_layers, d_model, n_heads, d_ff, **options))


def from_config(config: Config) -> Model | EncoderDecoder:
    """The model a Config describes: one stack, or an encoder-decoder model."""
    if config.role == "encoder-decoder":
        return EncoderDecoder(config)
    return Model(config)
