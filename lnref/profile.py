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

import numpy as np

from lnref import SCHEMES, probes
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


def model_metrics(model, stack=None):
    """The metric names the probes report for ``model`` (of an encoder-decoder model, for the
    layers of its ``stack``), from its layer-0 parameter names."""
    prefix = "layers.0." if stack is None else f"{stack}.layers.0."
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


ENCODER_DECODER_KEYS = ("role", "encoder_layers", "decoder_layers")


def profile_tasks(schemes, depths, build_options, seeds, batch=2, seq=8, stream=0, encoder_decoder=None):
    """One sweep task per (depth, scheme, seed), in that nesting: each probes one model.

    ``encoder_decoder`` = (N, M, stack): every model is an encoder-decoder model of N encoder
    and M decoder layers, and its ``stack`` ("encoder" or "decoder") is probed; ``depths`` is
    then that stack's depth alone."""
    left_out = ("scheme", "n_layers", "seed", *ENCODER_DECODER_KEYS)
    options = {k: v for k, v in build_options.items() if k not in left_out}
    extra = {}
    if encoder_decoder is not None:
        encoder_layers, decoder_layers, stack = encoder_decoder
        extra = {"stack": stack}

    def build(scheme, depth, seed):
        if encoder_decoder is None:
            return dict(options, scheme=scheme, n_layers=depth, seed=seed)
        return dict(options, scheme=scheme, encoder_layers=encoder_layers, decoder_layers=decoder_layers, seed=seed)

    return grid(
        "profile",
        [
            {
                "build": build(scheme, depth, int(seed)),
                "batch": batch,
                "seq": seq,
                "stream": stream,
                **extra,
            }
            for depth in depths
            for scheme in schemes
            for seed in seeds
        ],
    )


def task_depth(config):
    """The number of layers a profile task probes: its stack's, or its one stack's."""
    stack = config.get("stack")
    return config["build"][f"{stack}_layers"] if stack else config["build"]["n_layers"]


def run_profile_task(config):
    """The probes of one model (``probes.profile_over_seeds`` with its one seed), as plain data."""
    build_options = config["build"]
    summary = probes.profile_over_seeds(
        build_options,
        [build_options["seed"]],
        batch=config["batch"],
        seq=config["seq"],
        stream=config["stream"],
        stack=config.get("stack", "decoder"),
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
        task_depth(config),
        config["stream"],
        result["loss"],
        **arrays,
        weight_grad_norms={kind: np.array(v, dtype=np.float64) for kind, v in result["weight_grad_norms"].items()},
    )


def _task_label(config):
    build_options = config["build"]
    stack = config.get("stack")
    if stack:
        depths = f"{build_options['encoder_layers']}-{build_options['decoder_layers']}"
        return f"{build_options['scheme']}, encoder-decoder {depths} ({stack}), seed {build_options['seed']}"
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
        return rest, config["batch"], config["seq"], config["stream"], config.get("stack")

    configs = [record["config"] for record in records]
    options, batch, seq, stream, stack = shared(configs[0])
    if any(shared(config) != (options, batch, seq, stream, stack) for config in configs):
        raise ValueError("the profile records describe different model settings; one table needs one setting")
    if stack:
        options = dict(options, stack=stack)  # describe() names the encoder-decoder model and the stack
    cells = [(c["build"]["scheme"], task_depth(c), c["build"]["seed"]) for c in configs]
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
    if o.get("stack"):
        parts.append(f"the {o['stack']} of {o['encoder_layers']}-{o['decoder_layers']} encoder-decoder models")
    else:
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
