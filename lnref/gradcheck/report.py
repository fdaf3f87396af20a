"""What a gradient check reports: one Check per comparison, one TensorResult per tensor, the Report."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lnref.finite_diff import STATUSES, difference_from_values, judge
from lnref.nn import ZERO_BY_STRUCTURE

# Report-level statuses: a tensor is "zero" when its gradient is zero by the model's structure
# (``nn.ZERO_BY_STRUCTURE``) and the check, analytic and numeric, found nothing above the noise.
REPORT_STATUSES = (*STATUSES, "zero")


@dataclass
class Check:
    """One comparison of an analytic and a numeric derivative."""

    tensor: str
    where: str  # "layer 3", "stack", "input"
    probe: str  # "direction" or the element index
    analytic: float
    numeric: float
    noise: float
    tolerance: float
    status: str

    @property
    def error(self) -> float:
        return abs(self.analytic - self.numeric)

    @property
    def ratio(self) -> float:
        return self.error / self.tolerance if self.tolerance > 0 else math.inf


@dataclass
class TensorResult:
    tensor: str
    where: str
    status: str
    worst: Check
    counts: dict[str, int] = field(default_factory=dict)


def compare(
    tensor: str,
    where: str,
    probe: str,
    analytic: float,
    numeric: float,
    sigma: float,
    h: float,
    rtol: float,
    atol: float,
) -> Check:
    """Judge one analytic/numeric pair against the noise floor (``lnref.finite_diff.judge``)."""
    noise, tolerance, status = judge(analytic, numeric, sigma, h, rtol, atol)
    return Check(
        tensor, where, probe, float(analytic), float(numeric), float(noise), float(tolerance), STATUSES[int(status)]
    )


CONFIRMING_STEP = 0.25  # a failure is measured again at this fraction of the step


def confirmed(
    check: Check, values_at: Callable[[float], list[float]], floor: float, h: float, rtol: float, atol: float
) -> Check:
    """``check`` if it did not fail; else the same comparison at a quarter of the step, which
    decides. A wrong gradient fails at any step; a failure of the noise estimate (one sample of
    the rounding noise) or of the truncation error (O(h^4)) does not repeat at another step."""
    if check.status != "failed":
        return check
    small = h * CONFIRMING_STEP
    numeric, sigma = difference_from_values(values_at(small), small)
    second = compare(
        check.tensor,
        check.where,
        f"{check.probe}, again at step {small:g}",
        check.analytic,
        numeric,
        max(sigma, floor),
        small,
        rtol,
        atol,
    )
    return check if second.status == "failed" else second


def confirmed_elements(
    analytic: np.ndarray,
    numeric: np.ndarray,
    sigma: np.ndarray,
    values_at: Callable[[float], Any],
    h: float,
    rtol: float,
    atol: float,
    floor: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``confirmed`` for one check per element: the elements that fail are measured again, all
    at once, at a quarter of the step, which decides for them. (numeric, sigma, step) per element."""
    steps = np.full(np.shape(numeric), h)
    failed = judge(analytic, numeric, sigma, h, rtol, atol)[2] == STATUSES.index("failed")
    if not failed.any():
        return numeric, sigma, steps
    small = h * CONFIRMING_STEP
    numeric_small, sigma_small = difference_from_values(values_at(small), small)
    sigma_small = np.maximum(sigma_small, floor)
    retaken = failed & (judge(analytic, numeric_small, sigma_small, small, rtol, atol)[2] != STATUSES.index("failed"))
    return (
        np.where(retaken, numeric_small, numeric),
        np.where(retaken, sigma_small, sigma),
        np.where(retaken, small, steps),
    )


def summarize(tensor: str, where: str, checks: list[Check]) -> TensorResult:
    statuses = [c.status for c in checks]
    status = "failed" if "failed" in statuses else "passed" if "passed" in statuses else "unresolved"
    worst = max(checks, key=lambda c: (c.status == "failed", c.ratio))
    return TensorResult(tensor, where, status, worst, {s: statuses.count(s) for s in STATUSES})


