"""The two GELU flavours: ``gelu``, the exact x Phi(x) (PyTorch's default), and ``gelu_tanh``,
the tanh approximation."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lnref
from lnref import model as model_module
from lnref import nn
from lnref.autograd import Tensor, ops
from lnref.cli.options import ACTIVATION_NAMES

SMALL = dict(d_model=8, n_heads=2, d_ff=16)


def exact_gelu(h):
    return np.vectorize(lambda v: v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))), otypes=[np.float64])(h)


def tanh_gelu(h):
    return 0.5 * h * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h**3)))


# ----- the model --------------------------------------------------------------------------


@pytest.mark.parametrize("activation, formula", [("gelu", exact_gelu), ("gelu_tanh", tanh_gelu)])
def test_each_activation_name_computes_its_flavours_formula(activation, formula):
    h = np.linspace(-4.0, 4.0, 81)
    np.testing.assert_allclose(nn.ACTIVATIONS[activation](Tensor(h)).value, formula(h), rtol=1e-14, atol=1e-15)


def test_the_gelu_primitive_defaults_to_the_exact_form_as_pytorch_does():
    h = np.linspace(-3.0, 3.0, 13)
    np.testing.assert_array_equal(ops.gelu(h).value, ops.gelu(h, approximate="none").value)


@pytest.mark.parametrize("fast", [True, False], ids=["fused", "composition"])
def test_a_model_with_gelu_differs_from_one_with_gelu_tanh_by_the_approximation_only(fast):
    outputs = {}
    for activation in ("gelu", "gelu_tanh"):
        model = lnref.build("pre", 2, activation=activation, **SMALL)
        model.fast = fast
        x, _, _ = model.sample_inputs(batch=2, seq=4)
        outputs[activation] = model(x)
    relative = np.abs(outputs["gelu"] - outputs["gelu_tanh"]).max() / np.abs(outputs["gelu"]).max()
    assert 1e-7 < relative < 1e-2


def test_the_command_line_offers_every_activation_of_the_model():
    assert ACTIVATION_NAMES == model_module.ACTIVATIONS == tuple(nn.ACTIVATIONS)


def test_an_activation_the_fused_ffn_lacks_takes_the_composition(monkeypatch):
    # A scheme author's activation, known to the sublayers but not to the fused kernel.
    monkeypatch.setitem(nn.ACTIVATIONS, "softplus_like", lambda h: ops.relu(h) * 0.5)
    monkeypatch.setattr(model_module, "ACTIVATIONS", (*model_module.ACTIVATIONS, "softplus_like"))
    model = lnref.build("pre", 1, activation="softplus_like", **SMALL)
    x, _, _ = model.sample_inputs(batch=1, seq=3)
    fused_off = lnref.build("pre", 1, activation="softplus_like", **SMALL)
    fused_off.fast = False
    np.testing.assert_array_equal(model(x), fused_off(x))
