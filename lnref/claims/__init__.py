"""The papers' gradient and scale claims, each derived in proofs/ and measured here.

A claim is a :class:`~lnref.claims.core.Claim`: an id, a one-line statement, the paper and
section, its proofs/ file and ``run(quick=False, progress=None, **overrides) -> Result``.
``lnref prove`` runs them; the verdict rule and the exit code are in :mod:`lnref.claims.core`,
the statistics in :mod:`lnref.claims.stats`.

Per-layer quantities come from :mod:`lnref.probes`; what is measured inside a layer (the input
of each LN, the gradient on either side of an LN or a residual branch, each branch's output)
from :mod:`lnref.claims.trace`, which records the scheme's own calls.

Each claim is also a task of the sweep machinery (``lnref.sweep``, kind "prove"): ``lnref
prove`` shares the claims out over processes or a Dask cluster and records each result.
"""

from __future__ import annotations

from importlib import import_module

from lnref.sweep.kinds import Kind
from lnref.sweep.task import grid, plain

# (module, attribute) in the order of proofs/README.md
_REGISTRY = (
    ("ln_jacobian", "CLAIM"),
    ("xiong", "LEMMA2_POST"),
    ("xiong", "LEMMA2_PRE"),
    ("xiong", "THEOREM1"),
    ("gradient_flow", "ENCODER"),
    ("gradient_flow", "DECODER"),
    ("wang2019", "CLAIM"),
    ("liu", "OUTPUT_CHANGE"),
    ("adam", "LIU_ADAM"),
    ("liu", "ADMIN_BETA"),
    ("residual", "COLLAPSE"),
    ("residual", "GRADIENT_BOUND"),
    ("b2t", "CLAIM"),
    ("deepnet", "CLAIM"),
    ("adam", "DEEPNET_ADAM"),
    ("peri", "GROWTH"),
    ("peri", "FFN_GRADIENT"),
    ("lns", "CURSE"),
    ("lns", "SCALING"),
    ("normformer", "CLAIM"),
    ("subln", "BRANCH"),
    ("subln", "GROWTH"),
    ("dslm", "CLAIM"),
    ("tfixup", "CLAIM"),
    ("qk_norm", "INVARIANCE"),
    ("qk_norm", "BOUNDED"),
    ("reordered", "GROWTH"),
    ("reordered", "IDENTITY"),
    ("dyt", "CLAIM"),
)


def all_claims():
    """Every claim, in the order of proofs/README.md."""
    return [getattr(import_module(f"lnref.claims.{module}"), name) for module, name in _REGISTRY]


def get(claim_id):
    """The claim with this id (ValueError listing the valid ids if unknown)."""
    claims = {claim.id: claim for claim in all_claims()}
    if claim_id not in claims:
        raise ValueError(f"unknown claim {claim_id!r}; valid claims: {', '.join(claims)}")
    return claims[claim_id]


def run_claims(claims, quick=False, progress=None):
    """Run each claim; returns the list of Results (each timed)."""
    import time

    results = []
    for claim in claims:
        start = time.perf_counter()
        result = claim.run(quick=quick, progress=progress)
        result.seconds = time.perf_counter() - start
        results.append(result)
    return results


# ----- claims as sweep tasks (``lnref.sweep``, kind "prove") -------------------------------------


def claim_tasks(claims, quick=False):
    """One sweep task per claim, in the order given."""
    return grid("prove", [{"claim": claim.id, "quick": bool(quick)} for claim in claims])


def run_claim_task(config):
    """One claim run as the sweep's workers run it: ``Result.to_dict()``, each check with its unit."""
    (result,) = run_claims([get(config["claim"])], quick=config["quick"])
    document = result.to_dict()
    for check, entry in zip(result.checks, document["checks"]):
        entry["unit"] = check.unit
    return plain(document)


def result_from_dict(document):
    """The :class:`~lnref.claims.core.Result` that :func:`run_claim_task` wrote (its checks
    judged again, by the same rule, from the same numbers)."""
    from lnref.claims.core import Check, Result

    checks = [
        Check(
            c["statement"],
            c["source"],
            float(c["lo"]),
            float(c["hi"]),
            float(c["value"]),
            None if c["se"] is None else float(c["se"]),
            c["expected"],
            c.get("unit", ""),
        )
        for c in document["checks"]
    ]
    return Result(
        get(document["id"]),
        document["prediction"],
        document["measurement"],
        checks,
        document["figures"],
        document["config"],
        document["seconds"],
    )


def _claim_outcome(document):
    return document["verdict"] + (" (contradicts proofs/)" if document["contradicts_proof"] else "")


PROVE_KIND = Kind("prove", run_claim_task, lambda config: config["claim"], _claim_outcome)
