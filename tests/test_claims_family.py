"""The claims of the family's papers and the output change under the first Adam step: the update
machinery (a model seen through a Network, Adam's first step, the exact first-order identity, the
block Jacobian's probe estimate), and one negative control per proofs/ file: a prediction the
derivation rejects, applied on purpose, fails and is reported as contradicting proofs/.

The test suite's one run of ``lnref prove --all --quick`` (tests/test_claims.py) checks every
claim's own verdict against its proofs/ file."""

import numpy as np
import pytest

import lnref
from lnref.autograd import Tape, Tensor
from lnref.claims import adam, dslm, dyt, lns, ngpt, normformer, qk_norm, reordered, siamese, subln, tfixup
from lnref.claims.perturb import network, output_tangent, weight_names
from lnref.claims.trace import block_jacobian_deviation, trace
from lnref.claims.updates import adam_direction, sweep
from lnref.optim import Adam

# ----- the update machinery ------------------------------------------------------------------


@pytest.fixture
def small():
    model = lnref.build("post", 2, d_model=8, n_heads=2, d_ff=16, seed=3)
    x, dy, _ = model.sample_inputs(batch=2, seq=4)
    return model, x, dy


def test_network_output_at_the_models_parameters_is_the_models_output(small):
    model, x, _ = small
    np.testing.assert_array_equal(network(model, x).output(model.params), model(x))


def test_network_gradient_is_the_models_gradient(small):
    model, x, dy = small
    _, grads = model.value_and_grad(x, dy)
    for name, grad in network(model, x).gradient(dy).items():
        np.testing.assert_array_equal(grad, grads[name])


def test_adam_direction_is_lnref_adams_first_step_and_the_sign_of_the_gradient(small):
    model, x, dy = small
    step, grads = adam_direction(network(model, x), dy)
    names = weight_names(model.params)
    assert sorted(step) == sorted(names)
    weights = {name: model.params[name].copy() for name in names}
    Adam(weights).step(weights, {name: grads[name] for name in names}, lr=1.0)
    for name in names:
        np.testing.assert_array_equal(step[name], weights[name] - model.params[name])
        large = np.abs(grads[name]) > 1e-4
        np.testing.assert_allclose(step[name][large], -np.sign(grads[name][large]), atol=1e-4)


def test_first_order_loss_change_along_adams_step_is_minus_its_descent(small):
    model, x, dy = small
    net = network(model, x)
    step, grads = adam_direction(net, dy)
    descent = -sum(float(np.sum(grads[name] * value)) for name, value in step.items())
    assert np.sum(output_tangent(net, step) * dy) == pytest.approx(-descent, rel=1e-8)


def test_output_tangent_is_linear_in_the_directions_size(small):
    model, x, _ = small
    net = network(model, x)
    direction = {name: np.ones_like(model.params[name]) for name in weight_names(model.params)}
    doubled = {name: 2 * value for name, value in direction.items()}
    np.testing.assert_allclose(output_tangent(net, doubled), 2 * output_tangent(net, direction), rtol=1e-7)


def test_encoder_decoder_network_gradient_is_the_models_gradient():
    model = lnref.build("pre", encoder_layers=1, decoder_layers=1, d_model=8, n_heads=2, d_ff=16, seed=3)
    x, dy, _ = model.sample_inputs(batch=2, seq=4)
    net = network(model, x)
    assert np.array_equal(net.output(model.params), model(*x))
    grads = net.gradient(dy)
    for name, value in model.value_and_grad(*x, dy)[1].items():
        np.testing.assert_array_equal(grads[name], value)


def test_sweep_moves_only_the_named_stacks_weights():
    from lnref.claims.updates import encoder_decoder_model

    encoder = sweep("post", (1,), range(1), 8, "adam", make=encoder_decoder_model, stack="encoder")
    both = sweep("post", (1,), range(1), 8, "adam", make=encoder_decoder_model)
    assert 0 < encoder.descent[0, 0] < both.descent[0, 0]


def test_sweep_refuses_an_unknown_update_model():
    with pytest.raises(ValueError, match="update must be one of"):
        sweep("pre", (2,), range(1), 8, "sgd")


def test_block_jacobian_probes_estimate_the_exact_deviation():
    model = lnref.build("pre", 1, d_model=4, n_heads=1, d_ff=8, seed=0)
    x, _, _ = model.sample_inputs(batch=1, seq=2)
    exact = np.zeros((x.size, x.size))
    for column in range(x.size):
        leaf = Tensor(x, requires_grad=True)
        with Tape() as tape:
            (out,) = model.layer(model.run(), 0, (leaf,))
        tape.backward(out, np.eye(x.size)[column].reshape(x.shape))
        exact[column] = leaf.grad.ravel()
    target = np.linalg.norm(exact - np.eye(x.size)) / np.sqrt(x.size)
    estimate = block_jacobian_deviation(model, (x,), 0, 2000, np.random.default_rng(0))
    assert estimate == pytest.approx(target, rel=0.05)


def test_trace_with_pieces_records_the_queries_and_keys_a_scheme_hands_its_attention():
    model = lnref.build("ngpt", 2, d_model=8, n_heads=2, d_ff=16, seed=0)
    x, _, _ = model.sample_inputs(batch=1, seq=4)
    traced = trace(model, x, pieces=True)
    names = [(e.layer, e.name) for e in traced.select("piece")]
    assert names == [(0, "attn.q_norm"), (0, "attn.k_norm"), (1, "attn.q_norm"), (1, "attn.k_norm")]
    assert not trace(model, x).select("piece")


