"""``lnref profile``: per-layer probes swept over schemes, depths and seeds, and their output.

The numbers all come from :mod:`lnref.probes` (the same functions the proofs use); this
module only runs the sweep and presents it:

    run_sweep(schemes, depths, build_options, seeds, ...)  -> Sweep
    profile_tasks(...), sweep_from_records(records)   the same as sweep tasks (``lnref.sweep``)
    format_table(sweep)                   compact per-layer table, mean and spread over seeds
    text_charts(sweep, metric)            pure-text charts, log-scale y, one marker per scheme
    sweep_to_json(sweep)                  one JSON document
    save_figure(sweep, metric, path, fmt) PNG / SVG with matplotlib (the ``lnref[plot]`` extra)

Indexing (see :mod:`lnref.probes`): hidden-state metrics have one value per state x_0..x_L
(x_l enters layer l, x_L leaves the last layer); weight-gradient metrics and the transition
metrics (relative change, cosine) have one value per layer 0..L-1.
"""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np

from lnref import SCHEMES, probes
from lnref.files import check_output_path as check_output_path  # kept importable from here: see below
from lnref.files import require_pyplot, write_figure
from lnref.schemes import get_scheme
from lnref.sweep import driver
from lnref.sweep.backends import SerialExecutor
from lnref.sweep.kinds import Kind
from lnref.sweep.progress import Progress
from lnref.sweep.task import grid

DEFAULT_METRIC = "grad.ffn.w2"

# Every metric a LayerProfile can hold, with its label; which ones a model has depends on
# its parameters (no "grad.cross" without cross-attention, no "grad.norm_gain" in ReZero).
METRIC_LABELS = {
    "grad.ffn.w2": "||dL/dW2||_F, FFN output weight",
    "grad.ffn.w1": "||dL/dW1||_F, FFN input weight",
    "grad.ffn": "||dL/d(W1, W2)||_F, FFN weights",
    "grad.attn": "||dL/d(Wq, Wk, Wv, Wo)||_F, self-attention",
    "grad.attn.wq": "||dL/dWq||_F, self-attention",
    "grad.attn.wk": "||dL/dWk||_F, self-attention",
    "grad.attn.wv": "||dL/dWv||_F, self-attention",
    "grad.attn.wo": "||dL/dWo||_F, self-attention",
    "grad.cross": "||dL/d(Wq, Wk, Wv, Wo)||_F, cross-attention",
    "grad.cross.wq": "||dL/dWq||_F, cross-attention",
    "grad.cross.wk": "||dL/dWk||_F, cross-attention",
    "grad.cross.wv": "||dL/dWv||_F, cross-attention",
    "grad.cross.wo": "||dL/dWo||_F, cross-attention",
    "grad.norm_gain": "||dL/dgamma||_F, the layer's norm gains",
    "grad.layer": "||dL/dtheta_l||_F, every parameter of the layer",
    "hidden_grad_norm": "||dL/dx_l||_F, hidden-state gradient",
    "hidden_norm": "||x_l||_F, hidden-state norm",
    "hidden_sq_norm_per_token": "mean_i ||x_l,i||^2, per-token squared norm",
    "relative_change": "||x_l+1 - x_l||_F / ||x_l||_F",
    "cosine": "mean_i cos(x_l,i, x_l+1,i)",
}
METRICS = tuple(METRIC_LABELS)

# Table columns: header -> metric; the charted metric is added when it is not among them.
_TABLE_COLUMNS = (
    ("attn", "grad.attn"),
    ("cross", "grad.cross"),
    ("ffn", "grad.ffn"),
    ("gain", "grad.norm_gain"),
    ("|dL/dx|", "hidden_grad_norm"),
    ("|x|", "hidden_norm"),
    ("rel.chg", "relative_change"),
    ("cos", "cosine"),
)
# Eleven colours and filled markers for the figures: tab10 and black, so no two schemes share.
_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#000000",
)
_PLOT_MARKERS = "os^Dv<>pPXh"
_MARKERS = "ox+#@%&=~^v"  # one per scheme; "*" marks points where several coincide
_OVERLAP = "*"


# ----- parsing ----------------------------------------------------------------------------


