"""The per-layer probes of an encoder-decoder model: each stack's layers, with the gradients of the
whole model's loss, and ``lnref profile --encoder-layers N --decoder-layers M [--stack]``."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import lnref
from lnref import probes
from lnref.cli import main

SMALL = dict(d_model=8, n_heads=2, d_ff=16)


def profiled(stack, scheme="pre", encoder_layers=3, decoder_layers=2):
    model = lnref.build(scheme, encoder_layers=encoder_layers, decoder_layers=decoder_layers, **SMALL)
    (source, target), dy, _ = model.sample_inputs(batch=2, seq=4, memory_len=5)
    return model, (source, target), dy, probes.layer_profile(model, (source, target), dy, stack=stack)


@pytest.mark.parametrize("stack, depth", [("encoder", 3), ("decoder", 2)])
def test_each_stack_s_profile_has_its_own_layers(stack, depth):
    _, _, _, profile = profiled(stack)
    assert profile.n_layers == depth
    assert len(profile.hidden_norm) == depth + 1 and len(profile.weight_grad_norms["ffn.w2"]) == depth
    assert ("cross" in profile.weight_grad_norms) is (stack == "decoder")


def test_the_encoder_s_weight_gradients_are_the_whole_model_s():
    model, (source, target), dy, profile = profiled("encoder")
    _, grads = model.value_and_grad(source, target, dy)
    expected = [np.linalg.norm(grads[f"encoder.layers.{i}.ffn.w2"]) for i in range(3)]
    assert np.allclose(profile.weight_grad_norms["ffn.w2"], expected, rtol=1e-12)


def test_the_encoder_s_states_are_the_source_s_and_carry_a_gradient():
    model, (source, target), _, profile = profiled("encoder")
    states = model.hidden_states(source, target)["encoder"]
    assert np.allclose(profile.hidden_norm, [np.linalg.norm(state[0]) for state in states], rtol=1e-12)
    assert np.all(profile.hidden_grad_norm > 0)


def invoke(*args):
    return CliRunner().invoke(main, ["profile", *args])


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_cli_profiles_the_chosen_stack(tmp_path, stack):
    out = str(tmp_path / "p.jsonl")
    args = ["--scheme", "post,pre", "--encoder-layers", "2", "--decoder-layers", "3", "--seeds", "1", "--out", out]
    result = invoke(*args, "--stack", stack, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert f"the {stack} of 2-3 encoder-decoder models" in result.stdout
    assert f"post, {2 if stack == 'encoder' else 3} layers" in result.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--stack", "encoder"], "--stack picks a stack"),
        (["--encoder-layers", "2", "--decoder-layers", "2", "--layers", "3"], "--layers counts the layers"),
        (["--encoder-layers", "2"], "go together"),
        (["--encoder-layers", "2", "--decoder-layers", "2", "--causal"], "sets --causal"),
    ],
)
def test_cli_profile_options_that_do_not_go_together_are_one_line_and_exit_2(args, words):
    result = invoke("--scheme", "pre", *args)
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
