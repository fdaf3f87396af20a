"""A norm and an add as one primitive: y = a + LN(b), ``add_layer_norm``, and y = LN(a + b),
``layer_norm_of_sum``; the replay's fusion of a norm whose output is added to another value
(a norm after a branch, a second stream's norm) into the first, and of a norm of a sum nothing
else reads (a stream renormalized after its add) into the second."""

import numpy as np
import pytest
from tape_helpers import recorded_program, taped_and_replayed

import lnref
from lnref.autograd import fused_branches, ops
from lnref.autograd.primitive import PRIMITIVES
from lnref.autograd.replay import Replayer
from lnref.gradcheck import check_vjp

SMALL = dict(n_layers=3, d_model=16, n_heads=2, d_ff=64)


def _arrays(shape=(2, 3, 8), seed=0):
    rng = np.random.default_rng(seed)
    d = shape[-1]
    return (
        rng.standard_normal(shape),
        rng.standard_normal(shape),
        1 + 0.1 * rng.standard_normal(d),
        rng.standard_normal(d),
    )


def test_add_layer_norm_gives_the_bits_of_the_norm_and_the_add():
    a, b, gamma, beta = _arrays()
    y = fused_branches.add_layer_norm(a, b, gamma, beta, eps=1e-3)
    np.testing.assert_array_equal(y.value, (a + ops.layer_norm(b, gamma, beta, eps=1e-3)).value)


def test_add_layer_norm_vjp_matches_finite_differences():
    checks = check_vjp(fused_branches.add_layer_norm, *_arrays())
    assert len(checks) == 4 and all(c.status == "passed" for c in checks), checks


def test_a_vjp_that_drops_the_norms_cotangent_fails_the_check(monkeypatch):
    """The negative control of the VJP check."""
    defined = PRIMITIVES["add_layer_norm"]

    def broken_vjp(dout, residuals):
        da, db, dgamma, dbeta = defined.vjp(dout, residuals)
        return da, np.zeros_like(db), dgamma, dbeta

    monkeypatch.setitem(PRIMITIVES, "add_layer_norm", defined._replace(vjp=broken_vjp))
    checks = check_vjp(fused_branches.add_layer_norm, *_arrays())
    assert [c.status for c in checks] == ["passed", "failed", "passed", "passed"]


@pytest.mark.parametrize(
    "arrays, eps",
    [
        (lambda a, b, g, s: (a, b, g[:4], s), 1e-5),
        (lambda a, b, g, s: (a[:, :2], b, g, s), 1e-5),
        (lambda a, b, g, s: (a, b, g, s), 0.0),
    ],
    ids=["a gain of the wrong width", "operands that do not broadcast", "eps zero"],
)
def test_inputs_that_do_not_fit_are_refused_in_one_line_naming_the_op(arrays, eps):
    with pytest.raises(ValueError, match=r"^add_layer_norm: [^\n]*$"):
        fused_branches.add_layer_norm(*arrays(*_arrays()), eps=eps)


# (SiameseNorm's streams' norms are inside its two-stream steps: tests/test_fusion_siamese.py.)
@pytest.mark.parametrize("scheme, per_layer", [("sandwich", 2)])
def test_a_norm_added_to_another_value_replays_as_one_step(scheme, per_layer):
    model = lnref.build(scheme, **SMALL)
    taped_and_replayed(model)
    names = [step[0] for step in recorded_program(model).fused_steps]
    assert names.count("add_layer_norm") >= per_layer * SMALL["n_layers"]


@pytest.mark.parametrize("scheme", ["siamese", "sandwich"])
@pytest.mark.parametrize("config", [{}, {"dtype": "float32"}], ids=["float64", "float32"])
def test_a_fused_added_norm_gives_the_bits_of_the_taped_pass(scheme, config):
    model = lnref.build(scheme, **SMALL, **config)
    taped, replayed = taped_and_replayed(model)
    (loss_a, grads_a), (loss_b, grads_b) = taped, replayed
    assert loss_a == loss_b
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


def test_a_broken_add_layer_norm_backward_changes_the_replayed_gradient(monkeypatch):
    """The negative control of the bit test: it catches a fused VJP off by a part in a billion."""
    model = lnref.build("sandwich", **SMALL)
    taped, _ = taped_and_replayed(model)
    defined = PRIMITIVES["add_layer_norm"]

    def off_by_a_little(dout, residuals):
        da, db, dgamma, dbeta = defined.vjp(dout, residuals)
        return da, db * (1 + 1e-9), dgamma, dbeta

    monkeypatch.setitem(PRIMITIVES, "add_layer_norm", defined._replace(vjp=off_by_a_little))
    x, dy, memory = model.sample_inputs(seed=1)
    broken = model.value_and_grad(x, dy, memory)
    assert taped[0] == broken[0]
    assert not np.array_equal(taped[1]["layers.0.attn.wq"], broken[1]["layers.0.attn.wq"])


