"""lnref.claims and ``lnref prove``: the statistics, the verdict rule, the sublayer trace, and
the experiments' ability to fail (negative controls: a law applied where our derivation says
it does not hold flips the verdict)."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import lnref
from lnref import claims as registry
from lnref.autograd import Tape, Tensor, ops
from lnref.claims import core, stats, trace
from lnref.cli import main


def invoke(*args):
    return CliRunner().invoke(main, ["prove", *args])


# ----- statistics ---------------------------------------------------------------------------


def test_fit_line_recovers_slope_and_its_standard_error():
    rng = np.random.default_rng(0)
    x = np.arange(50.0)
    y = 2.0 + 0.5 * x + rng.standard_normal(50) * 0.1
    line = stats.fit_line(x, y)
    assert abs(line.slope - 0.5) < 3 * line.slope_se
    # the textbook standard error of the slope: sigma / sqrt(sum (x - mean)^2)
    assert line.slope_se == pytest.approx(0.1 / np.sqrt(np.sum((x - x.mean()) ** 2)), rel=0.3)


def test_fit_loglog_gives_the_exponent_of_a_power_law():
    x = np.array([2.0, 4.0, 8.0, 16.0])
    assert stats.fit_loglog(x, 3.0 * x**-0.5).slope == pytest.approx(-0.5, abs=1e-12)


def test_mean_se_is_std_over_sqrt_n():
    mean, se = stats.mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


@pytest.mark.parametrize(
    "value, se, outcome",
    [
        (1.0, 0.01, "holds"),  # inside, resolved
        (1.0, 0.2, "unresolved"),  # inside, but 2 se wider than the interval
        (1.3, 0.01, "fails"),  # outside by more than 2 se
        (1.11, 0.01, "unresolved"),  # outside by less than 2 se
        (1.0, None, "holds"),  # deterministic
        (float("nan"), 0.0, "unresolved"),
    ],
)
def test_judge_applies_the_preregistered_rule(value, se, outcome):
    assert stats.judge(value, se, 0.9, 1.1) == outcome


def test_judge_treats_one_sided_intervals_as_bounds():
    assert stats.judge(5.0, 10.0, -math.inf, 6.0) == "holds"
    assert stats.judge(7.0, 0.1, -math.inf, 6.0) == "fails"


# ----- verdicts ---------------------------------------------------------------------------


def _result(*checks, failure="refuted"):
    claim = core.Claim("test-claim", "t", "p", "x.md", run=lambda **_: None, failure_verdict=failure)
    return core.Result(claim, "pred", "meas", list(checks))


def test_verdict_confirmed_when_every_check_holds():
    result = _result(core.Check("a", "paper", 0, 1, 0.5), core.Check("b", "proof", 0, 1, 0.5))
    assert result.verdict == "confirmed" and not result.contradicts_proof


def test_a_failing_paper_check_gives_the_claims_failure_verdict():
    assert _result(core.Check("a", "paper", 0, 1, 2.0, expected=False), failure="corrected").verdict == "corrected"


def test_a_paper_statement_our_proof_rejects_is_not_a_contradiction():
    result = _result(core.Check("a", "paper", 0, 1, 2.0, expected=False))
    assert result.verdict == "refuted" and not result.contradicts_proof


def test_a_failing_proof_check_contradicts_the_proof():
    assert _result(core.Check("a", "proof", 0, 1, 2.0)).contradicts_proof


def test_a_holding_check_the_proof_expects_to_fail_contradicts_it():
    assert _result(core.Check("a", "paper", 0, 1, 0.5, expected=False)).contradicts_proof


def test_unresolved_checks_make_the_verdict_inconclusive_without_contradiction():
    result = _result(core.Check("a", "paper", 0, 1, 1.05, se=0.1))
    assert result.verdict == "inconclusive" and not result.contradicts_proof


# ----- the sublayer trace and the closed forms --------------------------------------------------


@pytest.mark.parametrize("scheme", ["post", "pre", "residual", "admin", "peri"])
def test_trace_reproduces_the_model_output(scheme):
    model = lnref.build(scheme, 3, d_model=8, n_heads=2, d_ff=16)
    x, dy, _ = model.sample_inputs(batch=2, seq=4)
    traced = trace.trace(model, x, dy)
    np.testing.assert_array_equal(traced.y.value, model(x))
    loss, grads = model.value_and_grad(x, dy)
    assert traced.loss == pytest.approx(loss, rel=1e-14)
    np.testing.assert_allclose(trace.grad_of(traced.x), grads["input"], rtol=1e-12, atol=1e-14)


def test_trace_records_every_branch_and_norm_of_post_ln_in_order():
    model = lnref.build("post", 2, d_model=8, n_heads=2, d_ff=16, cross_attention=True)
    x, _, memory = model.sample_inputs(batch=1, seq=3)
    traced = trace.trace(model, x, memory=memory)
    names = [(e.layer, e.kind, e.name) for e in traced.events]
    assert names[:6] == [
        (0, "branch", "attn"),
        (0, "norm", "ln_attn"),
        (0, "branch", "cross"),
        (0, "norm", "ln_cross"),
        (0, "branch", "ffn"),
        (0, "norm", "ln_ffn"),
    ]
    assert len(trace.sublayers(traced)) == 6


def test_closed_form_layer_norm_vjp_matches_autodiff():
    rng = np.random.default_rng(1)
    z, g = rng.standard_normal((5, 16)) * 3 + 1, rng.standard_normal((5, 16))
    leaf = Tensor(z, requires_grad=True)
    with Tape() as tape:
        out = ops.layer_norm(leaf, np.ones(16), np.zeros(16), eps=1e-5)
    tape.backward(out, g)
    np.testing.assert_allclose(trace.layer_norm_vjp(z, g, 1e-5), leaf.grad, rtol=1e-10, atol=1e-12)


def test_layer_norm_jacobian_negative_control_detects_a_wrong_centring():
    # Dropping the 1 1^T/d term (forgetting that the mean is removed) is caught by autodiff.
    z = np.random.default_rng(2).standard_normal(8) + 2.0
    wrong = trace.layer_norm_jacobian(z, 1e-5) + np.full((8, 8), 1.0 / 8) / np.sqrt(np.var(z) + 1e-5)
    from lnref.claims.ln_jacobian import autodiff_jacobian

    assert np.max(np.abs(wrong - autodiff_jacobian("layernorm", z))) > 1e-2
    np.testing.assert_allclose(
        trace.layer_norm_jacobian(z, 1e-5), autodiff_jacobian("layernorm", z), rtol=1e-10, atol=1e-12
    )


# ----- the experiments can fail: negative controls ------------------------------------------------
# The whole quick sweep runs once (through the command, as a user runs it); each negative control
# then re-runs one claim with a law applied where our derivation says it does not hold.


@pytest.fixture(scope="module")
def quick_sweep():
    result = CliRunner().invoke(main, ["prove", "--all", "--quick", "--json"])
    return result.exit_code, result.output, result.stdout


def quick_result(quick_sweep, claim_id):
    _, _, stdout = quick_sweep
    return {r["id"]: r for r in json.loads(stdout)["results"]}[claim_id]


def paper_check(entry, prefix):
    (check,) = [c for c in entry["checks"] if c["source"] == "paper" and c["statement"].startswith(prefix)]
    return check


def test_prove_all_quick_reports_a_verdict_for_every_claim_and_agrees_with_the_proofs(quick_sweep):
    exit_code, output, stdout = quick_sweep
    assert exit_code == 0, output[-2000:]
    document = json.loads(stdout)
    assert [r["id"] for r in document["results"]] == [c.id for c in registry.all_claims()]
    for entry in document["results"]:
        assert entry["verdict"] in core.VERDICTS
        assert not entry["contradicts_proof"]


def test_ln_jacobian_confirmed_and_flips_with_the_uncentred_law(quick_sweep):
    from lnref.claims import ln_jacobian

    assert quick_result(quick_sweep, "ln-jacobian")["verdict"] == "confirmed"
    control = ln_jacobian.run(quick=True, law="uncentred")
    assert control.verdict == "refuted" and control.contradicts_proof


def test_theorem1_pre_ln_law_applied_to_post_ln_flips_the_verdict(quick_sweep):
    from lnref.claims import xiong

    own = paper_check(quick_result(quick_sweep, "xiong-theorem1"), "post: ||dL/dW^2,L||_F ~ L^k")
    assert own["outcome"] == "holds"
    control = xiong.run_theorem1(quick=True, scheme="post", law=-0.5)
    assert control.verdict == "refuted" and control.contradicts_proof


def test_two_d_per_layer_law_applied_to_pre_ln_flips_the_verdict(quick_sweep):
    from lnref.claims import peri

    assert quick_result(quick_sweep, "peri-growth")["verdict"] == "confirmed"
    control = peri.run_growth(quick=True, scheme="pre")
    assert control.verdict == "refuted" and control.contradicts_proof


def test_xiong_three_halves_applied_to_a_4d_ffn_flips_the_verdict(quick_sweep):
    from lnref.claims import xiong

    assert quick_result(quick_sweep, "xiong-lemma2-post")["verdict"] == "confirmed"
    control = xiong.run_lemma2_post(quick=True, setting="lnref", law=1.5)
    assert control.verdict == "corrected" and control.contradicts_proof


def test_pre_ln_gradient_growth_applied_to_peri_ln_flips_the_verdict(quick_sweep):
    from lnref.claims import peri

    assert quick_result(quick_sweep, "peri-ffn-gradient")["verdict"] == "confirmed"
    control = peri.run_ffn_gradient(quick=True, scheme="peri", law=1.0)
    assert control.verdict == "refuted" and control.contradicts_proof


def test_deepnet_flat_update_law_applied_to_post_ln_flips_the_verdict(quick_sweep):
    from lnref.claims import deepnet

    own = paper_check(quick_result(quick_sweep, "deepnet"), "deepnorm: output change flat")
    assert own["outcome"] == "holds"
    control = deepnet.run(quick=True, scheme="post", law=0.0)
    assert control.verdict == "refuted" and control.contradicts_proof


def test_same_seed_same_bits():
    from lnref.claims import xiong

    first, second = xiong.run_lemma2_post(quick=True), xiong.run_lemma2_post(quick=True)
    assert json.dumps(first.to_dict()["checks"]) == json.dumps(second.to_dict()["checks"])


# ----- the command -----------------------------------------------------------------------------


def test_prove_list_names_every_claim():
    result = invoke("--list")
    assert result.exit_code == 0
    for claim in registry.all_claims():
        assert claim.id in result.output


def test_every_claim_has_its_proof_file():
    from pathlib import Path

    proofs = Path(__file__).resolve().parent.parent / "proofs"
    for claim in registry.all_claims():
        assert (proofs / claim.proof).is_file(), claim.proof
        assert f"({claim.proof})" in (proofs / "README.md").read_text()


def test_every_claim_has_one_row_in_the_proofs_index_in_the_registrys_order():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "proofs" / "README.md").read_text()
    rows = [line.split("`")[1] for line in readme.splitlines() if line.startswith("| [`")]
    assert rows == [claim.id for claim in registry.all_claims()]


# The index's figures come from the full sweep, too long for the suite; the claims whose full run
# takes a few seconds are run again here, so a row edited by hand, or left behind by a changed
# experiment, fails.
FAST_FULL_CLAIMS = (
    "ln-jacobian",
    "peri-ffn-gradient",
    "qk-norm-bounded-logits",
    "reordered-swinv2-identity",
    "ngpt-sphere",
)


@pytest.mark.parametrize("claim_id", FAST_FULL_CLAIMS)
def test_proofs_index_row_is_what_the_full_measurement_prints(claim_id):
    from pathlib import Path

    from lnref.cli.prove import index_row

    readme = (Path(__file__).resolve().parent.parent / "proofs" / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith(f"| [`{claim_id}`]")]
    (result,) = registry.run_claims([registry.get(claim_id)])
    assert row == index_row(result)


@pytest.mark.parametrize("args", [(), ("no-such-claim",), ("--all", "ln-jacobian"), ("--all", "--json", "--markdown")])
def test_prove_bad_input_is_one_line_and_exit_2(args):
    result = invoke(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_prove_exits_1_when_a_measurement_contradicts_the_proof(monkeypatch):
    def run(quick=False, progress=None):
        return core.Result(claim, "p", "m", [core.Check("x", "proof", 0, 1, 5.0)])

    claim = core.Claim("fake-claim", "t", "p", "fake.md", run=run)
    monkeypatch.setattr(registry, "all_claims", lambda: [claim])
    result = invoke("--all")
    assert result.exit_code == 1
    assert "contradicts" in result.output
