"""The figures of ``lnref train`` and ``lnref stability``: one run's loss curves, and the
stability grid's curves in panels of depth x warm-up (matplotlib, the ``lnref[plot]`` extra)."""

from __future__ import annotations

import numpy as np

from lnref.files import require_pyplot, write_figure
from lnref.train import depth_label, depth_order


def smooth(values, window=11):
    """Centred moving average over ``window`` steps, narrower near the ends, so the
    smoothed curve does not lag the raw one. A NaN stays NaN."""
    values = np.asarray(values, dtype=float)
    half = window // 2
    out = np.empty_like(values)
    for i in range(len(values)):
        out[i] = values[max(0, i - half) : i + half + 1].mean()
    return out


def plot_run(result, path):
    """One run: training loss (raw and smoothed) and held-out loss against the step."""
    plt = require_pyplot()
    config, summary = result["config"], result["summary"]
    loss = np.array([np.nan if x is None else x for x in result["curve"]["loss"]])
    steps = np.arange(1, len(loss) + 1)
    figure, axis = plt.subplots(figsize=(7, 4.2))
    axis.plot(steps, loss, color="0.75", linewidth=0.8, label="training loss")
    axis.plot(steps, smooth(loss), color="C0", linewidth=1.6, label="training loss, 11-step mean")
    evals = result["evals"]
    axis.plot(
        [e["step"] for e in evals], [e["loss"] for e in evals], "o-", color="C3", markersize=4, label="held-out loss"
    )
    axis.axhline(summary["baseline_loss"], color="0.4", linestyle="--", linewidth=1, label="context-free baseline")
    if summary["diverged"]:
        axis.axvline(
            summary["diverged_at"], color="C3", linestyle=":", label=f"diverged (step {summary['diverged_at']})"
        )
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy (nats)")
    axis.set_title(
        f"{config['scheme']}, {depth_label(config)} layers, task {config['task']}, "
        f"lr {config['lr']:g}, warm-up {config['warmup']}"
    )
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    write_figure(figure, path, "png", dpi=110)


def plot_grid(results, path):
    """Panels depth x warm-up. In each, every scheme's smoothed training-loss curves, one
    line per seed. A cross marks where a run diverged."""
    plt = require_pyplot()
    depths = sorted({depth_label(r["config"]) for r in results}, key=depth_order)
    warmups = sorted({r["config"]["warmup"] for r in results})
    schemes = list(dict.fromkeys(r["config"]["scheme"] for r in results))
    colors = {s: f"C{i}" for i, s in enumerate(schemes)}
    figure, axes = plt.subplots(
        len(depths),
        len(warmups),
        figsize=(5.2 * len(warmups), 3.6 * len(depths)),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    baseline = results[0]["summary"]["baseline_loss"]
    curves = [smooth([np.nan if x is None else x for x in r["curve"]["loss"]]) for r in results]
    # Room for every smoothed curve, but a diverging one may not flatten the others.
    top = min(1.05 * max(np.nanmax(curve) for curve in curves), 3 * baseline)
    for row, depth in enumerate(depths):
        for col, warmup in enumerate(warmups):
            axis = axes[row][col]
            for result in results:
                config, summary = result["config"], result["summary"]
                if depth_label(config) != depth or config["warmup"] != warmup:
                    continue
                curve = smooth([np.nan if x is None else x for x in result["curve"]["loss"]])
                steps = np.arange(1, len(curve) + 1)
                label = (
                    config["scheme"]
                    if config["seed"]
                    == min(r["config"]["seed"] for r in results if r["config"]["scheme"] == config["scheme"])
                    else None
                )
                axis.plot(steps, curve, color=colors[config["scheme"]], linewidth=1.1, alpha=0.85, label=label)
                if summary["diverged"]:
                    axis.plot(
                        [summary["diverged_at"]],
                        [min(curve[-1], 0.97 * top)],
                        "x",
                        color=colors[config["scheme"]],
                        markersize=9,
                        markeredgewidth=2,
                    )
            axis.axhline(baseline, color="0.4", linestyle="--", linewidth=1)
            axis.set_title(f"{depth} layers, warm-up: {f'{warmup} steps' if warmup else 'none'}", fontsize=10)
            axis.set_ylim(0, top)
            axis.grid(alpha=0.3)
            if row == len(depths) - 1:
                axis.set_xlabel("step")
            if col == 0:
                axis.set_ylabel("training loss, 11-step mean")
    axes[0][-1].legend(fontsize=8, loc="upper right")
    config = results[0]["config"]
    seeds = len({r["config"]["seed"] for r in results})
    figure.suptitle(
        f"task {config['task']}, lr {config['lr']:g}, d_model {config['d_model']}, "
        f"{seeds} seed{'s' if seeds > 1 else ''} (one line each); "
        "dashed: context-free baseline; x: diverged",
        fontsize=10,
    )
    figure.tight_layout()
    write_figure(figure, path, "png", dpi=110)
