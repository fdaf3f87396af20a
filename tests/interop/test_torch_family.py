"""The rest of the family against the PyTorch port: schemes, norm kinds, QK-norm variants.

As in test_torch_interop.py: y, the loss, every gradient and every hidden state of lnref's
golden file agree with lnref.ports.torch to 1e-10 relative in float64 (agreement.py), at 1, 6 and
48 layers; the port is written from the papers and takes from lnref only parameter names
and option names.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (pip install torch==2.13.0 runs the interop tests)"
)

from agreement import SMALL, assert_agrees, disagreements, export, nudged, stored, sublayer  # noqa: E402

import lnref  # noqa: E402
from lnref.golden import export_golden  # noqa: E402
from lnref.ports import torch as torch_port  # noqa: E402

pytestmark = pytest.mark.torch

DEPTHS = (1, 6, 48)
QK_NORMS = ("head", "full", "head+v", "l2", "cosine")
NORM_KINDS = ("dyt", "scalenorm", "derf")
NEW_SCHEMES = ("reordered", "subln", "hybridnorm", "normformer", "lns", "layerscale", "parallel", "tfixup", "dslm")
OPTIONS = (  # every option of the new schemes set away from its default
    ("reordered", {"init": "swinv2"}),
    ("hybridnorm", {"first_block": "pre"}),
    ("normformer", {"head_scale": "fairseq"}),
    ("normformer", {"resid_scale": True}),
    ("layerscale", {"init_scale": 0.5}),
    ("parallel", {"norms": "two"}),
    ("dslm", {"placement": "post"}),
    ("dslm", {"beta_sq": 0.1}),
)
VARIANTS = tuple((scheme, {}) for scheme in NEW_SCHEMES) + OPTIONS
NORMED = tuple(scheme for scheme in NEW_SCHEMES if scheme != "tfixup")  # T-Fixup has no norm
TAKING_QK_NORM = tuple(scheme for scheme in NORMED if scheme != "hybridnorm")  # HybridNorm has its own
GELUS = tuple(name for name in lnref.nn.ACTIVATIONS if name.startswith("gelu"))  # gelu, gelu_tanh
EARLIER = ("post", "pre", "residual", "b2t", "admin", "deepnorm", "sandwich", "peri", "mixln", "dlcl", "rezero")


def label(variant):
    scheme, options = variant
    return "-".join([scheme, *(f"{name}={value}" for name, value in options.items())])


# ----- the new schemes --------------------------------------------------------------------


@pytest.mark.parametrize("layers", DEPTHS)
@pytest.mark.parametrize("scheme", NEW_SCHEMES)
def test_port_agrees_on_each_new_scheme(tmp_path, scheme, layers):
    """HybridNorm's stream is normalized after each layer, and 48 of them make the tokens
    alike as Post-LN does: there the q, k and v norms' gradients of the upper layers are
    judged where float64 decides them (agreement.assert_agrees)."""
    assert_agrees(export(tmp_path, scheme, layers), undecided_by_float64=(scheme, layers) == ("hybridnorm", 48))


@pytest.mark.parametrize("layers", DEPTHS)
@pytest.mark.parametrize("scheme, options", OPTIONS, ids=map(label, OPTIONS))
def test_port_agrees_on_each_option_of_the_new_schemes(tmp_path, scheme, options, layers):
    undecided = (scheme, layers) == ("hybridnorm", 48)  # as in the test above
    assert_agrees(export(tmp_path, scheme, layers, options=options), undecided_by_float64=undecided)


@pytest.mark.parametrize("scheme, options", VARIANTS, ids=map(label, VARIANTS))
def test_port_agrees_on_each_new_scheme_at_a_generic_point(tmp_path, scheme, options):
    """No gain at 1, no shift, bias or head scale at 0, no two head scales equal."""
    assert_agrees(export(tmp_path, scheme, 6, generic=True, options=options))


@pytest.mark.parametrize("scheme, options", VARIANTS, ids=map(label, VARIANTS))
def test_port_agrees_on_each_new_scheme_as_a_causal_decoder_with_cross_attention(tmp_path, scheme, options):
    assert_agrees(export(tmp_path, scheme, 6, generic=True, options=options, cross_attention=True, causal=True))


@pytest.mark.parametrize("activation", GELUS)
@pytest.mark.parametrize("scheme", NEW_SCHEMES)
def test_port_agrees_on_each_new_scheme_with_each_gelu(tmp_path, scheme, activation):
    assert_agrees(export(tmp_path, scheme, 6, generic=True, activation=activation))


@pytest.mark.parametrize("scheme", NORMED)
def test_port_agrees_on_each_new_scheme_with_rmsnorm(tmp_path, scheme):
    assert_agrees(export(tmp_path, scheme, 6, generic=True, norm="rmsnorm"))


@pytest.mark.parametrize(
    "scheme, options, other",
    [
        ("hybridnorm", {"first_block": "pre"}, {"first_block": "qkv"}),
        ("normformer", {"head_scale": "fairseq"}, {"head_scale": "paper"}),
        ("normformer", {"resid_scale": True}, {"resid_scale": False}),
        ("dslm", {}, {"placement": "post"}),
        ("dslm", {"beta_sq": 0.1}, {}),
    ],
)
def test_agreement_check_flags_the_port_reading_another_option(tmp_path, scheme, options, other):
    path = export(tmp_path, scheme, 6, generic=True, options=options)
    assert "y" in disagreements(stored(path), torch_port.evaluate(path, options=other))


def test_agreement_check_flags_pre_ln_in_place_of_layernorm_scaling(tmp_path):
    """The two share every parameter name; only the 1/sqrt(l) differs."""
    path = export(tmp_path, "lns", 6)
    assert "y" in disagreements(stored(path), torch_port.evaluate(path, scheme="pre"))


# ----- norm kinds ------------------------------------------------------------------------


@pytest.mark.parametrize("layers", DEPTHS)
@pytest.mark.parametrize("scheme", ("pre", "post"))
@pytest.mark.parametrize("kind", NORM_KINDS)
def test_port_agrees_with_each_norm_kind(tmp_path, kind, scheme, layers):
    """At a generic point: at the initialization some gains have no gradient (next test)."""
    assert_agrees(export(tmp_path, scheme, layers, generic=True, norm=kind))


def test_scalenorm_gains_before_a_post_ln_ffn_have_no_gradient_at_the_initialization(tmp_path):
    """With zero biases the FFN is positively homogeneous, F(g u) = g F(u), and the ScaleNorm
    after it removes the scale: d loss / d g of each ln_attn is 0 in exact arithmetic, and
    both implementations hold round-off there, O(1) apart relative to itself."""
    path = export(tmp_path, "post", 6, norm="scalenorm")
    expected, actual = stored(path), torch_port.evaluate(path)
    for layer in range(6):
        name = f"grads/layers.{layer}.ln_attn.g"
        assert abs(expected[name]) < 1e-14 and abs(actual[name]) < 1e-14
        assert abs(expected[f"grads/layers.{layer}.ln_ffn.g"]) > 1e-3


@pytest.mark.parametrize("scheme", EARLIER + NORMED)
@pytest.mark.parametrize("kind", NORM_KINDS)
def test_port_agrees_with_each_norm_kind_in_every_scheme_at_a_generic_point(tmp_path, kind, scheme):
    assert_agrees(export(tmp_path, scheme, 6, generic=True, norm=kind))


def test_agreement_check_flags_dyt_in_place_of_derf(tmp_path):
    """The two share alpha, gamma and beta; tanh is not erf."""
    path = export(tmp_path, "pre", 6, generic=True, norm="derf")
    failing = disagreements(stored(path), torch_port.evaluate(path, norm="dyt"))
    assert "y" in failing and "grads/final_ln.alpha" in failing


# ----- QK-norm variants -------------------------------------------------------------------


@pytest.mark.parametrize("layers", DEPTHS)
@pytest.mark.parametrize("variant", QK_NORMS)
def test_port_agrees_with_each_qk_norm_on_pre_ln(tmp_path, variant, layers):
    assert_agrees(export(tmp_path, "pre", layers, qk_norm=variant))


@pytest.mark.parametrize("layers", (1, 6))
@pytest.mark.parametrize("variant", QK_NORMS)
def test_port_agrees_with_each_qk_norm_on_post_ln(tmp_path, variant, layers):
    assert_agrees(export(tmp_path, "post", layers, qk_norm=variant))


@pytest.mark.parametrize("variant", QK_NORMS)
def test_port_agrees_with_each_qk_norm_on_48_layer_post_ln_where_float64_decides(tmp_path, variant):
    """48 Post-LN layers make the tokens alike (rank collapse): see the next test."""
    assert_agrees(export(tmp_path, "post", 48, qk_norm=variant), undecided_by_float64=True)


def test_only_the_q_and_k_norm_gradients_of_deep_post_ln_are_undecided_by_float64(tmp_path):
    """The upper layers' queries and keys barely move the loss once the tokens are alike, so
    the gradients of their q and k norms are differences of far larger terms: moving every
    parameter by one unit in the last place moves them by more than 1e-10 of their own size.
    Nothing else moves, and nothing by 1e-10 of its sublayer's scale."""
    path = export(tmp_path, "post", 48, qk_norm="head")
    here, moved = torch_port.evaluate(path), torch_port.evaluate(nudged(path, tmp_path / "nudged.npz"))
    undecided = disagreements(here, moved)
    assert "grads/layers.45.attn.q_norm.gamma" in undecided
    assert all(".attn.q_norm." in name or ".attn.k_norm." in name for name in undecided)
    assert "grads/layers.5.attn.q_norm.gamma" not in undecided
    assert not disagreements(here, moved, grouping=sublayer)


