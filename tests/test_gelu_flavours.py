"""The two GELU flavours: ``gelu``, the exact x Phi(x) (PyTorch's default), and ``gelu_tanh``,
the tanh approximation; and golden files of format version 1, whose "gelu" was the tanh one.

``tests/data/golden-format1-pre-gelu.npz`` was written by ``lnref export --activation gelu``
before the change (see ``tests/data/README.md``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import lnref
from lnref import model as model_module
from lnref import nn
from lnref.autograd import Tensor, kernels, ops
from lnref.cli import main
from lnref.cli.options import ACTIVATION_NAMES
from lnref.golden import export_golden, from_golden, golden_arrays, load_golden
from lnref.golden.compat import upgrade

FORMAT_1_GELU = Path(__file__).parent / "data" / "golden-format1-pre-gelu.npz"
SMALL = dict(d_model=8, n_heads=2, d_ff=16)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


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


# ----- golden files of format version 1 -----------------------------------------------------


def test_a_format_1_file_reads_its_gelu_as_the_tanh_approximation():
    golden = load_golden(FORMAT_1_GELU)
    assert (golden.format_version, golden.config.activation) == (1, "gelu_tanh")


@pytest.mark.skipif(
    not kernels.USE_NUMBA, reason="the file was written by the compiled kernels; the NumPy twins round otherwise"
)
def test_a_format_1_gelu_file_is_reproduced_bit_for_bit():
    model = from_golden(FORMAT_1_GELU)  # raises unless every stored array comes out bit for bit
    assert model.config.activation == "gelu_tanh"


def test_a_format_1_gelu_file_compares_as_passed_with_what_from_golden_computes(tmp_path):
    golden, model = load_golden(FORMAT_1_GELU), from_golden(FORMAT_1_GELU, verify=False)
    np.savez(tmp_path / "actual.npz", **golden_arrays(model, golden.x, golden.dy))
    result = run("compare", FORMAT_1_GELU, tmp_path / "actual.npz")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == f"{len(golden.arrays)} passed, 0 failed"


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_a_file_of_the_current_format_keeps_its_activation_name(tmp_path, activation):
    export_golden(lnref.build("pre", 1, activation=activation, **SMALL), tmp_path / "g.npz")
    golden = load_golden(tmp_path / "g.npz")
    assert (golden.format_version, golden.config.activation) == (2, activation)
    assert from_golden(tmp_path / "g.npz").config.activation == activation


def test_upgrading_a_format_1_document_leaves_the_document_read_untouched():
    written = {"format_version": 1, "model": {"activation": "gelu"}}
    assert upgrade(written) == {"format_version": 2, "model": {"activation": "gelu_tanh"}}
    assert written == {"format_version": 1, "model": {"activation": "gelu"}}


def test_a_format_1_relu_file_stays_relu():
    assert upgrade({"format_version": 1, "model": {"activation": "relu"}})["model"]["activation"] == "relu"