def _added_normrecorded_program(between):
    """The program of sum(a + LN(b)), with ``between`` a step between the norm and the add
    that reads b (or not)."""

    def fn(a, b, gamma, beta):
        normed = ops.layer_norm(b, gamma, beta)
        squared = b * b if between else a * a
        return ops.sum((a + normed) * squared)

    replayer = Replayer()
    arrays = list(_arrays())
    taped = replayer.value_and_grad("key", fn, arrays, [True] * 4)
    replayed = replayer.value_and_grad("key", fn, arrays, [True] * 4)
    return replayer.programs["key"], taped, replayed


def test_an_added_norm_is_fused_when_no_step_between_reads_its_input():
    program, (loss_a, grads_a), (loss_b, grads_b) = _added_normrecorded_program(between=False)
    assert [step[0] for step in program.fused_steps] == ["mul", "add_layer_norm", "mul", "sum"]
    assert loss_a.value == loss_b.value
    for taped, replayed in zip(grads_a, grads_b):
        np.testing.assert_array_equal(taped, replayed)


def test_an_added_norm_is_not_fused_when_a_step_between_reads_its_input():
    """b's cotangent from the norm would join its other terms at the add's place, after the
    term of the step between: another order of the sum than the tape's."""
    program, _, _ = _added_normrecorded_program(between=True)
    assert program.fused_steps == program.steps


# ----- layer_norm_of_sum ----------------------------------------------------------------


def test_layer_norm_of_sum_gives_the_bits_of_the_add_and_the_norm():
    a, b, gamma, beta = _arrays()
    y = fused_branches.layer_norm_of_sum(a, b, gamma, beta, eps=1e-3)
    np.testing.assert_array_equal(y.value, ops.layer_norm(a + b, gamma, beta, eps=1e-3).value)


def test_layer_norm_of_sum_vjp_matches_finite_differences():
    checks = check_vjp(fused_branches.layer_norm_of_sum, *_arrays(seed=1))
    assert len(checks) == 4 and all(c.status == "passed" for c in checks), checks


def test_a_vjp_that_drops_the_second_terms_cotangent_fails_the_check(monkeypatch):
    """The negative control of the VJP check."""
    defined = PRIMITIVES["layer_norm_of_sum"]

    def broken_vjp(dout, residuals):
        da, db, dgamma, dbeta = defined.vjp(dout, residuals)
        return da, np.zeros_like(db), dgamma, dbeta

    monkeypatch.setitem(PRIMITIVES, "layer_norm_of_sum", defined._replace(vjp=broken_vjp))
    checks = check_vjp(fused_branches.layer_norm_of_sum, *_arrays(seed=1))
    assert [c.status for c in checks] == ["passed", "failed", "passed", "passed"]


@pytest.mark.parametrize(
    "arrays, eps",
    [
        (lambda a, b, g, s: (a, b, g[:4], s), 1e-5),
        (lambda a, b, g, s: (a[:, :2], b, g, s), 1e-5),
        (lambda a, b, g, s: (a, b, g, s), float("nan")),
    ],
    ids=["a gain of the wrong width", "operands that do not broadcast", "eps NaN"],
)
def test_layer_norm_of_sum_refuses_inputs_that_do_not_fit_in_one_line_naming_the_op(arrays, eps):
    with pytest.raises(ValueError, match=r"^layer_norm_of_sum: [^\n]*$"):
        fused_branches.layer_norm_of_sum(*arrays(*_arrays()), eps=eps)


def test_layer_norm_of_sum_with_a_divisor_gives_the_bits_of_the_div_the_add_and_the_norm():
    a, b, gamma, beta = _arrays()
    y = fused_branches.layer_norm_of_sum(a, b, gamma, beta, 2.449, eps=1e-3)
    np.testing.assert_array_equal(y.value, ops.layer_norm(a + ops.div(b, 2.449), gamma, beta, eps=1e-3).value)


def test_layer_norm_of_sum_with_a_divisor_has_the_vjp_of_its_composition():
    checks = check_vjp(lambda *args: fused_branches.layer_norm_of_sum(*args, 2.449), *_arrays(seed=1))
    assert len(checks) == 4 and all(c.status == "passed" for c in checks), checks


def test_a_vjp_that_forgets_the_divisor_fails_the_check(monkeypatch):
    """The negative control of the VJP check with a divisor: b's cotangent taken undivided."""
    defined = PRIMITIVES["layer_norm_of_sum"]

    def undivided(dout, residuals):
        da, _, dgamma, dbeta, _ = defined.vjp(dout, residuals)
        return da, da, dgamma, dbeta, None

    monkeypatch.setitem(PRIMITIVES, "layer_norm_of_sum", defined._replace(vjp=undivided))
    checks = check_vjp(lambda *args: fused_branches.layer_norm_of_sum(*args, 2.449), *_arrays(seed=1))
    assert [c.status for c in checks] == ["passed", "failed", "passed", "passed"]


