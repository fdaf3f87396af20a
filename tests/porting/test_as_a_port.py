"""lnref.testing used as a porter uses it: a PyTorch port of four placements (porter.py) checked
with one call each. The correct port passes; each mistake that public ports of these schemes
have made fails, with a message naming the first diverging state and the likely cause."""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch runs the porting tests)")

import porter  # noqa: E402  (imports torch)

from lnref.testing import check_gradient, check_init, check_port  # noqa: E402

pytestmark = pytest.mark.torch


def port(**mistakes):
    return functools.partial(porter.run, **mistakes)


def failure_of(run, scheme, layers=(1, 2, 6), **config):
    with pytest.raises(AssertionError) as failed:
        check_port(run, scheme, layers, **config)
    return str(failed.value)


def first_failing(message):
    return next(line for line in message.splitlines() if line.startswith("first failing: "))


@pytest.mark.parametrize("scheme", ["post", "pre", "residual", "deepnorm"])
def test_the_correct_port_passes_at_every_depth_encoder_and_causal(scheme):
    cases = check_port(port(), scheme, causal=[False, True])
    assert len(cases) == 6 and all(comparison.failed == 0 and comparison.passed >= 20 for _, comparison in cases)


def test_residual_with_its_final_norm_inside_the_loop_fails_at_the_dual_stream_of_layer_1():
    message = failure_of(port(final_norm_in_loop=True), "residual")
    assert first_failing(message).startswith("first failing: hidden/1/x_d (a state entering layer 1")
    assert "the stack's final norm is applied inside the layer loop" in message


def test_deepnorm_with_alpha_on_the_branch_fails_at_the_output_of_layer_0_naming_its_equation():
    message = failure_of(port(alpha_on_branch=True), "deepnorm")
    line = first_failing(message)
    assert line.startswith("first failing: hidden/1/x (a state entering layer 1, the output of layer 0")
    assert "layer 0 itself differs from x <- LN(alpha x + S(x))" in line


def test_a_double_final_layernorm_fails_at_y_with_every_hidden_state_agreeing():
    message = failure_of(port(double_final_norm=True), "pre")
    assert first_failing(message).startswith("first failing: y (every hidden state agrees")
    assert "ACTUAL matches this model with its final norm applied twice" in message


def test_a_port_with_eps_1e_6_is_told_the_eps():
    message = failure_of(port(eps=1e-6), "post")
    assert first_failing(message).startswith("first failing: hidden/1/x")
    assert "ACTUAL matches this model with eps 1e-06, not the record's 1e-05" in message


def test_a_port_that_copies_w_into_nn_linear_untransposed_is_told_to_transpose():
    message = failure_of(port(untransposed=True), "pre")
    assert first_failing(message).startswith("first failing: hidden/1/x")
    assert "every square weight matrix used transposed (x @ W.T)" in message


def test_the_failure_lists_every_case_and_reports_the_first_failing_one_in_full():
    message = failure_of(port(eps=1e-6), "post", layers=(1, 2))
    lines = message.splitlines()
    assert lines[0] == "2 of 2 cases failed"
    assert lines[1].startswith("FAIL golden('post', 1)") and lines[2].startswith("FAIL golden('post', 2)")
    assert "worst at [" in message and "of its elements beyond the tolerance" in message


def test_a_mistake_that_shows_only_in_some_cases_fails_only_those():
    message = failure_of(port(untransposed=True), "post", layers=(1,), causal=[False, True])
    assert message.splitlines()[0] == "2 of 2 cases failed"
    cases = check_port(port(alpha_on_branch=True), "post", layers=(1,))  # no alpha in Post-LN: nothing to get wrong
    assert len(cases) == 1


# ----- the initialization ----------------------------------------------------------------


def sampler(**mistakes):
    def sample(config, seed):
        return porter.Port(config, **mistakes).initialized(seed)

    return sample


def test_check_init_passes_the_deepnorm_initialization():
    results = check_init(sampler(), "deepnorm", 6)
    assert len(results) == 6 * 16 and all(r.status == "ok" for r in results)


def test_check_init_flags_a_deepnorm_port_without_its_beta_scaling_and_names_the_tensors():
    with pytest.raises(AssertionError) as failed:
        check_init(sampler(no_beta=True), "deepnorm", 6)
    off = {line.split(":")[0] for line in str(failed.value).splitlines()[1:]}
    assert off == {f"layers.{l}.{name}" for l in range(6) for name in ("attn.wv", "attn.wo", "ffn.w1", "ffn.w2")}


def test_check_init_passes_the_plain_initialization_of_pre_ln():
    assert all(r.status == "ok" for r in check_init(sampler(), "pre", 2))


def test_check_init_flags_the_deepnorm_scaling_where_the_scheme_has_none():
    def deepnorm_scaled(config, seed):
        return porter.Port({**config, "scheme": "deepnorm"}).initialized(seed) | {
            k: v for k, v in porter.Port(config).initialized(seed).items() if k.startswith("final_ln")
        }

    with pytest.raises(AssertionError, match=r"layers\.0\.attn\.wv: off"):
        check_init(deepnorm_scaled, "pre", 2)


# ----- a hand-written backward -----------------------------------------------------------


def layer_norm(x, gamma, beta, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + eps)
    return (x - mean) * rstd * gamma + beta


def layer_norm_backward(dy, x, gamma, beta, eps=1e-5, forget_gamma=False):
    """The port's LayerNorm backward, as in llm.c: dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy gamma."""
    mean = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = dy if forget_gamma else dy * gamma
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).sum((0, 1)), dy.sum((0, 1))


@pytest.fixture
def point():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 3, 8)), 1 + 0.1 * rng.standard_normal(8), 0.1 * rng.standard_normal(8)


@pytest.mark.parametrize("forget_gamma", [False, True], ids=["correct", "gamma forgotten"])
def test_check_gradient_judges_a_hand_written_layer_norm_backward(point, forget_gamma):
    dy = np.random.default_rng(1).standard_normal((2, 3, 8))

    def f(*arrays):
        return np.sum(layer_norm(*arrays) * dy)

    def grad_f(*arrays):
        return layer_norm_backward(dy, *arrays, forget_gamma=forget_gamma)

    if not forget_gamma:
        assert all(check.status == "passed" for check in check_gradient(f, grad_f, *point))
        return
    with pytest.raises(AssertionError, match=r"argument 0 direction \d: failed") as failed:
        check_gradient(f, grad_f, *point)
    assert "argument 1" not in str(failed.value) and "argument 2" not in str(failed.value)