def test_block_jacobian_deviation_of_an_identity_block_is_zero():
    model = lnref.build("reordered", 2, d_model=8, n_heads=2, d_ff=16, options={"init": "swinv2"})
    x, _, _ = model.sample_inputs(batch=1, seq=3)
    assert block_jacobian_deviation(model, (x,), 1, 2, np.random.default_rng(0)) == 0.0


# ----- negative controls: one wrong prediction per proofs/ file fails ---------------------------------


def failing(result, prefix=""):
    return [c for c in result.checks if c.outcome == "fails" and c.contradicts_proof and c.statement.startswith(prefix)]


def test_liu_adam_the_random_updates_log_law_applied_to_adams_step_fails():
    result = adam.run_liu(quick=True, scheme="pre", law="random")
    assert result.verdict == "refuted" and failing(result, "pre: output change O(log N)")


def test_liu_adam_the_random_updates_log_law_applied_to_an_encoder_decoders_adam_step_fails():
    checks, _, _ = adam.encoder_decoder_checks(("pre",), quick=True, progress=None, law="random", tag="control")
    assert [c for c in checks if c.outcome == "fails" and c.contradicts_proof and "O(log N)" in c.statement]


def test_deepnet_adam_a_flat_update_under_adams_step_fails():
    result = adam.run_deepnet(quick=True, scheme="deepnorm", law="random")
    assert result.verdict == "refuted" and failing(result, "deepnorm: output change flat")


def test_tfixup_a_depth_independent_adam_update_fails():
    result = tfixup.run(quick=True, law="paper")
    assert result.verdict == "refuted" and failing(result, "tfixup: the output change of the first Adam step")


def test_lns_curse_exponential_growth_at_init_fails():
    result = lns.run_curse(quick=True, law="exponential")
    assert result.verdict == "corrected" and failing(result, "pre: the variance grows exponentially")


def test_lns_scaling_law_applied_to_pre_ln_fails():
    result = lns.run_scaling(quick=True, scheme="pre")
    assert result.verdict == "refuted" and failing(result, "pre: slows Pre-LN's growth")


def test_normformer_narrowing_the_ratio_at_init_fails():
    result = normformer.run(quick=True, law="paper")
    assert result.verdict == "refuted" and failing(result, "normformer narrows the ratio")


def test_subln_invariance_to_the_weights_scale_applied_to_pre_ln_fails():
    result = subln.run_branch(quick=True, scheme="pre", law=0.0)
    assert result.verdict == "refuted" and failing(result, "pre: ffn output variance ~ (scale of W_v, W_1)")


def test_subln_growth_rate_without_the_ffns_width_factor_fails():
    result = subln.run_growth(law=2.0)
    assert result.contradicts_proof and failing(result, "12 layers: slope of E||x_l||^2/d = 2.00 gamma^2")


def test_dslm_near_one_variance_applied_to_pre_ln_fails():
    result = dslm.run(quick=True, scheme="pre", law="near")
    assert result.verdict == "corrected" and failing(result, "pre: forward variance within a factor 1.25")


def test_qk_norm_invariance_of_a_value_projection_without_a_norm_fails():
    result = qk_norm.run_invariance(quick=True, law="value")
    assert result.verdict == "refuted" and failing(result, "W_v without a norm after it: the output is unchanged")


def test_qk_norm_bound_applied_to_attention_without_a_norm_fails():
    result = qk_norm.run_bounded(quick=True, variant="none")
    assert result.verdict == "refuted" and failing(result, "none: |logit| <=")


def test_reordered_growth_law_applied_to_pre_ln_fails():
    result = reordered.run_growth(quick=True, scheme="pre")
    assert result.verdict == "refuted" and failing(result, "pre: each sublayer adds d")


def test_swinv2_identity_applied_to_the_olmo2_init_fails():
    result = reordered.run_identity(quick=True, init="olmo2")
    assert result.verdict == "refuted" and failing(result, "olmo2: the stack is the identity")


def test_dyt_tracking_ln_in_the_tails_fails():
    result = dyt.run(quick=True, law="tails")
    assert result.verdict == "refuted" and failing(result, "DyT tracks LN in the tails too")


def test_ngpt_unit_sphere_and_logit_bounds_applied_to_pre_ln_fail():
    result = ngpt.run(quick=True, scheme="pre")
    assert result.verdict == "refuted" and failing(result, "pre: every state and sublayer input on the unit sphere")
    assert failing(result, "pre: |attention logit| <=") and failing(result, "pre: |output logit| <=")


def test_siamese_power_law_bound_applied_to_post_ln_fails():
    result = siamese.run(quick=True, scheme="post")
    assert result.verdict == "refuted" and failing(result, "post: bounded below by a power of L")


def test_ngpt_sphere_prints_a_deviation_of_a_few_roundings_as_the_bound():
    assert ngpt._deviation(5.6e-16) == "< 1e-15"


def test_ngpt_sphere_prints_a_deviation_past_a_few_roundings_with_its_digits():
    assert ngpt._deviation(2.3e-15) == "2.3e-15"
