"""Charts of a profile sweep (``lnref.profile``): log-scale text charts for a terminal, and
figures with matplotlib (the optional extra ``lnref[plot]``).
"""

from __future__ import annotations

import math
import textwrap

import numpy as np

from lnref import probes
from lnref.files import require_pyplot, write_figure
from lnref.profile import DEFAULT_METRIC, METRIC_LABELS, describe

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
