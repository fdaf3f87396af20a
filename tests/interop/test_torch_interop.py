"""lnref's golden files checked against an independent PyTorch implementation.

``lnref.ports.torch`` is written from the papers' equations with torch's own autograd and reads the
golden file with NumPy alone. For every scheme at 1, 6 and 48 layers, y, the loss, every
gradient and every hidden state must agree to 1e-10 relative in float64, measured as
``lnref compare`` measures (docs/golden-format.md): max|a - e| <= 1e-10 * scale, scale the
largest |e| among the tensor and its siblings (names equal up to the last '.').
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (pip install torch==2.13.0 runs the interop tests)"
)

from agreement import assert_agrees, disagreements, export, group, stored  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from lnref.cli import main  # noqa: E402
from lnref.golden import compare_files  # noqa: E402
from lnref.ports import torch as torch_port  # noqa: E402

pytestmark = pytest.mark.torch

FORMAT_1_GELU = Path(__file__).parents[1] / "data" / "golden-format1-pre-gelu.npz"
LISTED = ("post", "pre", "residual", "b2t", "deepnorm", "admin")
FURTHER = ("sandwich", "peri", "mixln", "dlcl", "rezero")
DEPTHS = (1, 6, 48)


# ----- agreement -------------------------------------------------------------------------


@pytest.mark.parametrize("layers", DEPTHS)
@pytest.mark.parametrize("scheme", LISTED)
def test_port_agrees_with_lnref_on_listed_schemes(tmp_path, scheme, layers):
    assert_agrees(export(tmp_path, scheme, layers))


@pytest.mark.parametrize("layers", DEPTHS)
@pytest.mark.parametrize("scheme", FURTHER)
def test_port_agrees_with_lnref_on_further_schemes(tmp_path, scheme, layers):
    assert_agrees(export(tmp_path, scheme, layers))


@pytest.mark.parametrize("scheme", LISTED + FURTHER)
def test_port_agrees_on_a_causal_decoder_with_cross_attention(tmp_path, scheme):
    assert_agrees(export(tmp_path, scheme, 6, cross_attention=True, causal=True))


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("scheme", LISTED + FURTHER)
def test_port_agrees_with_rmsnorm_and_either_gelu(tmp_path, scheme, activation):
    assert_agrees(export(tmp_path, scheme, 6, norm="rmsnorm", activation=activation))


def test_port_agrees_with_a_format_1_gelu_file_read_as_the_tanh_approximation():
    assert_agrees(FORMAT_1_GELU)


def test_key_bias_gradient_is_round_off_in_both_implementations(tmp_path):
    """Why errors are scaled by the group: d loss / d b_k is 0 in exact arithmetic (softmax
    ignores a shift shared by all keys), so both sides hold only round-off, far below the
    1e-10 * scale of the group yet O(1) apart relative to the tensor itself."""
    path = export(tmp_path, "post", 6)
    expected, actual = stored(path), torch_port.evaluate(path)
    for layer in range(6):
        name = f"grads/layers.{layer}.attn.bk"
        scale = max(float(np.max(np.abs(expected[n]))) for n in expected if group(n) == group(name))
        assert np.max(np.abs(expected[name])) < 1e-14 * scale
        assert np.max(np.abs(actual[name])) < 1e-14 * scale


@pytest.mark.parametrize("scheme", LISTED)
def test_float32_port_passes_lnref_compare_default_tolerance_at_48_layers(tmp_path, scheme):
    golden = export(tmp_path, scheme, 48, dtype="float32")
    actual = tmp_path / "torch.npz"
    np.savez(actual, **torch_port.evaluate(golden))
    report = compare_files(golden, actual)
    assert report.rtol == 1e-3 and report.passed > 500
    assert report.ok, [(r.name, r.max_rel_error) for r in report.results if r.status not in ("ok", "missing")]


# ----- negative controls: the agreement check can fail ----------------------------------


def test_float32_default_tolerance_flags_a_gradient_off_by_1e_2(tmp_path):
    golden = export(tmp_path, "post", 6, dtype="float32")
    arrays = torch_port.evaluate(golden)
    arrays["grads/layers.3.ffn.w2"] = arrays["grads/layers.3.ffn.w2"] * (1 + 1e-2)
    np.savez(tmp_path / "torch.npz", **arrays)
    report = compare_files(golden, tmp_path / "torch.npz")
    assert [r.name for r in report.results if r.status == "FAIL"] == ["grads/layers.3.ffn.w2"]


def test_agreement_check_flags_a_gradient_perturbed_by_1e_9(tmp_path):
    path = export(tmp_path, "pre", 6)
    expected, actual = stored(path), torch_port.evaluate(path)
    actual["grads/layers.2.ffn.w1"] = actual["grads/layers.2.ffn.w1"] * (1 + 1e-9)
    assert list(disagreements(expected, actual)) == ["grads/layers.2.ffn.w1"]


def test_agreement_check_flags_a_different_epsilon(tmp_path):
    path = export(tmp_path, "post", 6)
    failing = disagreements(stored(path), torch_port.evaluate(path, eps=1e-6))
    assert "y" in failing and "grads/input" in failing


@pytest.mark.parametrize("scheme, impostor", [("post", "b2t"), ("pre", "mixln"), ("peri", "sandwich")])
def test_agreement_check_flags_a_neighbouring_scheme(tmp_path, scheme, impostor):
    """Schemes sharing parameter names still give different outputs."""
    path = export(tmp_path, scheme, 6)
    failing = disagreements(stored(path), torch_port.evaluate(path, scheme=impostor))
    assert "y" in failing


# ----- the port's arrays through `lnref compare` -----------------------------------------


def write_port_output(path, arrays, transpose=False):
    if transpose:  # as torch.nn.Linear stores them: (d_out, d_in)
        arrays = {
            n: (v.T if v.ndim == 2 and n.rpartition(".")[2] in ("wq", "wk", "wv", "wo", "w1", "w2") else v)
            for n, v in arrays.items()
        }
    np.savez(path, **arrays)


def test_lnref_compare_passes_the_port_output(tmp_path):
    golden = export(tmp_path, "residual", 6)
    write_port_output(tmp_path / "torch.npz", torch_port.evaluate(golden))
    result = CliRunner().invoke(main, ["compare", str(golden), str(tmp_path / "torch.npz"), "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert report["failed"] == 0 and report["passed"] == len(report["tensors"]) > 100


def test_lnref_compare_reads_transposed_port_weights_with_transpose_weights(tmp_path):
    golden = export(tmp_path, "admin", 6)
    actual = tmp_path / "torch.npz"
    write_port_output(actual, torch_port.evaluate(golden), transpose=True)
    without = CliRunner().invoke(main, ["compare", str(golden), str(actual)])
    with_flag = CliRunner().invoke(main, ["compare", str(golden), str(actual), "--transpose-weights"])
    assert without.exit_code == 1
    assert with_flag.exit_code == 0, with_flag.output


# ----- a port with the other GELU flavour -------------------------------------------------


@pytest.mark.parametrize("golden_of", ["gelu_tanh export", "format-1 gelu file"])
def test_a_port_using_torchs_default_gelu_on_a_tanh_gelu_file_is_told_the_flavour(tmp_path, golden_of):
    golden = export(tmp_path, "pre", 6, activation="gelu_tanh") if golden_of == "gelu_tanh export" else FORMAT_1_GELU
    actual = tmp_path / "torch.npz"
    write_port_output(actual, torch_port.evaluate(golden, activation="gelu"))  # F.gelu(x): torch's default
    result = CliRunner().invoke(main, ["compare", str(golden), str(actual)])
    hints = [line for line in result.stdout.splitlines() if line.startswith("hint: ")]
    assert result.exit_code == 1
    assert len(hints) == 1 and "not with the file's tanh-approximated GELU" in hints[0]
    assert "F.gelu(x, approximate='tanh')" in hints[0]