@pytest.mark.parametrize("divisor", [np.full(8, 2.0), np.float64(2.0)], ids=["an array", "a NumPy scalar"])
def test_layer_norm_of_sum_refuses_a_divisor_that_is_not_a_number_in_one_line(divisor):
    with pytest.raises(ValueError, match=r"^layer_norm_of_sum: divisor must be a number[^\n]*$"):
        fused_branches.layer_norm_of_sum(*_arrays(), divisor)


def test_a_broken_layer_norm_of_sum_backward_changes_the_replayed_gradient(monkeypatch):
    """The negative control of the bit tests (the divided total's below): a fused VJP off by a
    part in a billion."""
    defined = PRIMITIVES["layer_norm_of_sum"]

    def off_by_a_little(dout, residuals):
        da, *rest = defined.vjp(dout, residuals)
        return (da * (1 + 1e-9), *rest)

    monkeypatch.setitem(PRIMITIVES, "layer_norm_of_sum", defined._replace(vjp=off_by_a_little))
    program, (loss_a, grads_a), (loss_b, grads_b) = _divided_totalrecorded_program(between=None)
    assert "layer_norm_of_sum" in [step[0] for step in program.fused_steps]
    assert loss_a.value == loss_b.value
    assert not np.array_equal(grads_a[0], grads_b[0])


def _normed_totalrecorded_program(between):
    """The program of sum(LN(a + b) * c), with ``between`` a step between the add and the norm
    that reads a (or c)."""

    def fn(a, b, gamma, beta, c):
        total = a + b
        squared = a * a if between else c * c
        return ops.sum(ops.layer_norm(total, gamma, beta) * squared)

    replayer = Replayer()
    arrays = [*_arrays(), np.random.default_rng(2).standard_normal((2, 3, 8))]
    taped = replayer.value_and_grad("key", fn, arrays, [True] * 5)
    replayed = replayer.value_and_grad("key", fn, arrays, [True] * 5)
    return replayer.programs["key"], taped, replayed


def test_a_normed_total_is_fused_when_no_step_between_reads_its_terms():
    program, (loss_a, grads_a), (loss_b, grads_b) = _normed_totalrecorded_program(between=False)
    assert [step[0] for step in program.fused_steps] == ["mul", "layer_norm_of_sum", "mul", "sum"]
    assert loss_a.value == loss_b.value
    for taped, replayed in zip(grads_a, grads_b):
        np.testing.assert_array_equal(taped, replayed)


def test_a_normed_total_is_not_fused_when_a_step_between_reads_a_term():
    """a's cotangent from the add would join its other terms at the norm's place, before the
    term of the step between: another order of the sum than the tape's."""
    program, _, _ = _normed_totalrecorded_program(between=True)
    assert program.fused_steps == program.steps


def _divided_totalrecorded_program(between):
    """The program of sum(LN(a + b / 3) * e * f), with ``between`` the reader of a or b between
    the div and the norm ("a" or "b", with e = a * c or b * c, or None, e = c * c), and f = b *
    c, b's third reader, after the norm when ``between`` is "b twice" (b's cotangent then a sum
    of three terms)."""

    def fn(a, b, gamma, beta, c):
        quotient = b / 3.0
        extra = a * c if between == "a" else b * c if between in ("b", "b twice") else c * c
        total = a + quotient
        normed = ops.layer_norm(total, gamma, beta) * extra
        return ops.sum(normed * b if between == "b twice" else normed)

    replayer = Replayer()
    arrays = [*_arrays(), np.random.default_rng(2).standard_normal((2, 3, 8))]
    taped = replayer.value_and_grad("key", fn, arrays, [True] * 5)
    replayed = replayer.value_and_grad("key", fn, arrays, [True] * 5)
    return replayer.programs["key"], taped, replayed


@pytest.mark.parametrize("between", [None, "b"], ids=["none", "the divided term's one other reader"])
def test_a_divided_total_is_fused_with_its_division_and_gives_the_taped_bits(between):
    program, (loss_a, grads_a), (loss_b, grads_b) = _divided_totalrecorded_program(between)
    assert [step[0] for step in program.fused_steps] == ["mul", "layer_norm_of_sum", "mul", "sum"]
    assert loss_a.value == loss_b.value
    for taped, replayed in zip(grads_a, grads_b):
        np.testing.assert_array_equal(taped, replayed)


@pytest.mark.parametrize("between", ["a", "b twice"])
def test_a_divided_total_keeps_its_division_when_a_step_between_reads_a_term(between):
    """a's cotangent (or b's, a sum of three terms) would be summed in another order than the
    tape's."""
    program, _, _ = _divided_totalrecorded_program(between)
    assert "div" in [step[0] for step in program.fused_steps]
