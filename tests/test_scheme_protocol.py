"""A scheme written in one file of its own gets the model, the fast paths and the checker."""

import numpy as np
import pytest

import lnref
from lnref import gradcheck as checker
from lnref.schemes import register_scheme
from tests.schemes import qk_norm

SMALL = dict(d_model=8, n_heads=2, d_ff=16)


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_scheme("test_qk_norm", qk_norm)


def test_a_norm_per_head_has_the_width_of_a_head():
    model = lnref.build("test_qk_norm", n_layers=2, **SMALL)
    assert model.params["layers.1.q_norm.gamma"].shape == (4,)
    assert model.params["layers.1.heads_norm.gamma"].shape == (8,)


@pytest.mark.parametrize("mode", ["directional", "blockwise", "full"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_per_head_qk_norms_and_a_heads_norm_pass_the_gradient_check(mode, norm):
    model = lnref.build("test_qk_norm", n_layers=2 if mode == "full" else 4, norm=norm, **SMALL)
    report = checker.gradcheck(model, mode=mode, batch=2, seq=4, workers=1)
    assert report.ok, report.to_text()
    status = {r.tensor: r.status for r in report.results}
    for name in ("q_norm.gamma", "k_norm.gamma", "heads_norm.gamma", "attn.wq", "attn.wk"):
        assert status[f"layers.1.{name}"] == "passed", report.to_text()


def test_the_qk_norm_makes_attention_invariant_to_the_scale_of_wq_and_wk():
    model = lnref.build("test_qk_norm", n_layers=2, eps=1e-12, **SMALL)
    x, _, _ = model.sample_inputs()
    y = model(x)
    for name in ("layers.0.attn.wq", "layers.0.attn.bq", "layers.1.attn.wk", "layers.1.attn.bk"):
        model.params[name] *= 3.0
    np.testing.assert_allclose(model(x), y, rtol=1e-9, atol=1e-9)  # exact as eps -> 0


def test_a_broken_per_head_norm_backward_is_caught(monkeypatch):
    # The per-head norms run through the layer_norm primitive on (B, T, H, Dh): drop its
    # gamma from the backward and the q and k norms' gains fail.
    from lnref.autograd import PRIMITIVES

    vjp = PRIMITIVES["layer_norm"].vjp

    def without_gamma(dout, residuals):
        rows, gamma, mu, rstd = residuals
        return vjp(dout, (rows, np.ones_like(gamma), mu, rstd))

    monkeypatch.setitem(PRIMITIVES, "layer_norm", PRIMITIVES["layer_norm"]._replace(vjp=without_gamma))
    model = lnref.build("test_qk_norm", n_layers=2, **SMALL)
    failed = {
        r.tensor for r in checker.gradcheck(model, mode="blockwise", batch=2, seq=4).results if r.status == "failed"
    }
    assert "layers.0.q_norm.gamma" in failed or "layers.0.input" in failed
