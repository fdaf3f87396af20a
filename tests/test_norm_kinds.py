"""The norm kinds DyT, ScaleNorm and Derf: their parameters and initial values, their VJPs
against finite differences for every input, broken backward passes caught, the identities of
their equations, and every scheme's gradient check with them."""

import math

import numpy as np
import pytest

import lnref
from lnref import gradcheck as checker
from lnref import norms
from lnref.autograd import PRIMITIVES, kernels, ops
from lnref.gradcheck import check_vjp
from lnref.model import refusal

NEW_KINDS = ("dyt", "scalenorm", "derf")
SMALL = dict(d_model=8, n_heads=2, d_ff=16)


def assert_all_pass(checks):
    assert checks and all(c.status == "passed" for c in checks), checks


def assert_some_fail(checks):
    assert any(c.status == "failed" for c in checks), checks


def arguments(kind, seed, rows=4, d=6):
    """The kind's primitive as a function of Tensors, and a generic point: x, then its
    parameters in the primitive's order (the gains away from 1, the shifts away from 0)."""
    rng = np.random.default_rng(seed)
    x = 2.0 * rng.standard_normal((rows, d))
    gamma, beta = 1.0 + 0.5 * rng.standard_normal(d), rng.standard_normal(d)
    alpha, shift = np.asarray(0.4 + rng.random()), np.asarray(0.3 * rng.standard_normal())
    if kind == "dyt":
        return ops.dyt, (x, alpha, gamma, beta)
    if kind == "derf":
        return ops.derf, (x, alpha, shift, gamma, beta)
    return (lambda *t: ops.scale_norm(*t, eps=1e-5)), (x, np.asarray(1.0 + rng.random()))


# ----- the registry -----------------------------------------------------------------------


def test_every_kind_carries_a_one_line_equation():
    for kind in norms.NORM_KINDS.values():
        assert kind.equation and "\n" not in kind.equation, kind.name


@pytest.mark.parametrize(
    "kind,initial",
    [
        ("dyt", {"alpha": 0.5, "gamma": 1.0, "beta": 0.0}),
        ("derf", {"alpha": 0.5, "shift": 0.0, "gamma": 1.0, "beta": 0.0}),
        ("scalenorm", {"g": math.sqrt(8)}),
    ],
)
def test_a_kind_gives_every_norm_its_parameters_with_their_initial_values(kind, initial):
    model = lnref.build("pre", n_layers=2, norm=kind, **SMALL)
    for norm in ("layers.1.ln_attn", "layers.0.ln_ffn", "final_ln"):
        params = {name.rpartition(".")[2]: v for name, v in model.params.items() if name.startswith(norm + ".")}
        assert set(params) == set(initial)
        for name, value in initial.items():
            assert np.all(params[name] == value), (norm, name)
            assert params[name].shape == (() if name in ("alpha", "shift", "g") else (8,))


def test_a_scale_norm_per_head_starts_at_the_square_root_of_the_head_width():
    model = lnref.build("pre", n_layers=1, norm="scalenorm", qk_norm="head", **SMALL)
    assert model.params["layers.0.attn.q_norm.g"] == pytest.approx(2.0)


# ----- the primitives' VJPs -------------------------------------------------------------