def parse_schemes(text):
    """A comma list of scheme names ("all" for every scheme) -> tuple, in the given order.

    Raises ValueError naming the first unknown entry and the valid names.
    """
    names = [part.strip() for part in str(text).split(",")]
    if any(not name for name in names):
        raise ValueError(f"--scheme {text!r} has an empty entry; give a comma list such as post,pre")
    schemes = []
    for name in names:
        expanded = SCHEMES if name == "all" else (name,)
        for scheme in expanded:
            if scheme not in SCHEMES:
                get_scheme(scheme)  # a scheme of one's own: ValueError, naming what is wrong with it
            if scheme not in schemes:
                schemes.append(scheme)
    return tuple(schemes)


def parse_depths(text):
    """ "18" or a comma list "6,12,18" -> tuple of distinct integers >= 1, in the given order."""
    depths = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"--layers {text!r}: each depth must be an integer >= 1")
        if int(part) not in depths:
            depths.append(int(part))
    return tuple(depths)


def metric_of_kinds(kinds):
    """The metric names a model with these weight kinds has (see lnref.probes)."""
    return set(probes.STATE_FIELDS + probes.TRANSITION_FIELDS) | {f"grad.{kind}" for kind in kinds}


def model_metrics(model):
    """The metric names the probes report for ``model``, from its layer-0 parameter names."""
    prefix = "layers.0."
    names = [name[len(prefix) :] for name in model.params if name.startswith(prefix)]
    return metric_of_kinds(probes.layer_weight_kinds(names))


# ----- the sweep -------------------------------------------------------------------------------


class Sweep:
    """The probes of every (scheme, depth), summarized over the same seeds and inputs shape.

    ``build_options`` are the ``lnref.build`` keyword arguments shared by every model
    (d_model, n_heads, d_ff, norm, ...); ``results[(scheme, depth)]`` is a SeedSummary.
    """

    def __init__(self, schemes, depths, build_options, seeds, batch, seq, stream, results):
        self.schemes = tuple(schemes)
        self.depths = tuple(depths)
        self.build_options = dict(build_options)
        self.seeds = tuple(seeds)
        self.batch = batch
        self.seq = seq
        self.stream = stream
        self.results = results

    def has_metric(self, scheme, metric):
        return metric in self.results[(scheme, self.depths[0])].mean


def profile_tasks(schemes, depths, build_options, seeds, batch=2, seq=8, stream=0):
    """One sweep task per (depth, scheme, seed), in that nesting: each probes one model."""
    options = {k: v for k, v in build_options.items() if k not in ("scheme", "n_layers", "seed")}
    return grid(
        "profile",
        [
            {
                "build": dict(options, scheme=scheme, n_layers=depth, seed=int(seed)),
                "batch": batch,
                "seq": seq,
                "stream": stream,
            }
            for depth in depths
            for scheme in schemes
            for seed in seeds
        ],
    )


def run_profile_task(config):
    """The probes of one model (``probes.profile_over_seeds`` with its one seed), as plain data."""
    build_options = config["build"]
    summary = probes.profile_over_seeds(
        build_options, [build_options["seed"]], batch=config["batch"], seq=config["seq"], stream=config["stream"]
    )
    (profile,) = summary.profiles
    fields = {name: getattr(profile, name).tolist() for name in probes.STATE_FIELDS + probes.TRANSITION_FIELDS}
    return {
        "loss": float(profile.loss),
        **fields,
        "weight_grad_norms": {kind: norms.tolist() for kind, norms in profile.weight_grad_norms.items()},
    }


def _profile_from_result(config, result):
    arrays = {name: np.array(result[name], dtype=np.float64) for name in probes.STATE_FIELDS + probes.TRANSITION_FIELDS}
    return probes.LayerProfile(
        config["build"]["scheme"],
        config["build"]["n_layers"],
        config["stream"],
        result["loss"],
        **arrays,
        weight_grad_norms={kind: np.array(v, dtype=np.float64) for kind, v in result["weight_grad_norms"].items()},
    )


def _task_label(config):
    build_options = config["build"]
    return f"{build_options['scheme']}, {build_options['n_layers']} layers, seed {build_options['seed']}"


PROFILE_KIND = Kind("profile", run_profile_task, _task_label, lambda result: f"loss {result['loss']:.4g}")


