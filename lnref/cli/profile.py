"""``lnref profile``: per-layer gradient and hidden-state probes, by scheme, depth and seed.

Only click and the shared options (``lnref.cli.options``) are imported here; the NumPy side
(``lnref.profile``, ``lnref.probes``) is imported when the command runs.
"""

from __future__ import annotations

import os

import click

from lnref.cli.options import COUNT, fail, input_errors, model_from_options, model_options, probe_forward
from lnref.cli.sweep import SweepRequest, echo, execute, load, sweep_options


def model_options_except(*replaced):
    """The shared model options of ``lnref.cli.options.model_options`` without ``replaced`` ones.

    Reusing the very option objects keeps names, defaults and help identical to the other
    commands; ``profile`` declares its own list-valued --scheme and --layers.
    """

    def collect():
        """Only carries the options."""

    model_options(collect)
    kept = [param for param in collect.__click_params__ if param.name not in replaced]

    def decorator(function):
        # click.option appends and click.command reverses, so appending the collected list
        # (already in that appended order) keeps the shared options in their usual order.
        function.__click_params__ = getattr(function, "__click_params__", []) + kept
        return function

    return decorator


@click.command()
@click.option(
    "--scheme",
    "scheme_list",
    default=None,
    metavar="LIST",
    help="Comma-separated schemes, e.g. post,pre,residual,b2t ('all' for every scheme). Required unless --from.",
)
@click.option(
    "--layers",
    "layer_list",
    default="6",
    show_default=True,
    metavar="N[,N...]",
    help="Number of layers; a comma list such as 6,12,18 also charts the last layer by depth.",
)
@model_options_except("scheme", "layers")
@click.option(
    "--seeds",
    type=COUNT,
    default=5,
    show_default=True,
    help="Models seeded --seed .. --seed+N-1; the output gives mean and spread over them.",
)
@click.option(
    "--stream",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Which stream of multi-stream states is measured (ResiDual: 0 = x_a, 1 = x_d).",
)
@click.option(
    "--metric",
    default="grad.ffn.w2",
    show_default=True,
    help="What the charts plot: grad.ffn.w2, grad.ffn, grad.attn, grad.cross, grad.norm_gain, "
    "grad.layer, hidden_grad_norm, hidden_norm, hidden_sq_norm_per_token, relative_change, "
    "cosine, ... (all listed in lnref.profile.METRICS).",
)
@click.option(
    "--stack",
    type=click.Choice(["encoder", "decoder"]),
    default="decoder",
    show_default=True,
    help="With --encoder-layers and --decoder-layers: which stack's layers are probed.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout instead of table and chart.")