def test_the_float64_allowance_still_flags_a_decided_gradient_off_by_1e_9(tmp_path, monkeypatch):
    path = export(tmp_path, "post", 48, qk_norm="head")
    evaluate = torch_port.evaluate

    def off(path, **overrides):
        arrays = evaluate(path, **overrides)
        arrays["grads/layers.2.ffn.w1"] = arrays["grads/layers.2.ffn.w1"] * (1 + 1e-9)
        return arrays

    monkeypatch.setattr(torch_port, "evaluate", off)
    with pytest.raises(AssertionError, match="decided by float64, yet disagreeing"):
        assert_agrees(path, undecided_by_float64=True)


@pytest.mark.parametrize("variant", QK_NORMS)
def test_port_agrees_with_each_qk_norm_on_a_decoder_at_a_generic_point(tmp_path, variant):
    """Self- and cross-attention both carry the variant; no gain left at 1."""
    path = export(tmp_path, "pre", 6, generic=True, qk_norm=variant, cross_attention=True, causal=True, norm="rmsnorm")
    assert_agrees(path)


@pytest.mark.parametrize("scheme", TAKING_QK_NORM)
@pytest.mark.parametrize("variant", QK_NORMS)
def test_port_agrees_with_each_qk_norm_in_every_new_scheme_at_a_generic_point(tmp_path, variant, scheme):
    assert_agrees(export(tmp_path, scheme, 6, generic=True, qk_norm=variant))


def test_port_agrees_where_the_cosine_logit_scale_is_clamped(tmp_path):
    """A head whose learned log scale is above log 100 attends with the scale 100 and gets
    no gradient on it; the other head is free."""
    model = lnref.build("pre", 6, **SMALL, qk_norm="cosine")
    params = dict(model.params)
    for layer in range(6):
        params[f"layers.{layer}.attn.log_logit_scale"] = np.array([5.0, 1.0])
    model.load(params)
    path = tmp_path / "clamped.npz"
    export_golden(model, path, batch=2, seq=8)
    assert_agrees(path)
    assert stored(path)["grads/layers.3.attn.log_logit_scale"][0] == 0


def test_agreement_check_flags_a_qk_norm_the_port_leaves_out(tmp_path):
    path = export(tmp_path, "pre", 6, generic=True, qk_norm="head")
    failing = disagreements(stored(path), torch_port.evaluate(path, qk_norm="none"))
    assert "y" in failing and "grads/layers.0.attn.q_norm.gamma" in failing