def sweep_from_records(records):
    """The Sweep that ok ``records`` of profile tasks describe, taken in the order given (the
    grid's): schemes, depths and seeds in order of first appearance. ValueError when a
    (scheme, depth, seed) of that grid has no record, or the records disagree on the rest."""
    if not records:
        raise ValueError("no profile records")

    def shared(config):  # what every model of one table has in common
        rest = {k: v for k, v in config["build"].items() if k not in ("scheme", "n_layers", "seed")}
        return rest, config["batch"], config["seq"], config["stream"]

    configs = [record["config"] for record in records]
    options, batch, seq, stream = shared(configs[0])
    if any(shared(config) != (options, batch, seq, stream) for config in configs):
        raise ValueError("the profile records describe different model settings; one table needs one setting")
    cells = [(c["build"]["scheme"], c["build"]["n_layers"], c["build"]["seed"]) for c in configs]
    schemes, depths, seeds = (tuple(dict.fromkeys(cell[i] for cell in cells)) for i in range(3))
    profiles = {cell: _profile_from_result(c, r["result"]) for cell, c, r in zip(cells, configs, records)}
    grid_cells = ((scheme, depth, seed) for depth in depths for scheme in schemes for seed in seeds)
    missing = [cell for cell in grid_cells if cell not in profiles]
    if missing:
        scheme, depth, seed = missing[0]
        raise ValueError(f"{len(missing)} profile(s) missing, among them {scheme}, {depth} layers, seed {seed}")
    results = {
        (scheme, depth): probes.summarize([profiles[(scheme, depth, seed)] for seed in seeds], seeds)
        for depth in depths
        for scheme in schemes
    }
    return Sweep(schemes, depths, options, seeds, batch, seq, stream, results)


def run_sweep(schemes, depths, build_options, seeds, batch=2, seq=8, stream=0, progress=None):
    """Probe every scheme at every depth over ``seeds``, in this process.

    ``progress(message)`` is called once per model probed, with its timing.
    """
    tasks = profile_tasks(schemes, depths, build_options, seeds, batch, seq, stream)
    reporter = Progress("profile", progress) if progress is not None else None
    if reporter:
        reporter.start(len(tasks), 0)
    outcome = driver.run(tasks, SerialExecutor(), window=1, progress=reporter)
    if outcome.failed:
        raise RuntimeError(f"profile {_task_label(outcome.failed[0]['config'])}: {outcome.failed[0]['error']}")
    return sweep_from_records(outcome.records)


def describe(sweep, schemes=None):
    """One line naming the configuration (for titles and the table header)."""
    o = sweep.build_options
    schemes = tuple(schemes or sweep.schemes)
    if sorted(schemes) == sorted(SCHEMES):
        parts = [f"all {len(SCHEMES)} schemes"]
    else:
        parts = [" vs ".join(schemes) if len(schemes) <= 4 else ", ".join(schemes)]
    parts.append("decoder with cross-attention" if o.get("cross_attention") else "encoder")
    if o.get("causal"):
        parts.append("causal")
    parts.append(f"d_model={o.get('d_model')}, heads={o.get('n_heads')}, d_ff={o.get('d_ff')}")
    parts.append(f"{o.get('norm')}, {o.get('activation')}")
    if o.get("dtype", "float64") != "float64":
        parts.append(o["dtype"])
    if o.get("eps", 1e-5) != 1e-5:
        parts.append(f"eps={o['eps']:g}")
    if "mixln" in sweep.schemes:
        parts.append(f"Mix-LN post_fraction={o.get('post_fraction')}")
    if sweep.stream:
        parts.append(f"stream={sweep.stream}")
    parts.append(f"batch={sweep.batch}, seq={sweep.seq}")
    parts.append(_seeds_text(sweep.seeds))
    return "; ".join(parts)


def _seeds_text(seeds):
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"mean over {len(seeds)} seeds ({seeds[0]}-{seeds[-1]})"


# ----- JSON -----------------------------------------------------------------------------------


def sweep_to_dict(sweep):
    """Plain data: configuration and, per (scheme, depth), mean / std / sem of every metric.

    NaN (no spread with one seed, undefined cosine) becomes null.
    """
    results = []
    for depth in sweep.depths:
        for scheme in sweep.schemes:
            summary = sweep.results[(scheme, depth)]
            metrics = {
                name: {
                    "mean": _floats(summary.mean[name]),
                    "std": _floats(summary.std[name]),
                    "sem": _floats(summary.sem[name]),
                }
                for name in summary.mean
            }
            results.append(
                {
                    "scheme": scheme,
                    "n_layers": depth,
                    "loss": dict(zip(("mean", "std", "sem"), _floats(summary.loss))),
                    "metrics": metrics,
                }
            )
    return {
        "schemes": list(sweep.schemes),
        "depths": list(sweep.depths),
        "seeds": list(sweep.seeds),
        "batch": sweep.batch,
        "seq": sweep.seq,
        "stream": sweep.stream,
        "build_options": sweep.build_options,
        "indexing": "hidden_* metrics: states x_0..x_L (x_l enters layer l); others: layers 0..L-1",
        "spread": "std: sample standard deviation over seeds (ddof=1); sem: std / sqrt(seeds); null for one seed",
        "results": results,
    }


