"""lnref's encoder-decoder golden files checked against the PyTorch port's encoder-decoder form.

``lnref.ports.torch_encdec`` builds the encoder and the decoder from the port's own stacks,
written from the equations; y, the memory, the loss, every gradient (both stacks' parameters, the source, the
target) and every hidden state of both stacks must agree to 1e-10 relative in float64, measured
as ``lnref compare`` measures (agreement.py). The source and the target have different lengths,
so a stack that read the other's input would not even run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (pip install torch==2.13.0 runs the interop tests)"
)

from agreement import SMALL, disagreements, stored  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import lnref  # noqa: E402
from lnref.cli import main  # noqa: E402
from lnref.golden import export_golden  # noqa: E402
from lnref.gradcheck.point import jitter_params  # noqa: E402
from lnref.ports import torch as torch_port  # noqa: E402
from lnref.ports import torch_encdec  # noqa: E402

pytestmark = pytest.mark.torch

SOURCE_LEN, TARGET_LEN = 5, 7


def export(tmp_path, scheme, encoder_layers, decoder_layers, generic=True, **options):
    """An encoder-decoder golden file of ``scheme``, by default at a point where every tensor
    is moved off its initial value (no gain 1, no shift 0, no bias 0)."""
    model = lnref.build(scheme, encoder_layers=encoder_layers, decoder_layers=decoder_layers, **SMALL, **options)
    if generic:
        model.load(jitter_params(model.params, seed=1))
    path = tmp_path / f"{scheme}-{encoder_layers}-{decoder_layers}.npz"
    export_golden(model, path, batch=2, seq=TARGET_LEN, source_len=SOURCE_LEN)
    return path


def assert_agrees(path):
    expected, actual = stored(path), torch_encdec.evaluate(path)
    predicted = {"y", "memory", "loss", *(n for n in expected if n.startswith(("grads/", "hidden/")))}
    assert set(actual) == predicted
    failing = disagreements(expected, actual)
    assert not failing, f"torch disagrees beyond 1e-10: {dict(list(failing.items())[:5])}"


PORTED = [scheme for scheme in lnref.SCHEMES if scheme in torch_port.SCHEMES]  # the schemes the port has


def test_the_port_covers_every_scheme_of_the_first_family_and_the_papers_encoder_decoder_schemes():
    assert {"post", "pre", "residual", "b2t", "admin", "deepnorm", "dlcl", "rezero", "subln", "tfixup"} <= set(PORTED)


@pytest.mark.parametrize("scheme", PORTED)
def test_port_agrees_on_a_6_6_encoder_decoder_model_of_every_ported_scheme(tmp_path, scheme):
    assert_agrees(export(tmp_path, scheme, 6, 6))


@pytest.mark.parametrize("scheme", ("post", "pre", "residual", "b2t", "admin", "deepnorm"))
def test_port_agrees_at_the_initialization_and_with_stacks_of_unequal_depth(tmp_path, scheme):
    assert_agrees(export(tmp_path, scheme, 3, 1, generic=False))


@pytest.mark.parametrize("scheme", ("pre", "residual", "subln"))
def test_port_agrees_with_rmsnorm_and_the_exact_gelu(tmp_path, scheme):
    assert_agrees(export(tmp_path, scheme, 2, 3, norm="rmsnorm", activation="gelu"))


def test_lnref_compare_passes_the_port_output(tmp_path):
    golden = export(tmp_path, "residual", 2, 2)
    np.savez(tmp_path / "torch.npz", **torch_encdec.evaluate(golden))
    result = CliRunner().invoke(main, ["compare", str(golden), str(tmp_path / "torch.npz"), "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert report["failed"] == 0 and report["passed"] == len(report["tensors"]) > 100


# ----- negative controls: the agreement check can fail ----------------------------------


def test_a_deepnorm_encoder_with_the_one_stack_alpha_disagrees(tmp_path):
    """The encoder of an encoder-decoder model takes alpha = 0.81 (N^4 M)^(1/16), not (2N)^(1/4)."""
    path = export(tmp_path, "deepnorm", 4, 2)
    failing = disagreements(stored(path), torch_encdec.evaluate(path, roles=("stack", "decoder")))
    assert "memory" in failing and "y" in failing


def test_a_decoder_attending_to_the_encoders_last_layer_before_its_final_norm_disagrees(tmp_path):
    path = export(tmp_path, "pre", 2, 2)
    failing = disagreements(stored(path), torch_encdec.evaluate(path, memory_from="last layer"))
    assert "y" in failing and "grads/encoder.final_ln.gamma" in failing
    assert not any(name.startswith("hidden/encoder/") for name in failing)


def test_a_neighbouring_scheme_disagrees(tmp_path):
    path = export(tmp_path, "post", 2, 2)
    failing = disagreements(stored(path), torch_encdec.evaluate(path, scheme="b2t"))
    assert "y" in failing and "memory" in failing


def test_the_one_stack_port_refuses_an_encoder_decoder_file_in_one_line(tmp_path):
    path = tmp_path / "encdec.npz"
    export_golden(lnref.build("pre", encoder_layers=1, decoder_layers=1, **SMALL), path)
    with pytest.raises(ValueError, match="torch_encdec.evaluate reads it"):
        torch_port.evaluate(path)
