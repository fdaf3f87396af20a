"""``lnref prove``: run the experiments behind proofs/ and print prediction, measurement and
verdict for each claim. Exit 1 when a measurement contradicts what a proofs/ derivation
concludes (a paper statement our derivation says is false, measured false, is no failure)."""

from __future__ import annotations

import json
import sys

import click

from lnref.cli.options import EXIT_FAILED, EXIT_OK, fail, input_errors
from lnref.cli.sweep import SweepRequest, execute, load, sweep_options


@click.command()
@click.argument("claim_ids", nargs=-1, metavar="[CLAIM ...]")
@click.option("--all", "run_all", is_flag=True, help="Run every claim.")
@click.option("--quick", is_flag=True, help="Reduced sweep (the whole set in well under two minutes).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--markdown", is_flag=True, help="The rows of proofs/README.md's table on stdout.")
@click.option("--list", "list_only", is_flag=True, help="List the claims and exit.")
@click.option("--verbose", "-v", is_flag=True, help="Every check of every claim.")
@sweep_options
def prove(claim_ids, run_all, quick, as_json, markdown, list_only, verbose, **sweep):
    """Measure the papers' claims derived in proofs/ (confirmed / refuted / corrected / inconclusive).

    Each claim is a run of the sweep: the claims are shared out (--backend, --workers),
    recorded as they finish (--out) and resumed; --from renders records again.
    """
    from lnref import claims as registry

    request = SweepRequest.pop(sweep)
    if list_only:
        for claim in registry.all_claims():
            click.echo(f"{claim.id:24s} {claim.title}  [{claim.paper}]")
        sys.exit(EXIT_OK)
    if as_json and markdown:
        fail("--json and --markdown are exclusive")
    if request.from_path is not None:
        if run_all or claim_ids or quick:
            fail("--from renders the claims its records hold: give no claim, --all or --quick with it")
        records = load("prove", request.from_path)
        quick = all(record["config"]["quick"] for record in records)
        run_all = [record["config"]["claim"] for record in records] == [c.id for c in registry.all_claims()]
        claim_ids = () if run_all else tuple(record["config"]["claim"] for record in records)
    else:
        if run_all and claim_ids:
            fail("give claim ids or --all, not both")
        if not run_all and not claim_ids:
            fail("name one or more claims (see --list) or use --all")
        with input_errors():
            selected = registry.all_claims() if run_all else [registry.get(c) for c in dict.fromkeys(claim_ids)]
        records = execute("prove", registry.claim_tasks(selected, quick), request)
    with input_errors():
        results = [registry.result_from_dict(record["result"]) for record in records]
    if not (as_json or markdown):
        for result in results:
            click.echo(_text(result, verbose))
    contradicted = [r.claim.id for r in results if r.contradicts_proof]
    if as_json:
        click.echo(
            json.dumps(
                {"quick": quick, "results": [r.to_dict() for r in results], "contradicts_proof": contradicted}, indent=2
            )
        )
    elif markdown:
        command = "lnref prove " + ("--all" if run_all else " ".join(dict.fromkeys(claim_ids)))
        click.echo(_markdown(results, command + (" --quick" if quick else "") + " --markdown"))
    else:
        summary = ", ".join(
            f"{v} {sum(r.verdict == v for r in results)}" for v in ("confirmed", "corrected", "refuted", "inconclusive")
        )
        click.echo(
            f"{len(results)} claims: {summary}; "
            + (
                f"CONTRADICTS proofs/: {', '.join(contradicted)}"
                if contradicted
                else "every measurement agrees with the derivations in proofs/"
            )
        )
    sys.exit(EXIT_FAILED if contradicted else EXIT_OK)


def _text(result, verbose):
    claim = result.claim
    lines = [
        f"{claim.id}  ({claim.paper}; proofs/{claim.proof})",
        f"  claim:       {claim.title}",
        f"  prediction:  {result.prediction}",
        f"  measurement: {result.measurement}",
        f"  verdict:     {result.verdict.upper()}" + _verdict_note(result),
    ]
    for check in result.checks:
        if not verbose and check.outcome == "holds" and check.expected and not check.contradicts_proof:
            continue
        note = ""
        if check.contradicts_proof:
            note = "  <- contradicts proofs/"
        elif not check.expected and check.outcome == "fails":
            note = "  (fails, as the derivation predicts)"
        lines.append(
            f"    [{check.outcome:10s}] ({check.source}) {check.statement}: "
            f"{check.measured_text()}, predicted {check.interval_text()}{note}"
        )
    lines.append(f"  ({result.seconds:.1f} s)")
    return "\n".join(lines)


def _verdict_note(result):
    if result.contradicts_proof:
        return "   ** contradicts the derivation in proofs/ **"
    if result.verdict in ("refuted", "corrected"):
        return (
            f" (the paper's statement; the derivation in proofs/{result.claim.proof} predicts this "
            "and the measurement agrees with it)"
        )
    return ""


def _markdown(results, command):
    rows = ["| claim | statement | verdict | measured |", "| --- | --- | --- | --- |"]
    rows += [index_row(result) for result in results]
    rows.append("")
    rows.append(f"Produced by `{command}`.")
    return "\n".join(rows)


def index_row(result):
    """The row of proofs/README.md's index for one claim's result."""
    verdict = result.verdict + (" (contradicts proof!)" if result.contradicts_proof else "")
    return (
        f"| [`{result.claim.id}`]({result.claim.proof}) | {_cell(result.claim.title)} | {verdict} | "
        f"{_cell(result.measurement)} |"
    )


def _cell(text):
    """Table-cell text: a literal | would end the cell."""
    return text.replace("|", "\\|")