def sweep_to_json(sweep):
    return json.dumps(sweep_to_dict(sweep), allow_nan=False)


def _floats(values):
    return [None if not math.isfinite(float(v)) else float(v) for v in np.atleast_1d(values)]


# ----- table ------------------------------------------------------------------------------------


def format_table(sweep, metric=DEFAULT_METRIC):
    """Per (depth, scheme) a block with one row per layer: mean over seeds, and the spread
    as the standard deviation relative to the mean (omitted with one seed)."""
    lines = [
        f"profile at initialization: {describe(sweep)}",
        "gradient norms ||dL/dW||_F of loss = sum(y * dy); hidden-state columns are x_l, "
        "the state entering layer l (row 'out': the last layer's output)",
    ]
    for depth in sweep.depths:
        for scheme in sweep.schemes:
            summary = sweep.results[(scheme, depth)]
            columns = [(h, m) for h, m in _TABLE_COLUMNS if m in summary.mean]
            if metric in summary.mean and metric not in [m for _, m in columns]:
                columns.insert(0, (metric.removeprefix("grad."), metric))
            loss_mean, loss_std, _ = summary.loss
            spread = "" if math.isnan(loss_std) else f" +- {loss_std:.3g}"
            lines.append("")
            lines.append(f"{scheme}, {depth} layers (loss {loss_mean:.4g}{spread})")
            lines.append("layer " + " ".join(f"{header:>13s}" for header, _ in columns))
            for row in range(depth + 1):
                label = "out" if row == depth else str(row)
                cells = [_cell(summary, name, row) for _, name in columns]
                lines.append(f"{label:>5s} " + " ".join(cells))
    return "\n".join(lines)


def _cell(summary, name, row):
    values = summary.mean[name]
    if row >= len(values):
        return " " * 13
    mean, std = values[row], summary.std[name][row]
    text = f"{mean:.3f}" if name == "cosine" else f"{mean:.3g}"
    if not math.isnan(std):
        if mean != 0:
            text += f" ±{min(999, round(100 * std / abs(mean))):d}%"
        elif std == 0:
            text += " ±0"
    return f"{text:>13s}"


# ----- pure-text charts --------------------------------------------------------------------------


def series_by_layer(sweep, metric, depth):
    """scheme -> (x positions, mean values) for one depth; x: layer or state index."""
    return {
        scheme: (
            np.arange(len(sweep.results[(scheme, depth)].mean[metric])),
            sweep.results[(scheme, depth)].mean[metric],
        )
        for scheme in sweep.schemes
        if sweep.has_metric(scheme, metric)
    }


def series_by_depth(sweep, metric):
    """scheme -> (depths, value at the last layer / last state x_L) over the sweep's depths."""
    return {
        scheme: (
            np.array(sweep.depths, dtype=float),
            np.array([sweep.results[(scheme, d)].mean[metric][-1] for d in sweep.depths]),
        )
        for scheme in sweep.schemes
        if sweep.has_metric(scheme, metric)
    }


def x_label(metric):
    if metric in probes.STATE_FIELDS:
        return "state l (x_l enters layer l; x_L: last output)"
    return "layer l"


def last_label(metric):
    return "at x_L, the last layer's output" if metric in probes.STATE_FIELDS else "at the last layer"


def text_charts(sweep, metric=DEFAULT_METRIC, width=60, height=14):
    """One text chart per depth (value by layer) and, for several depths, value at the last
    layer by depth. Log-scale y; one marker per scheme; no dependency."""
    label = METRIC_LABELS.get(metric, metric)
    charts = []
    for depth in sweep.depths:
        charts.append(
            text_chart(
                series_by_layer(sweep, metric, depth),
                f"{label}: {depth} layers",
                x_label(metric),
                width,
                height,
                missing=_missing(sweep, metric),
            )
        )
    if len(sweep.depths) > 1:
        charts.append(
            text_chart(
                series_by_depth(sweep, metric),
                f"{label} {last_label(metric)}, by depth",
                "number of layers",
                width,
                height,
                missing=_missing(sweep, metric),
            )
        )
    return "\n\n".join(charts)