@click.option(
    "--png", "png_path", default=None, metavar="FILE", help="Also draw the chart to a PNG (needs lnref[plot])."
)
@click.option(
    "--svg", "svg_path", default=None, metavar="FILE", help="Also draw the chart to an SVG (needs lnref[plot])."
)
@sweep_options
def profile(scheme_list, layer_list, seeds, stream, metric, stack, as_json, png_path, svg_path, **options):
    """Per-layer gradient and hidden-state norms of schemes at initialization.

    Per layer and scheme: weight-gradient norms (attention, FFN, norm gains), hidden-state
    norm and gradient norm, relative change and cosine between consecutive layers; mean
    and spread over seeds.

    Prints a table and a log-scale text chart of --metric (by layer, one marker per
    scheme), or JSON with --json. Progress goes to stderr. Each model probed is a run of the
    sweep: recorded as it finishes (--out), resumed, or rendered again with --from.
    """
    from lnref import profile as sweeps

    request = SweepRequest.pop(options)
    if metric not in sweeps.METRICS:
        fail(f"unknown metric {metric!r}; valid metrics: {', '.join(sweeps.METRICS)}")
    figures = _figures(sweeps, png_path, svg_path)
    if request.from_path is not None:
        with input_errors():
            sweep = sweeps.sweep_from_records(load("profile", request.from_path))
        if not any(sweep.has_metric(scheme, metric) for scheme in sweep.schemes):
            fail(f"metric {metric} exists in none of {', '.join(sweep.schemes)}")
        _output(sweeps, sweep, metric, as_json, figures)
        return
    if scheme_list is None:
        fail("Missing option '--scheme' (or --from).")
    with input_errors():
        schemes = sweeps.parse_schemes(scheme_list)
        depths = sweeps.parse_depths(layer_list)
        encoder_decoder = _encoder_decoder(options, stack)
        if encoder_decoder is not None:
            depths = (options[f"{stack}_layers"],)

    # Build every scheme once before the sweep, so that a bad configuration fails in one
    # line before any work; the sweep then uses exactly the validated configuration. A scheme
    # of several that refuses a setting (T-Fixup, a --norm) is left out with a note.
    with input_errors():
        from lnref.model import refusal

        settings = {
            name: options[name] for name in ("norm", "qk_norm", "eps", "activation", "causal", "cross_attention")
        }
        refused = {scheme: refusal(scheme, **settings) for scheme in schemes} if len(schemes) > 1 else {}
        for scheme, why in refused.items():
            if why is not None:
                echo(f"note: {scheme} left out: {why}")
        schemes = tuple(scheme for scheme in schemes if refused.get(scheme) is None) or schemes
        build_options = None
        schemes_with_metric = []
        for scheme in schemes:
            model = model_from_options(scheme=scheme, layers=depths[0], **options)
            probe_forward(model)
            x, _, _ = model.sample_inputs(batch=1, seq=1)
            streams = len(model.embed(model.run(), x)) - (encoder_decoder is not None)  # less the carried target
            if stream >= streams:
                raise ValueError(
                    f"--stream {stream}: scheme {scheme} has {streams} stream(s) (valid: 0..{streams - 1})"
                )
            if metric in sweeps.model_metrics(model, None if encoder_decoder is None else stack):
                schemes_with_metric.append(scheme)
            build_options = model.config.to_dict()
    if not schemes_with_metric:
        hint = " (cross-attention metrics need --cross-attention)" if metric.startswith("grad.cross") else ""
        fail(f"metric {metric} exists in none of {', '.join(schemes)}{hint}")

    first_seed = options["seed"]
    tasks = sweeps.profile_tasks(
        schemes,
        depths,
        build_options,
        range(first_seed, first_seed + seeds),
        batch=options["batch"],
        seq=options["seq"],
        stream=stream,
        encoder_decoder=encoder_decoder,
    )
    sweep = sweeps.sweep_from_records(execute("profile", tasks, request))
    _output(sweeps, sweep, metric, as_json, figures)


def _encoder_decoder(options, stack):
    """(N, M, stack) when the options ask for encoder-decoder models, else None (and --stack,
    which only such a model has, must be left alone)."""
    from lnref.cli.options import encoder_decoder_depths

    depths = encoder_decoder_depths(
        options["encoder_layers"], options["decoder_layers"], options["causal"], options["cross_attention"]
    )
    given = click.get_current_context().get_parameter_source
    if not depths:
        if given("stack") == click.core.ParameterSource.COMMANDLINE:
            raise ValueError(
                "--stack picks a stack of an encoder-decoder model: give --encoder-layers and --decoder-layers"
            )
        return None
    if given("layer_list") == click.core.ParameterSource.COMMANDLINE:
        raise ValueError("--layers counts the layers of one stack; an encoder-decoder model takes none")
    return depths["encoder_layers"], depths["decoder_layers"], stack


def _figures(sweeps, png_path, svg_path):
    """[(path, format)] of the figures asked for, checked before anything runs."""
    from lnref.files import check_output_path, require_pyplot

    figures = [(path, fmt) for path, fmt in ((png_path, "png"), (svg_path, "svg")) if path is not None]
    if figures:
        try:
            require_pyplot()
        except ImportError as err:
            fail(str(err))
        if len(figures) == 2 and os.path.abspath(png_path) == os.path.abspath(svg_path):
            fail("--png and --svg name the same file")
        with input_errors():
            for path, fmt in figures:
                check_output_path(path, f"--{fmt}")
    return figures


def _output(sweeps, sweep, metric, as_json, figures):
    from lnref import profile_charts as charts

    with input_errors():
        for path, fmt in figures:
            charts.save_figure(sweep, metric, path, fmt)
            echo(f"wrote {path}")
    if as_json:
        click.echo(sweeps.sweep_to_json(sweep))
    else:
        click.echo(sweeps.format_table(sweep, metric))
        click.echo()
        click.echo(charts.text_charts(sweep, metric))
