"""The papers' gradient and scale claims, each derived in proofs/ and measured here.

A claim is a :class:`~lnref.claims.core.Claim`: an id, a one-line statement, the paper and
section, its proofs/ file and ``run(quick=False, progress=None, **overrides) -> Result``.
``lnref prove`` runs them; the verdict rule and the exit code are in :mod:`lnref.claims.core`,
the statistics in :mod:`lnref.claims.stats`.

Per-layer quantities come from :mod:`lnref.probes`; what is measured inside a layer (the input
of each LN, the gradient on either side of an LN or a residual branch, each branch's output)
from :mod:`lnref.claims.trace`, which records the scheme's own calls.
"""

from __future__ import annotations

from importlib import import_module

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
    ("liu", "ADMIN_BETA"),
    ("residual", "COLLAPSE"),
    ("residual", "GRADIENT_BOUND"),
    ("b2t", "CLAIM"),
    ("deepnet", "CLAIM"),
    ("peri", "GROWTH"),
    ("peri", "FFN_GRADIENT"),
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