def _missing(sweep, metric):
    return [scheme for scheme in sweep.schemes if not sweep.has_metric(scheme, metric)]


def text_chart(series, title, xlabel, width=60, height=14, missing=()):
    """A scatter chart in text: x linear, y log10; ``series`` maps name -> (xs, ys).

    Points <= 0 or NaN cannot sit on a log scale; the legend counts them instead.
    """
    markers = {name: _MARKERS[i % len(_MARKERS)] for i, name in enumerate(series)}
    points = []
    hidden = {}
    for name, (xs, ys) in series.items():
        ok = np.isfinite(ys) & (ys > 0)
        hidden[name] = int((~ok).sum())
        points += [(float(x), math.log10(y), markers[name]) for x, y, keep in zip(xs, ys, ok) if keep]
    legend = []
    for name in series:
        note = ""
        if hidden[name]:
            total = len(series[name][1])
            if hidden[name] == total:
                note = " (every value <= 0: not shown)"
            else:
                note = f" ({hidden[name]} values <= 0 not shown)"
        legend.append(f"{markers[name]} {name}{note}")
    legend += [f"  {name} (no such parameter)" for name in missing]
    if not points:
        return "\n".join([title, "(nothing positive to plot on a log scale)", "legend: " + "   ".join(legend)])

    x_lo = min(p[0] for p in points)
    x_hi = max(p[0] for p in points)
    y_lo = min(p[1] for p in points)
    y_hi = max(p[1] for p in points)
    if y_hi - y_lo < 1e-9:  # a flat series: give it half a decade either side
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    grid = [[" "] * width for _ in range(height)]
    for x, y, marker in points:
        col = 0 if x_hi == x_lo else round((x - x_lo) / (x_hi - x_lo) * (width - 1))
        row = height - 1 - round((y - y_lo) / (y_hi - y_lo) * (height - 1))
        cell = grid[row][col]
        grid[row][col] = marker if cell in (" ", marker) else _OVERLAP

    tick_rows = {
        0: y_hi,
        (height - 1) // 2: y_hi - (y_hi - y_lo) * ((height - 1) // 2) / (height - 1),
        height - 1: y_lo,
    }
    lines = [f"{title} (log scale)"]
    for row in range(height):
        tick = f"{10 ** tick_rows[row]:.3g}" if row in tick_rows else ""
        lines.append(f"{tick:>9s} |" + "".join(grid[row]))
    lines.append(" " * 10 + "+" + "-" * width)
    axis = list(" " * (width + 1))
    mid_value = (x_lo + x_hi) / 2
    if all(float(p[0]).is_integer() for p in points):
        mid_value = float(round(mid_value))  # integer axes (layers, depths) get integer ticks
    for value in (x_lo, mid_value, x_hi):
        col = 0 if x_hi == x_lo else round((value - x_lo) / (x_hi - x_lo) * (width - 1))
        text = _tick(value)
        start = col + 1 - len(text) // 2  # centred on its column; +1 for the axis corner
        _put(axis, min(max(start, 0), width + 1 - len(text)), text)
    lines.append(" " * 10 + "".join(axis))
    lines.append(" " * 10 + xlabel)
    lines.append("legend: " + "   ".join(legend) + f"   {_OVERLAP} several")
    return "\n".join(lines)


def _tick(value):
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _put(chars, start, text):
    for i, ch in enumerate(text):
        if 0 <= start + i < len(chars):
            chars[start + i] = ch


# ----- figures (matplotlib, optional) ----------------------------------------------------------

# The CLI imports check_output_path and require_matplotlib from this module; both live in lnref.files.
require_matplotlib = require_pyplot


def save_figure(sweep, metric, path, fmt="png"):
    """Draw the sweep's ``metric`` and write it to ``path`` atomically (temp file + replace).

    One panel per depth (value by layer: mean over seeds, and a band from the smallest to
    the largest seed's value when there are several) and, for several depths, a panel of
    the value at the last layer by depth. Log-scale y; one line per scheme; the
    configuration in the title.
    """
    plt = require_pyplot()
    from matplotlib import ticker

    figure = draw_figure(plt, ticker, sweep, metric)
    # No date in the SVG, so the same sweep gives the same bytes.
    metadata = {"Date": None} if fmt == "svg" else {}
    write_figure(figure, path, fmt, dpi=120, metadata=metadata)