def summarize_elements(
    tensor: str,
    where: str,
    analytic: np.ndarray,
    numeric: np.ndarray,
    sigma: np.ndarray,
    h: float | np.ndarray,
    rtol: float,
    atol: float,
) -> TensorResult:
    """``summarize`` for one check per element of a tensor, judged at once (``h`` the step of
    each element's difference, or of all): the counts and the worst element (only that one
    becomes a ``Check``)."""
    shape = np.shape(analytic)
    analytic = np.asarray(analytic, dtype=float).reshape(-1)
    noise, tolerance, status = judge(analytic, numeric, sigma, h, rtol, atol)
    counts = {s: int(np.count_nonzero(status == i)) for i, s in enumerate(STATUSES)}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(tolerance > 0, np.abs(analytic - numeric) / tolerance, np.inf)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    failed = status == STATUSES.index("failed")
    worst = int(np.argmax(np.where(failed, ratio, -np.inf) if failed.any() else ratio))
    index = tuple(int(j) for j in np.unravel_index(worst, shape))
    step = np.broadcast_to(h, analytic.shape)[worst]
    check = Check(
        tensor,
        where,
        str(index) if step == np.max(h) else f"{index}, again at step {step:g}",
        float(analytic[worst]),
        float(numeric[worst]),
        float(noise[worst]),
        float(tolerance[worst]),
        STATUSES[int(status[worst])],
    )
    overall = "failed" if counts["failed"] else "passed" if counts["passed"] else "unresolved"
    return TensorResult(tensor, where, overall, check, counts)


@dataclass
class Report:
    config: dict[str, Any]
    mode: str
    point: str
    step: float
    rtol: float
    atol: float
    results: list[TensorResult]
    seconds: float = 0.0
    held: tuple[str, ...] = ()  # kinds of values held at the point ("relu", "stop_gradient")

    @property
    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.results) for status in REPORT_STATUSES}

    @property
    def check_counts(self) -> dict[str, int]:
        """Counts over single checks (one per element in full and entries modes)."""
        return {status: sum(r.counts.get(status, 0) for r in self.results) for status in STATUSES}

    @property
    def ok(self) -> bool:
        return self.counts["failed"] == 0

    def summary(self) -> str:
        counts = self.counts
        line = f"{counts['passed']} passed, {counts['failed']} failed"
        line += f", {counts['unresolved']} unresolved" if counts["unresolved"] else ""
        return line + (f", {counts['zero']} zero by structure" if counts["zero"] else "")

    def by_place(self) -> dict[str, list[TensorResult]]:
        places: dict[str, list[TensorResult]] = {}
        for result in self.results:
            places.setdefault(result.where, []).append(result)
        return places

    def to_text(self, worst: int = 5, verbose: bool = False) -> str:
        """The report for a screen: the summary line first and last, one row per place (runs
        of consecutive layers with the same status as one row unless ``verbose``), the worst
        offenders and what the unresolved tensors are."""
        cfg = self.config
        lines = [
            self.summary(),
            f"gradcheck {cfg['scheme']}: {layers_text(cfg)}, d_model {cfg['d_model']}, "
            f"{cfg['n_heads']} heads, d_ff {cfg['d_ff']}, {cfg['norm']}, {cfg['activation']}, "
            f"{cfg['dtype']}; mode {self.mode}, at {self.point}, step {self.step:g}, "
            f"rtol {self.rtol:g}, atol {self.atol:g}",
        ]
        rows = [_place_row(where, results) for where, results in self.by_place().items()]
        shown_rows = rows if verbose else _collapsed(rows)
        width = max([14, *(len(row[0]) for row in shown_rows)])
        lines += ["", f"{'where':{width}s} {'tensors':>7s} {'worst err/tol':>14s}  status"]
        for where, tensors, ratio, status, count in shown_rows:
            shown = status if status == "passed" else f"{status} ({count})"
            lines.append(f"{where:{width}s} {tensors:>7s} {ratio:14.3g}  {shown}")
        offenders = sorted(self.results, key=lambda r: -r.worst.ratio)[:worst]
        lines += ["", "worst offenders (error / tolerance):"]
        for r in offenders:
            c = r.worst
            lines.append(
                f"  {r.tensor} [{c.probe}] {r.status}: analytic {c.analytic:.12g} numeric {c.numeric:.12g} "
                f"error {c.error:.3g} tolerance {c.tolerance:.3g} noise {c.noise:.3g}"
            )
        zeros = [r.tensor for r in self.results if r.status == "zero"]
        for short, why in ZERO_BY_STRUCTURE.items():
            named = [name for name in zeros if name.rpartition(".")[2] == short]
            if named:
                lines.append(
                    f"  {len(named)} zero by structure (*.{short}): {why}; finite differences agree "
                    "to their noise floor"
                )
        unresolved = [r.tensor for r in self.results if r.status == "unresolved"]
        if unresolved:
            hint = "" if self.mode in ("blockwise", "full") else " (a layer on its own could not resolve them either)"
            lines.append(
                f"  {len(unresolved)} unresolved: analytic and numeric both under the finite-difference "
                f"noise floor{hint}"
            )
        elif self.results:
            lines.append("  0 unresolved" + (" apart from the zeros by structure" if zeros else ""))
        if "stop_gradient" in self.held:
            lines.append(
                "  stop-gradient values held at the point: the checked function is the surrogate whose "
                "derivative the tape computes, not the function itself"
            )
        lines += ["", f"{self.seconds:.1f} s"]
        if self.mode in ("entries", "full"):
            checks = self.check_counts
            lines.append(
                f"elements: {sum(checks.values())} checked, {checks['passed']} passed, "
                f"{checks['failed']} failed, {checks['unresolved']} unresolved"
            )
            if checks["unresolved"]:
                lines.append(
                    "  (an unresolved element has analytic and numeric values both under the noise "
                    "floor, as exactly-zero gradients do: key biases, ReLU units off for every token)"
                )
        lines.append(self.summary())
        return "\n".join(lines)

    def to_json(self) -> str:
        document = {
            "config": self.config,
            "mode": self.mode,
            "point": self.point,
            "step": self.step,
            "rtol": self.rtol,
            "atol": self.atol,
            "seconds": self.seconds,
            "held": list(self.held),
            "counts": self.counts,
            "check_counts": self.check_counts,
            "ok": self.ok,
            "summary": self.summary(),
            "tensors": [
                {
                    "tensor": r.tensor,
                    "where": r.where,
                    "status": r.status,
                    "counts": r.counts,
                    "worst": {**asdict(r.worst), "error": r.worst.error, "ratio": r.worst.ratio},
                }
                for r in self.results
            ],
        }
        return json.dumps(document, indent=1, default=float)


