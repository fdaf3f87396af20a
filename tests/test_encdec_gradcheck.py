"""The gradient checker on encoder-decoder models: every mode passes correct models, every
tensor of both stacks and both inputs is checked, a move re-runs only what follows it, and a
broken gradient through the memory is caught."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import lnref
from lnref import gradcheck as checker
from lnref.autograd import PRIMITIVES
from lnref.cli import main
from lnref.gradcheck.point import Point

SMALL = dict(d_model=8, n_heads=2, d_ff=16)
SHAPE = dict(batch=2, seq=4, memory_len=3)  # a target of 4 tokens, a source of 3


def build(scheme="residual", encoder_layers=2, decoder_layers=2, **options):
    return lnref.build(scheme, encoder_layers=encoder_layers, decoder_layers=decoder_layers, **{**SMALL, **options})


def failed(report):
    return {r.tensor for r in report.results if r.status == "failed"}


@pytest.mark.parametrize("mode", ["directional", "blockwise", "entries", "full"])
@pytest.mark.parametrize("scheme", ["post", "pre", "residual", "b2t", "admin", "deepnorm"])
def test_every_mode_passes_the_listed_schemes(scheme, mode):
    report = checker.gradcheck(build(scheme), mode=mode, workers=1, **SHAPE)
    assert report.ok, report.to_text()
    assert {r.status for r in report.results} <= {"passed", "zero"}


@pytest.mark.parametrize("scheme", ["peri", "dlcl", "subln", "hybridnorm", "tfixup"])
def test_schemes_with_stack_norms_history_or_inner_norms_pass_blockwise(scheme):
    report = checker.gradcheck(build(scheme), mode="blockwise", **SHAPE)
    assert report.ok, report.to_text()


def test_every_parameter_of_both_stacks_and_both_inputs_is_checked():
    model = build("pre")
    report = checker.gradcheck(model, **SHAPE)
    assert [r.tensor for r in report.results] == [*model.params, "source", "target"]


def test_blockwise_checks_every_block_the_bridge_included_with_its_input_streams():
    model = build("peri")  # stack-level norms on both sides of the bridge
    names = {r.tensor for r in checker.gradcheck(model, mode="blockwise", **SHAPE).results}
    assert set(model.params) <= names
    assert {"embed.input.0", "embed.input.1", "bridge.input.0", "bridge.input.1"} <= names
    assert {"decoder.layers.1.input.0", "decoder.layers.1.input.1"} <= names  # its stream and the memory


def test_a_move_re_runs_the_model_from_the_first_block_that_reads_the_tensor():
    model = build("peri", 2, 3)
    (source, target), dy, _ = model.sample_inputs(**SHAPE)
    point = Point(model, model.params, (source, target), dy, None)
    starts = {
        name: point.start_of(name)
        for name in (
            "encoder.embed_ln.gamma",
            "encoder.layers.1.attn.wq",
            "encoder.final_ln.gamma",
            "decoder.embed_ln.gamma",
            "decoder.layers.0.cross.wk",
            "decoder.layers.2.ffn.w1",
            "decoder.final_ln.beta",
            "source",
        )
    }
    assert list(starts.values()) == [-1, 1, 2, 2, 3, 5, 6, -1]
    assert (
        point.where("encoder.final_ln.gamma") == "bridge"
        and point.where("decoder.layers.0.cross.wk") == "decoder layer 0"
    )


def test_the_point_s_moved_losses_are_the_model_s_own():
    model = build("residual")
    (source, target), dy, _ = model.sample_inputs(**SHAPE)
    point = Point(model, model.params, (source, target), dy, None)
    move = np.random.default_rng(0).standard_normal(model.params["encoder.layers.1.ffn.w1"].shape) * 1e-3
    moved = {**model.params, "encoder.layers.1.ffn.w1": model.params["encoder.layers.1.ffn.w1"] + move}
    model.load(moved)
    expected = float(np.sum(model(source, target) * dy))
    assert point.losses([("encoder.layers.1.ffn.w1", move)])[0] == pytest.approx(expected, rel=1e-13)


def _scale_the_memory_gradient(monkeypatch, factor):
    """The fused attention's VJP with its memory cotangent scaled: the decoder's gradient reaching
    the encoder through cross-attention is wrong, nothing else is."""
    vjp = PRIMITIVES["attention_sublayer"].vjp

    def scaled(dout, residuals):
        grads = list(vjp(dout, residuals))
        if grads[1] is not None:
            grads[1] = grads[1] * factor
        return tuple(grads)

    monkeypatch.setitem(PRIMITIVES, "attention_sublayer", PRIMITIVES["attention_sublayer"]._replace(vjp=scaled))


def test_a_wrong_gradient_through_the_memory_fails_every_encoder_tensor(monkeypatch):
    _scale_the_memory_gradient(monkeypatch, 1 + 1e-5)
    model = build("post")
    report = checker.gradcheck(model, **SHAPE)
    encoder = {n for n in model.params if n.startswith("encoder.") and not n.endswith(".bk")}
    assert failed(report) == encoder | {"source"}, report.to_text()


def test_a_wrong_gradient_through_the_memory_fails_the_decoder_blocks_memory_input(monkeypatch):
    _scale_the_memory_gradient(monkeypatch, 1 + 1e-5)
    report = checker.gradcheck(build("post"), mode="blockwise", **SHAPE)
    assert failed(report) == {"decoder.layers.0.input.1", "decoder.layers.1.input.1"}, report.to_text()


def test_the_text_report_names_each_stack_s_layers_and_the_bridge():
    text = checker.gradcheck(build("pre", 3, 3), mode="blockwise", **SHAPE).to_text()
    assert "gradcheck pre: 3 encoder and 3 decoder layers" in text
    rows = [line.split()[0:3] for line in text.splitlines()]
    assert (
        ["encoder", "layers", "0-2"] in rows
        and ["decoder", "layers", "0-2"] in rows
        and ["bridge"] in [r[:1] for r in rows]
    )


# ----- the command line -----


def run(*args):
    return CliRunner().invoke(main, ["gradcheck", *args])


def test_cli_checks_an_encoder_decoder_model_and_exits_0():
    result = run("--scheme", "b2t", "--encoder-layers", "2", "--decoder-layers", "2", "--source-len", "5", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert report["config"]["role"] == "encoder-decoder" and report["config"]["encoder_layers"] == 2
    assert {t["tensor"] for t in report["tensors"]} >= {"source", "target", "decoder.layers.1.cross.wv"}


def test_cli_with_head_checks_an_encoder_decoder_model_as_a_translation_model():
    result = run("--scheme", "pre", "--encoder-layers", "1", "--decoder-layers", "1", "--with-head", "--json")
    assert result.exit_code == 0, result.output
    tensors = {t["tensor"] for t in json.loads(result.stdout)["tensors"]}
    assert {
        "embed.source",
        "embed.target",
        "head.w",
        "encoder.layers.0.attn.wq",
        "decoder.layers.0.cross.wk",
    } <= tensors


def test_cli_sweeps_schemes_of_encoder_decoder_models(tmp_path):
    result = run(
        "--scheme", "post,rezero", "--encoder-layers", "1", "--decoder-layers", "2", "--out", str(tmp_path / "r.jsonl")
    )
    assert result.exit_code == 0, result.output
    assert "| post | layernorm | 1+2 |" in result.stdout and "2 models: 2 passed, 0 failed" in result.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--encoder-layers", "2"], "go together"),
        (
            ["--encoder-layers", "2", "--decoder-layers", "2", "--layers", "3"],
            "--layers counts the layers of one stack",
        ),
        (["--encoder-layers", "2", "--decoder-layers", "2", "--causal"], "sets --causal and --cross-attention itself"),
        (["--source-len", "5"], "give --encoder-layers"),
    ],
)
def test_cli_options_that_do_not_go_together_are_one_line_and_exit_2(args, words):
    result = run("--scheme", "pre", *args)
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