def seed_range(summary, metric):
    """(smallest, largest) value over the seeds, per layer: the figures' spread band.

    A min-max band stays positive on a log axis, where mean +- std does not when the seeds
    disagree by more than the mean (heavy tails in deep Post-LN stacks)."""
    values = np.stack([profile.metrics()[metric] for profile in summary.profiles])
    return values.min(axis=0), values.max(axis=0)


def draw_figure(plt, ticker, sweep, metric):
    """The matplotlib Figure of :func:`save_figure` (not written)."""
    label = METRIC_LABELS.get(metric, metric)
    many = len(sweep.depths) > 1
    panels = len(sweep.depths) + (1 if many else 0)
    width = max(4.4 * panels, 7.5)
    legend_columns = min(len(sweep.schemes), max(2, int(width // 1.9)))
    legend_rows = math.ceil(len(sweep.schemes) / legend_columns)
    figure, axes = plt.subplots(
        1, panels, figsize=(width, 4.6 + 0.25 * legend_rows), layout="constrained", squeeze=False
    )
    axes = list(axes[0])
    style = {
        scheme: dict(color=_COLORS[i % len(_COLORS)], marker=_PLOT_MARKERS[i % len(_PLOT_MARKERS)])
        for i, scheme in enumerate(sweep.schemes)
    }
    banded = len(sweep.seeds) > 1
    present = [scheme for scheme in sweep.schemes if sweep.has_metric(scheme, metric)]
    for axis, depth in zip(axes, sweep.depths):
        for scheme in present:
            summary = sweep.results[(scheme, depth)]
            band = seed_range(summary, metric) if banded else None
            _plot_series(axis, np.arange(len(summary.mean[metric])), summary.mean[metric], band, style[scheme])
        axis.set_title(f"{depth} layers", fontsize=10)
        axis.set_xlabel(x_label(metric))
        axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    for axis in axes[1 : len(sweep.depths)]:
        axis.sharey(axes[0])
    if many:
        axis = axes[-1]
        for scheme in present:
            summaries = [sweep.results[(scheme, d)] for d in sweep.depths]
            means = np.array([s.mean[metric][-1] for s in summaries])
            band = None
            if banded:
                ranges = [seed_range(s, metric) for s in summaries]
                band = (np.array([r[0][-1] for r in ranges]), np.array([r[1][-1] for r in ranges]))
            _plot_series(axis, np.array(sweep.depths), means, band, style[scheme])
        axis.set_title(f"{last_label(metric)}, by depth", fontsize=10)
        axis.set_xlabel("number of layers")
        axis.set_ylabel(label)
        axis.set_xticks(list(sweep.depths))
    for axis in axes:
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.25)
    axes[0].set_ylabel(label + " (log scale)")

    handles = []
    for scheme in sweep.schemes:
        text = scheme
        if scheme not in present:
            text += " (no such parameter)"
        elif all(_nothing_positive(sweep.results[(scheme, d)].mean[metric]) for d in sweep.depths):
            text += " (all 0: not on a log axis)"
        (handle,) = axes[0].plot([], [], label=text, linewidth=1.5, markersize=4, **style[scheme])
        handles.append(handle)
    title = "scheme (line: mean over seeds; band: smallest to largest seed)" if banded else "scheme"
    figure.legend(
        handles=handles, loc="outside lower center", ncols=legend_columns, title=title, fontsize=9, title_fontsize=9
    )
    config = textwrap.fill(describe(sweep), width=int(width * 12))
    figure.suptitle(f"{label} at initialization\n{config}", fontsize=10)
    return figure


def _plot_series(axis, xs, means, band, style):
    keep = np.isfinite(means) & (means > 0)
    if not keep.any():
        return
    axis.plot(xs[keep], means[keep], linewidth=1.5, markersize=4, **style)
    if band is not None:
        low, high = band
        low = np.where(low > 0, low, np.nan)  # zero has no place on a log axis
        axis.fill_between(xs, low, high, color=style["color"], alpha=0.15, linewidth=0)


def _nothing_positive(values):
    values = np.asarray(values)
    return not np.any(np.isfinite(values) & (values > 0))
