"""The gradient-check sweep: ``lnref gradcheck`` over schemes x norms x depths.

Each model is one task: its configuration holds the model (``lnref.build``'s arguments) and
the check's settings (mode, point, entries, tolerances, the language-model head); the result
is the checker's report as its JSON document (``Report.to_json``). The table has one row per
model; a model with a failed tensor fails the sweep.
"""

from __future__ import annotations

import json
import math
from typing import Any

from lnref.sweep.kinds import Kind
from lnref.sweep.task import Task, grid, plain

MODEL_KEYS = (
    "d_model",
    "n_heads",
    "d_ff",
    "activation",
    "causal",
    "cross_attention",
    "eps",
    "dtype",
    "seed",
    "post_fraction",
    "qk_norm",
    "options",
)
CHECK_KEYS = ("mode", "point", "batch", "seq", "entries", "rtol", "atol", "with_head", "vocab")


def check_tasks(
    schemes: list[str],
    norms: list[str],
    depths: list[int | dict[str, int]],
    model: dict[str, Any],
    check: dict[str, Any],
) -> list[Task]:
    """One task per (scheme, norm, depth), in that nesting, but for the (scheme, norm) pairs
    that ``left_out`` names. A depth is a number of layers, or {"encoder_layers": N,
    "decoder_layers": M} for an encoder-decoder model. ``model`` holds the other ``lnref.build``
    arguments (``MODEL_KEYS``), ``check`` the checker's (``CHECK_KEYS``, and "memory_len", an
    encoder-decoder model's source length, when given)."""
    shared = {key: model[key] for key in MODEL_KEYS}
    settings = {key: check[key] for key in CHECK_KEYS}
    if check.get("memory_len") is not None:
        settings["memory_len"] = check["memory_len"]
    refused = left_out(schemes, norms, model)
    return grid(
        "gradcheck",
        [
            {"model": dict(shared, scheme=scheme, norm=norm, **_depth(depth)), **settings}
            for scheme in schemes
            for norm in norms
            if (scheme, norm) not in refused
            for depth in depths
        ],
    )


def _depth(depth: int | dict[str, int]) -> dict[str, int]:
    return dict(depth) if isinstance(depth, dict) else {"n_layers": depth}


def left_out(schemes: list[str], norms: list[str], model: dict[str, Any]) -> dict[tuple[str, str], str]:
    """{(scheme, norm): why} for the pairs whose scheme refuses that norm or another of the
    ``model`` settings (a scheme's REFUSES: T-Fixup has no norm to choose)."""
    from lnref.model import refusal

    shared = {key: model[key] for key in (*MODEL_KEYS, "encoder_layers", "decoder_layers") if key in model}
    reasons = {(scheme, norm): refusal(scheme, **shared, norm=norm) for scheme in schemes for norm in norms}
    return {pair: why for pair, why in reasons.items() if why is not None}


def run_check_task(config: dict[str, Any]) -> dict[str, Any]:
    """One model checked as ``lnref gradcheck`` checks it alone: the report's JSON document."""
    from lnref import gradcheck as checker
    from lnref.building import build

    model_options = dict(config["model"])
    settings = {key: config[key] for key in ("mode", "point", "batch", "seq", "entries", "rtol", "atol")}
    settings["memory_len"] = config.get("memory_len")
    if config["with_head"]:
        from lnref.lm import with_head

        encoder_decoder = "encoder_layers" in model_options
        model = build(**model_options) if encoder_decoder else build(**{**model_options, "causal": True})
        lm = with_head(model, config["vocab"], config["seq"])
        report = checker.gradcheck_lm(lm, **settings)
    else:
        report = checker.gradcheck(build(**model_options), **settings)
    document: dict[str, Any] = plain(json.loads(report.to_json()))
    return document


def _layers(model: dict[str, Any]) -> str:
    """The layers column: "6", or "6+6" for an encoder-decoder model."""
    if "encoder_layers" in model:
        return f"{model['encoder_layers']}+{model['decoder_layers']}"
    return str(model["n_layers"])


def _label(config: dict[str, Any]) -> str:
    from lnref.gradcheck.report import layers_text

    model = config["model"]
    if "encoder_layers" in model:
        model = {**model, "role": "encoder-decoder"}
    return f"{model['scheme']}, {model['norm']}, {layers_text(model)}"


def _outcome(report: dict[str, Any]) -> str:
    return str(report["summary"])


GRADCHECK_KIND = Kind("gradcheck", run_check_task, _label, _outcome)


def format_table(records: list[dict[str, Any]]) -> str:
    """One row per model checked, then the models that failed with their worst tensor, then
    a last line ``N models: K passed, F failed``."""
    lines = [
        f"gradcheck sweep: mode {records[0]['result']['mode']}, at {records[0]['result']['point']}",
        "",
        "| scheme | norm | layers | tensors | passed | failed | unresolved | zero by structure | worst err/tol "
        "| seconds |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    failing = []
    for record in records:
        model, report = record["config"]["model"], record["result"]
        counts = report["counts"]
        worst = max((_ratio(tensor["worst"]["ratio"]) for tensor in report["tensors"]), default=0.0)
        lines.append(
            f"| {model['scheme']} | {model['norm']} | {_layers(model)} | {len(report['tensors'])} | "
            f"{counts['passed']} | {counts['failed']} | {counts['unresolved']} | {counts.get('zero', 0)} | "
            f"{worst:.3g} | {report['seconds']:.1f} |"
        )
        if not report["ok"]:
            failing.append(record)
    for record in failing:
        report = record["result"]
        names = [tensor["tensor"] for tensor in report["tensors"] if tensor["status"] == "failed"]
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        lines.append(f"FAILED {_label(record['config'])}: {report['summary']} ({shown})")
    lines += ["", f"{len(records)} models: {len(records) - len(failing)} passed, {len(failing)} failed"]
    return "\n".join(lines)


def _ratio(value: Any) -> float:
    ratio = float(value)  # "inf" where a tolerance is zero
    return ratio if not math.isnan(ratio) else math.inf
