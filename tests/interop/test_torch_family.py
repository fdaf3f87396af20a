"""The rest of the family against the PyTorch port: schemes, norm kinds, QK-norm variants.

As in test_torch_interop.py: y, the loss, every gradient and every hidden state of lnref's
golden file agree with torch_port to 1e-10 relative in float64 (agreement.py), at 1, 6 and
48 layers; the port is written from the papers and takes from lnref only parameter names
and option names.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (pip install torch==2.13.0 runs the interop tests)"
)

import torch_port  # noqa: E402  (imports torch)
from agreement import assert_agrees, disagreements, export, stored, sublayer  # noqa: E402

pytestmark = pytest.mark.torch

DEPTHS = (1, 6, 48)
QK_NORMS = ("head", "full")


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
def test_port_agrees_with_each_qk_norm_on_48_layer_post_ln_at_the_sublayers_scale(tmp_path, variant):
    """48 Post-LN layers make the tokens alike (rank collapse), so the upper layers' queries
    and keys barely move the loss: the gradients of their q and k norms are round-off of their
    sublayer's (next test) and are judged at its scale; every other tensor as everywhere."""
    assert_agrees(export(tmp_path, "post", 48, qk_norm=variant), grouping=sublayer)


def test_qk_norm_gradients_of_deep_post_ln_are_round_off_of_their_sublayers(tmp_path):
    """Moving every parameter by one unit in the last place moves the upper layers' q and k
    norm gradients by more than 1e-10 of their own size, and nothing by more than 1e-10 of
    its sublayer's: no float64 implementation fixes those digits."""
    path = export(tmp_path, "post", 48, qk_norm="head")
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    for name in arrays:
        if name.startswith("params/"):
            arrays[name] = np.nextafter(arrays[name], np.inf)
    np.savez(tmp_path / "nudged.npz", **arrays)
    here, nudged = torch_port.evaluate(path), torch_port.evaluate(tmp_path / "nudged.npz")
    moved = disagreements(here, nudged)
    assert moved and all(".attn.q_norm." in name or ".attn.k_norm." in name for name in moved)
    assert "grads/layers.45.attn.q_norm.gamma" in moved
    assert not disagreements(here, nudged, grouping=sublayer)


@pytest.mark.parametrize("variant", QK_NORMS)
def test_port_agrees_with_each_qk_norm_on_a_decoder_at_a_generic_point(tmp_path, variant):
    """Self- and cross-attention both carry the variant; no gain left at 1."""
    path = export(tmp_path, "pre", 6, generic=True, qk_norm=variant, cross_attention=True, causal=True, norm="rmsnorm")
    assert_agrees(path)


def test_agreement_check_flags_a_qk_norm_the_port_leaves_out(tmp_path):
    path = export(tmp_path, "pre", 6, generic=True, qk_norm="head")
    failing = disagreements(stored(path), torch_port.evaluate(path, qk_norm="none"))
    assert "y" in failing and "grads/layers.0.attn.q_norm.gamma" in failing
