"""The two GELU flavours: ``gelu``, the exact x Phi(x) (PyTorch's default), and ``gelu_tanh``,
the tanh approximation; golden files of format version 1, whose "gelu" was the tanh one; and
the hint of ``lnref compare`` that names a flavour mismatch.

``tests/data/golden-format1-pre-gelu.npz`` was written by ``lnref export --activation gelu``
before the change (see ``tests/data/README.md``).
"""

from __future__ import annotations

import dataclasses
import json
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
from lnref.cli.options import LazyChoice
from lnref.golden import FORMAT_VERSION, compare_files, export_golden, from_golden, golden_arrays, load_golden
from lnref.golden.compat import upgrade
from lnref.model import Model

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
    assert LazyChoice("lnref.nn:ACTIVATIONS").choices == model_module.ACTIVATIONS == tuple(nn.ACTIVATIONS)


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
    assert (golden.format_version, golden.config.activation) == (FORMAT_VERSION, activation)
    assert from_golden(tmp_path / "g.npz").config.activation == activation


def test_upgrading_a_format_1_document_leaves_the_document_read_untouched():
    written = {"format_version": 1, "model": {"activation": "gelu"}}
    assert upgrade(written) == {
        "format_version": FORMAT_VERSION,
        "model": {
            "activation": "gelu_tanh",
            "qk_norm": "none",
            "options": {},
            "role": "stack",
            "encoder_layers": 0,
            "decoder_layers": 0,
        },
        "point": "init",
        "rounded_to": None,
    }
    assert written == {"format_version": 1, "model": {"activation": "gelu"}}


def test_a_format_1_relu_file_stays_relu():
    assert upgrade({"format_version": 1, "model": {"activation": "relu"}})["model"]["activation"] == "relu"


# ----- the hint of lnref compare -------------------------------------------------------------


def golden_file(tmp_path, activation, scheme="residual", layers=3):
    path = tmp_path / f"{scheme}-{activation}.npz"
    export_golden(lnref.build(scheme, layers, activation=activation, **SMALL), path, batch=2, seq=4)
    return path


def recomputed(path, tmp_path, **changes):
    """ACTUAL as a port would write it: the file's model and inputs, with ``changes`` to its config."""
    golden = load_golden(path)
    model = Model(dataclasses.replace(golden.config, **changes))
    model.load(golden.params)
    arrays = golden_arrays(model, golden.x, golden.dy, golden.memory)
    actual = tmp_path / "actual.npz"
    np.savez(actual, **{name: value for name, value in arrays.items() if not name.startswith("params/")})
    return actual


@pytest.mark.parametrize("file_flavour, port_flavour", [("gelu_tanh", "gelu"), ("gelu", "gelu_tanh")])
def test_a_port_with_the_other_gelu_is_told_which_flavour_the_file_uses(tmp_path, file_flavour, port_flavour):
    path = golden_file(tmp_path, file_flavour)
    report = compare_files(path, recomputed(path, tmp_path, activation=port_flavour))
    assert not report.ok and len(report.hints) == 1
    assert report.hints[0].startswith(
        f"ACTUAL matches this model with the {'exact' if port_flavour == 'gelu' else 'tanh'}"
    )
    assert f"not with the file's {'exact' if file_flavour == 'gelu' else 'tanh'}" in report.hints[0]


def test_the_hint_on_a_format_1_file_says_the_file_calls_the_tanh_approximation_gelu(tmp_path):
    report = compare_files(FORMAT_1_GELU, recomputed(FORMAT_1_GELU, tmp_path, activation="gelu"))
    assert "which this format-1 file calls 'gelu'" in report.hints[0]
    assert "F.gelu(x, approximate='tanh')" in report.hints[0]


def test_a_port_with_the_other_gelu_and_a_second_difference_is_told_the_error_drops(tmp_path):
    path = golden_file(tmp_path, "gelu_tanh")
    report = compare_files(path, recomputed(path, tmp_path, activation="gelu", eps=1.001e-5))
    assert len(report.hints) == 1 and "the worst failing error drops from" in report.hints[0]
    assert "differs in something else as well" in report.hints[0]


def test_a_failure_unrelated_to_the_gelu_gets_no_hint(tmp_path):
    path = golden_file(tmp_path, "gelu_tanh")
    actual = recomputed(path, tmp_path)
    arrays = dict(np.load(actual))
    arrays["grads/layers.1.ffn.w2"] = arrays["grads/layers.1.ffn.w2"] * (1 + 1e-6)
    np.savez(actual, **arrays)
    report = compare_files(path, actual)
    assert report.failed == 1 and report.hints == []


def test_a_relu_file_never_gets_a_gelu_hint(tmp_path):
    path = golden_file(tmp_path, "relu")
    report = compare_files(path, recomputed(path, tmp_path, activation="gelu"))
    assert not report.ok and report.hints == []


def test_the_hint_is_in_the_text_before_the_last_line_and_in_the_json(tmp_path):
    path = golden_file(tmp_path, "gelu_tanh", layers=1)
    actual = recomputed(path, tmp_path, activation="gelu")
    text = run("compare", path, actual)
    lines = text.stdout.strip().splitlines()
    assert text.exit_code == 1 and lines[-2].startswith("hint: ACTUAL matches this model with the exact GELU")
    assert lines[-1].endswith(" failed") and " 0 failed" not in lines[-1]
    document = json.loads(run("compare", path, actual, "--json").stdout)
    assert document["hints"] == [lines[-2][len("hint: ") :]]
