"""What a claim is, what a check is, and how checks become a verdict.

A claim (one proofs/ file) is tested by several checks. Each check predicts that one
measured number lies in an interval, and says where the prediction comes from:

    source "paper"   the paper's statement as the paper makes it
    source "proof"   our derivation in proofs/ (which may correct the paper's constant,
                     or conclude that the paper's statement is false)

Negative controls (tests) call a claim's ``run`` with a ``scheme`` or ``law`` override; the
overridden check is then judged as if proofs/ had concluded it (``expected`` True), so the
failure it must produce shows both in the verdict and as a contradiction.

``expected`` is what the proofs/ file concludes about the statement: True when the
derivation says it holds, False when the derivation says the paper's statement fails in
this setting. A check *contradicts the proof* when its resolved outcome differs from
``expected``; ``lnref prove`` exits 1 exactly then.

The claim's verdict is about the paper's statement:
    refuted / corrected   some paper check fails (which of the two is fixed per claim
                          in advance: refuted when the paper's conclusion is wrong,
                          corrected when only its constant or its setting is)
    inconclusive          no paper check fails, but some check is unresolved
    confirmed             no paper check fails and none is unresolved (a failing check
                          of our own derivation is reported as contradicting the proof)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from lnref.claims.stats import judge

VERDICTS = ("confirmed", "refuted", "corrected", "inconclusive")
SOURCES = ("paper", "proof")


@dataclass
class Check:
    statement: str
    source: str
    lo: float
    hi: float
    value: float
    se: float | None = None
    expected: bool = True
    unit: str = ""

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"check source must be one of {SOURCES}, got {self.source!r}")
        self.value = float(self.value)
        self.se = None if self.se is None or not math.isfinite(self.se) else float(self.se)
        self.outcome = judge(self.value, self.se, self.lo, self.hi)

    @property
    def contradicts_proof(self):
        return self.outcome != "unresolved" and (self.outcome == "holds") != self.expected

    def interval_text(self):
        lo, hi = self.lo, self.hi
        if math.isinf(lo) and math.isinf(hi):
            return "any value"
        if math.isinf(lo):
            return f"<= {_fmt(hi)}"
        if math.isinf(hi):
            return f">= {_fmt(lo)}"
        return f"in [{_fmt(lo)}, {_fmt(hi)}]"

    def measured_text(self):
        text = _fmt(self.value)
        if self.se is not None and self.se > 0:
            text += f" +- {_fmt(self.se)}"
        return text + (f" {self.unit}" if self.unit else "")

    def to_dict(self):
        return {
            "statement": self.statement,
            "source": self.source,
            "lo": _num(self.lo),
            "hi": _num(self.hi),
            "value": _num(self.value),
            "se": _num(self.se),
            "expected": self.expected,
            "outcome": self.outcome,
            "contradicts_proof": self.contradicts_proof,
        }


@dataclass(frozen=True)
class Claim:
    """One proofs/ file and the experiment that measures it."""

    id: str
    title: str
    paper: str
    proof: str  # file name under proofs/
    run: Callable  # run(quick: bool = False, progress=None, **overrides) -> Result
    failure_verdict: str = "refuted"

    def __post_init__(self):
        if self.failure_verdict not in ("refuted", "corrected"):
            raise ValueError(f"{self.id}: failure_verdict must be refuted or corrected")


@dataclass
class Result:
    claim: Claim
    prediction: str
    measurement: str
    checks: list
    figures: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verdict(self):
        paper = [c for c in self.checks if c.source == "paper"]
        if any(c.outcome == "fails" for c in paper):
            return self.claim.failure_verdict
        if any(c.outcome == "unresolved" for c in self.checks):
            return "inconclusive"
        return "confirmed"

    @property
    def contradicts_proof(self):
        return any(c.contradicts_proof for c in self.checks)

    def to_dict(self):
        return {
            "id": self.claim.id,
            "title": self.claim.title,
            "paper": self.claim.paper,
            "proof": f"proofs/{self.claim.proof}",
            "prediction": self.prediction,
            "measurement": self.measurement,
            "verdict": self.verdict,
            "contradicts_proof": self.contradicts_proof,
            "checks": [c.to_dict() for c in self.checks],
            "figures": {k: _num(v) for k, v in self.figures.items()},
            "config": self.config,
            "seconds": round(self.seconds, 3),
        }


def _num(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _fmt(value):
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1e4 or magnitude < 1e-3:
        return f"{value:.3g}"
    if magnitude >= 100:
        return f"{value:.1f}"
    return f"{value:.4g}" if magnitude < 1 else f"{value:.3f}"