def layers_text(config: Any) -> str:
    """ "6 layers", or "6 encoder and 6 decoder layers" (a Config or its dict)."""
    get = config.get if isinstance(config, dict) else lambda name, default=None: getattr(config, name, default)
    if get("role", "stack") == "encoder-decoder":
        return f"{get('encoder_layers')} encoder and {get('decoder_layers')} decoder layers"
    layers = get("n_layers")
    return f"{layers} layer{'s' if layers != 1 else ''}"


Row = tuple[str, str, float, str, int]  # where, tensors, worst error/tolerance, status, count of that status


def _place_row(where: str, results: list[TensorResult]) -> Row:
    statuses = [r.status for r in results]
    status = next((s for s in ("failed", "unresolved", "zero") if s in statuses), "passed")
    return where, str(len(results)), max(r.worst.ratio for r in results), status, statuses.count(status)


def _layer_place(where: str) -> tuple[str, str] | None:
    """("encoder ", "3") for the place "encoder layer 3", ("", "3") for "layer 3"; None for
    another place."""
    stack, _, rest = where.rpartition("layer ")
    return (stack, rest) if rest.isdigit() and stack in ("", "encoder ", "decoder ") else None


def _collapsed(rows: list[Row]) -> list[Row]:
    """Runs of consecutive layers of one stack with the same status and number of tensors as
    one row ("layers 5-47", "decoder layers 0-5", tensors "16 each", the worst ratio of the
    run, the status counts summed)."""
    out: list[Row] = []
    run: list[tuple[Row, tuple[str, str]]] = []

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0][0])
        elif run:
            (first, (stack, low)), (_, (_, high)) = run[0], run[-1]
            out.append(
                (
                    f"{stack}layers {low}-{high}",
                    f"{first[1]} each",
                    max(r[2] for r, _ in run),
                    first[3],
                    sum(r[4] for r, _ in run),
                )
            )
        run.clear()

    for row in rows:
        place = _layer_place(row[0])
        if place is not None and run:
            previous, (stack, _) = run[-1]
            if place[0] == stack and (row[1], row[3]) == (previous[1], previous[3]):
                run.append((row, place))
                continue
        flush()
        if place is not None:
            run.append((row, place))
        else:
            out.append(row)
    flush()
    return out
