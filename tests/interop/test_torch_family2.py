"""The family's second part against the PyTorch port: siamese, ngpt, gpas, hyper, mhc,
denseformer, post's DS-Init, Gemma's norm and the aliases.

As in test_torch_family.py: y, the loss, every gradient and every hidden state of lnref's
golden file agree with lnref.ports.torch (torch_family2.py) to 1e-10 relative in float64
(agreement.py), at 1, 6 and 48 layers; the port is written from the papers and the official
code and takes from lnref only parameter names and option names. Each scheme's negative
control shows the check sees the piece that makes the scheme what it is.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (pip install torch==2.13.0 runs the interop tests)"
)

from agreement import assert_agrees, disagreements, export, stored  # noqa: E402

from lnref.ports import torch as torch_port  # noqa: E402
from lnref.ports import torch_family2  # noqa: E402

pytestmark = pytest.mark.torch

DEPTHS = (1, 6, 48)
NEW_SCHEMES = ("siamese", "ngpt", "gpas", "hyper", "mhc", "denseformer")
OPTIONS = (  # every option of the new schemes and post's DS-Init set away from its default
    ("hyper", {"dynamic": True}),
    ("hyper", {"n": 1}),
    ("hyper", {"n": 3, "dynamic": True}),
    ("mhc", {"n": 2}),
    ("mhc", {"sinkhorn_iterations": 3}),
    ("post", {"init": "ds_paper"}),
    ("post", {"init": "ds_code"}),
)
ALIASES = ("gemma2", "gemma3", "skipinit")
VARIANTS = tuple((scheme, {}) for scheme in NEW_SCHEMES + ALIASES) + OPTIONS


def label(variant):
    scheme, options = variant
    return "-".join([scheme, *(f"{name}={value}" for name, value in options.items())])


def options_of(options):
    return {"options": options} if options else {}


# ----- agreement ---------------------------------------------------------------------------


@pytest.mark.parametrize("layers", DEPTHS)
@pytest.mark.parametrize("scheme", NEW_SCHEMES + ALIASES)
def test_port_agrees_on_each_scheme_of_the_second_part_and_each_alias(tmp_path, scheme, layers):
    assert_agrees(export(tmp_path, scheme, layers))


@pytest.mark.parametrize("layers", DEPTHS)
@pytest.mark.parametrize("scheme, options", OPTIONS, ids=map(label, OPTIONS))
def test_port_agrees_on_each_option_of_the_second_part(tmp_path, scheme, options, layers):
    assert_agrees(export(tmp_path, scheme, layers, **options_of(options)))


@pytest.mark.parametrize("scheme, options", VARIANTS, ids=map(label, VARIANTS))
def test_port_agrees_on_each_variant_at_a_generic_point(tmp_path, scheme, options):
    """No gain at 1, no shift, gate or dynamic weight at 0, no connection one-hot."""
    assert_agrees(export(tmp_path, scheme, 6, generic=True, **options_of(options)))


@pytest.mark.parametrize("scheme, options", VARIANTS, ids=map(label, VARIANTS))
def test_port_agrees_on_each_variant_as_a_causal_decoder_with_cross_attention(tmp_path, scheme, options):
    path = export(tmp_path, scheme, 6, generic=True, cross_attention=True, causal=True, **options_of(options))
    assert_agrees(path)


@pytest.mark.parametrize("scheme", ("siamese", "gpas", "hyper", "mhc", "denseformer"))
def test_port_agrees_on_each_normed_scheme_with_gemmas_norm_and_the_exact_gelu(tmp_path, scheme):
    assert_agrees(export(tmp_path, scheme, 6, generic=True, norm="rmsnorm_plus_one", activation="gelu"))


@pytest.mark.parametrize("kind", ("rmsnorm_plus_one", "rmsnorm"))
def test_port_agrees_with_gemmas_norm_and_plain_rmsnorm_in_each_place_of_sandwich(tmp_path, kind):
    assert_agrees(export(tmp_path, "sandwich", 6, generic=True, norm=kind, qk_norm="head"))


# ----- negative controls: the check sees what makes each scheme itself ---------------------


def flagged(path, **overrides):
    """The names the agreement check flags when the port reads the file with ``overrides``."""
    return disagreements(stored(path), torch_port.evaluate(path, **overrides))


def test_agreement_check_flags_pre_ln_in_place_of_gpas_away_from_zero_gates(tmp_path):
    assert "y" in flagged(export(tmp_path, "gpas", 6, generic=True), scheme="pre")


def test_agreement_check_flags_gpas_without_its_stop_gradient_in_the_gradients_alone(tmp_path, monkeypatch):
    """lnref's gradients are the tape's (sg held): the plain derivative agrees on y and on
    nothing that the scaling's backward reaches."""
    path = export(tmp_path, "gpas", 6, generic=True)

    def plain_gpas(m, x):
        def layer(l, x):
            scale = torch.nn.functional.silu(m.p[f"layers.{l}.gate"])
            for b in m.branches:
                x = x + m.sublayer(l, b, m.norm(f"layers.{l}.ln_{b}", x))
                x = x - scale * x
            return x

        x, states = m.stack(x, layer)
        return m.norm("final_ln", x), states

    monkeypatch.setitem(torch_port.SCHEMES, "gpas", plain_gpas)
    failing = flagged(path)
    assert "y" not in failing and "grads/input" in failing and "grads/layers.0.gate" in failing


def test_agreement_check_flags_pre_ln_in_place_of_denseformer_away_from_one_hot_weights(tmp_path):
    assert "y" in flagged(export(tmp_path, "denseformer", 6, generic=True), scheme="pre")


def test_agreement_check_flags_static_connections_in_place_of_dynamic_ones(tmp_path):
    path = export(tmp_path, "hyper", 6, generic=True, options={"dynamic": True})
    assert "y" in flagged(path, options={"dynamic": False})


def test_agreement_check_flags_one_sinkhorn_round_fewer(tmp_path):
    """Near the initialization H_res is near J/n and twenty rounds have converged beyond what
    1e-10 sees (19 or 21 agree), so the rounds are told apart where they have not: three
    rounds read as two."""
    path = export(tmp_path, "mhc", 6, generic=True, options={"sinkhorn_iterations": 3})
    assert "y" in flagged(path, options={"sinkhorn_iterations": 2})


def test_agreement_check_flags_plain_rmsnorm_in_place_of_gemmas(tmp_path):
    assert "y" in flagged(export(tmp_path, "gemma2", 6, generic=True), norm="rmsnorm")


def test_agreement_check_flags_an_epsilon_in_ngpts_normalization(tmp_path, monkeypatch):
    """The authors' normalization has none; v / (||v|| + 1e-9) is another function at 1e-10."""
    path = export(tmp_path, "ngpt", 6, generic=True)
    monkeypatch.setattr(torch_family2, "unit", lambda v: v / (torch.linalg.vector_norm(v, dim=-1, keepdim=True) + 1e-9))
    assert "y" in flagged(path)


def test_agreement_check_flags_siameses_streams_swapped_at_the_end(tmp_path, monkeypatch):
    """The repository names the final norms against the streams; reading them by its names
    (x through final_ln_y, y through final_ln_x) is another function at a generic point."""
    path = export(tmp_path, "siamese", 6, generic=True)
    norm = torch_port.Transformer.norm
    swap = {"final_ln_x": "final_ln_y", "final_ln_y": "final_ln_x"}
    monkeypatch.setattr(torch_port.Transformer, "norm", lambda m, name, x, **kw: norm(m, swap.get(name, name), x, **kw))
    assert "y" in flagged(path)