@pytest.mark.parametrize("kind", NEW_KINDS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_vjp_passes_for_x_and_every_parameter(kind, seed):
    fn, args = arguments(kind, seed)
    assert_all_pass(check_vjp(fn, *args, seed=seed + 100))


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_the_vjp_passes_on_a_batch_of_heads(kind):
    fn, (x, *params) = arguments(kind, 4, rows=6, d=4)
    assert_all_pass(check_vjp(fn, x.reshape(2, 3, 1, 4), *params, seed=5))


def test_the_scale_norm_vjp_passes_where_the_clamp_holds():
    fn, (x, g) = arguments("scalenorm", 6)
    tiny = 1e-7 * x / np.linalg.norm(x, axis=1, keepdims=True)  # rows of norm 1e-7 < eps
    assert_all_pass(check_vjp(fn, tiny, g, seed=7, step=1e-10))


def test_dyt_deep_in_saturation_has_a_vanishing_but_correct_gradient():
    fn, (x, alpha, gamma, beta) = arguments("dyt", 8)
    checks = check_vjp(fn, x + 30.0, alpha, gamma, beta, seed=9)
    assert [c.status for c in checks][2:] == ["passed", "passed"]  # gamma and beta still see it
    assert all(c.status != "failed" for c in checks)


# ----- negative controls: a backward with a term dropped is caught --------------------------


def _dyt_without_the_tanh_slope(dy, x, alpha, gamma):
    dx, dalpha, dgamma, dbeta = kernels.dyt_backward_reference(dy, x, alpha, gamma)
    return dy * gamma * alpha, dalpha, dgamma, dbeta  # drops (1 - t^2) from dx


def _derf_without_the_shift_gradient(dy, x, alpha, shift, gamma):
    dx, dalpha, _, dgamma, dbeta = kernels.derf_backward_reference(dy, x, alpha, shift, gamma)
    return dx, dalpha, np.zeros_like(shift), dgamma, dbeta


def _scale_norm_without_the_radial_term(dy, x, g, norm, eps):
    r = np.maximum(norm, eps)[:, None]
    return g * dy / r, np.asarray(np.sum(dy * x / r), x.dtype)  # the map taken as linear everywhere


def _dyt_without_the_alpha_gradient(dy, x, alpha, gamma):
    dx, _, dgamma, dbeta = kernels.dyt_backward_reference(dy, x, alpha, gamma)
    return dx, np.zeros_like(alpha), dgamma, dbeta


@pytest.mark.parametrize(
    "kind,kernel,broken",
    [
        ("dyt", "dyt_backward", _dyt_without_the_tanh_slope),
        ("dyt", "dyt_backward", _dyt_without_the_alpha_gradient),
        ("derf", "derf_backward", _derf_without_the_shift_gradient),
        ("scalenorm", "scale_norm_backward", _scale_norm_without_the_radial_term),
    ],
)
def test_a_backward_with_a_term_dropped_fails_the_vjp_check(kind, kernel, broken):
    fn, args = arguments(kind, 10)
    with kernels.seam.replaced(kernel, broken):
        assert_some_fail(check_vjp(fn, *args, seed=11))


@pytest.mark.parametrize("scheme", ["pre", "post"])
def test_a_model_whose_dyt_forgets_the_alpha_gradient_fails_on_alpha(monkeypatch, scheme):
    vjp = PRIMITIVES["dyt"].vjp

    def without_dalpha(dout, residuals):
        dx, dalpha, dgamma, dbeta = vjp(dout, residuals)
        return dx, np.zeros_like(dalpha), dgamma, dbeta

    monkeypatch.setitem(PRIMITIVES, "dyt", PRIMITIVES["dyt"]._replace(vjp=without_dalpha))
    report = checker.gradcheck(lnref.build(scheme, n_layers=2, norm="dyt", **SMALL), batch=2, seq=4)
    failed = {r.tensor for r in report.results if r.status == "failed"}
    assert "layers.1.ln_ffn.alpha" in failed and not any(name.endswith(".gamma") for name in failed)


# ----- identities ---------------------------------------------------------------------------


def test_dyt_at_small_alpha_is_linear_up_to_a_cubic_term():
    # tanh(u) = u - u^3/3 + r(u), |r(u)| <= 2|u|^5/15 for |u| < 1: so
    # DyT(x) = gamma alpha x + beta - gamma (alpha x)^3 / 3 + O(alpha^5), the cubic term exactly
    rng = np.random.default_rng(12)
    x, gamma, beta = rng.standard_normal((3, 5)), 1 + rng.standard_normal(5), rng.standard_normal(5)
    eps = np.finfo(np.float64).eps
    for alpha in (1e-1, 1e-2, 1e-3):
        y = ops.dyt(x, np.asarray(alpha), gamma, beta).value
        rest = (y - (gamma * alpha * x + beta)) / alpha**3 + gamma * x**3 / 3
        rounding = 4 * eps * (np.abs(beta) + np.abs(gamma * alpha * x)) / alpha**3
        assert np.all(np.abs(rest) <= np.abs(gamma) * 2 * np.abs(x) ** 5 / 15 * alpha**2 + rounding)


def test_derf_at_small_alpha_and_zero_shift_is_linear_with_the_slope_of_erf_at_zero():
    rng = np.random.default_rng(13)
    x, gamma, beta = rng.standard_normal((3, 5)), 1 + rng.standard_normal(5), rng.standard_normal(5)
    alpha = 1e-4
    y = ops.derf(x, np.asarray(alpha), np.asarray(0.0), gamma, beta).value
    np.testing.assert_allclose(y, gamma * (2 / math.sqrt(math.pi)) * alpha * x + beta, rtol=1e-8, atol=1e-12)


def test_scale_norm_ignores_the_scale_of_its_input_and_puts_rows_on_the_sphere_of_radius_g():
    rng = np.random.default_rng(14)
    x, g = rng.standard_normal((4, 6)), np.asarray(2.5)
    y = ops.scale_norm(x, g, eps=1e-5).value
    np.testing.assert_allclose(ops.scale_norm(7.0 * x, g, eps=1e-5).value, y, rtol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 2.5, rtol=1e-14)


def test_dyt_and_derf_are_applied_element_by_element():
    # a point-wise map: one row's output does not depend on the others' values
    fn, (x, *params) = arguments("derf", 15)
    moved = x.copy()
    moved[0] *= 10.0
    for f in (fn, ops.dyt):
        args = params if f is fn else params[:1] + params[2:]
        np.testing.assert_array_equal(f(moved, *args).value[1:], f(x, *args).value[1:])


# ----- every scheme takes the kinds ------------------------------------------------------------


@pytest.mark.parametrize("kind", NEW_KINDS)
@pytest.mark.parametrize("mode", ["directional", "blockwise"])
@pytest.mark.parametrize("scheme", ["pre", "post"])
def test_pre_and_post_ln_pass_the_gradient_check_with_the_kind(kind, mode, scheme):
    model = lnref.build(scheme, n_layers=8, norm=kind, **SMALL)
    report = checker.gradcheck(model, mode=mode, batch=2, seq=4, workers=1)
    assert report.ok, report.to_text()
    status = {r.tensor: r.status for r in report.results}
    own = [name for name in status if name.rpartition(".")[2] in ("alpha", "shift", "g", "gamma")]
    assert own and all(status[name] == "passed" for name in own), report.to_text()


@pytest.mark.parametrize("kind", NEW_KINDS)
@pytest.mark.parametrize("scheme", [s for s in lnref.SCHEMES if refusal(s, norm="dyt") is None])
def test_every_scheme_that_takes_a_norm_passes_the_blockwise_check_with_the_kind(kind, scheme):
    model = lnref.build(scheme, n_layers=3, norm=kind, cross_attention=True, **SMALL)
    report = checker.gradcheck(model, mode="blockwise", batch=2, seq=4, workers=1)
    assert report.ok, report.to_text()


def test_a_float32_model_with_derf_stays_float32():
    model = lnref.build("pre", n_layers=2, norm="derf", dtype="float32", **SMALL)
    x, dy, _ = model.sample_inputs()
    _, grads = model.value_and_grad(x, dy)
    assert model(x).dtype == np.float32 and {g.dtype for g in grads.values()} == {np.dtype(np.float32)}
