"""Golden files of encoder-decoder models (format 5): what they hold, that they rebuild bit for
bit, and that a damaged one is refused in one line."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import lnref
from lnref.cli import main
from lnref.golden import GoldenError, compare_files, export_golden, from_golden, load_golden
from lnref.golden.compat import upgrade

SMALL = dict(d_model=8, n_heads=2, d_ff=16)


def export(path, scheme="residual", encoder_layers=2, decoder_layers=3, seq=4, source_len=5, **options):
    model = lnref.build(scheme, encoder_layers=encoder_layers, decoder_layers=decoder_layers, **SMALL, **options)
    export_golden(model, path, batch=2, seq=seq, source_len=source_len)
    return model


def read(path):
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def test_an_encoder_decoder_file_holds_every_entry_of_the_format(tmp_path):
    model = export(tmp_path / "g.npz")
    names = set(read(tmp_path / "g.npz"))
    expected = {"config", "source", "target", "dy", "y", "memory", "loss", "grads/source", "grads/target"}
    expected |= {f"params/{n}" for n in model.params} | {f"grads/{n}" for n in model.params}
    expected |= {f"hidden/encoder/{layer}/{s}" for layer in range(3) for s in ("x_a", "x_d")}
    expected |= {f"hidden/decoder/{layer}/{s}" for layer in range(4) for s in ("x_a", "x_d")}
    assert names == expected


def test_it_stores_what_the_model_computes_with_the_source_and_target_lengths_apart(tmp_path):
    model = export(tmp_path / "g.npz", "pre")
    stored = read(tmp_path / "g.npz")
    source, target, dy = stored["source"], stored["target"], stored["dy"]
    assert (source.shape, target.shape) == ((2, 5, 8), (2, 4, 8))
    loss, grads = model.value_and_grad(source, target, dy)
    assert stored["loss"] == loss and np.array_equal(stored["y"], model(source, target))
    assert np.array_equal(stored["memory"], model.encoder(source))
    assert all(np.array_equal(stored[f"grads/{n}"], grads[n]) for n in [*model.params, "source", "target"])
    config = json.loads(stored["config"].tobytes())
    assert config["format_version"] == 5 and config["model"] == model.config.to_dict()
    assert config["inputs"] == {"batch": 2, "seq": 4, "memory_len": None, "seed": 0, "source_len": 5}


@pytest.mark.parametrize("scheme", ["post", "admin", "dlcl", "peri"])
def test_from_golden_rebuilds_an_encoder_decoder_model_bit_for_bit(tmp_path, scheme):
    model = export(tmp_path / "g.npz", scheme)
    rebuilt = from_golden(tmp_path / "g.npz")
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    assert all(np.array_equal(rebuilt.params[n], model.params[n]) for n in model.params)


def test_load_golden_reads_each_stack_s_hidden_states(tmp_path):
    export(tmp_path / "g.npz", "residual", 2, 3)
    golden = load_golden(tmp_path / "g.npz")
    assert golden.encoder_decoder and (golden.source_len, golden.seq) == (5, 4)
    assert [len(golden.hidden["encoder"]), len(golden.hidden["decoder"])] == [3, 4]
    assert golden.hidden["decoder"][3]["x_d"].shape == (2, 4, 8)


def test_lnref_compare_passes_a_file_against_itself_and_names_a_wrong_memory(tmp_path):
    export(tmp_path / "g.npz")
    assert compare_files(tmp_path / "g.npz", tmp_path / "g.npz").ok
    arrays = read(tmp_path / "g.npz")
    arrays["memory"] = arrays["memory"] * (1 + 1e-8)
    np.savez(tmp_path / "actual.npz", **{n: v for n, v in arrays.items() if n != "config"})
    report = compare_files(tmp_path / "g.npz", tmp_path / "actual.npz")
    assert [r.name for r in report.results if r.status == "FAIL"] == ["memory"]


@pytest.mark.parametrize("version", [3, 4])
def test_a_document_of_an_earlier_format_is_a_model_of_one_stack(version):
    upgraded = upgrade({"format_version": version, "model": {"scheme": "pre"}})
    assert upgraded["model"] == {"scheme": "pre", "role": "stack", "encoder_layers": 0, "decoder_layers": 0}


def test_an_encoder_decoder_file_at_a_generic_point_rebuilds_bit_for_bit(tmp_path):
    model = lnref.build("pre", encoder_layers=2, decoder_layers=2, **SMALL)
    initial = dict(model.params)
    export_golden(model, tmp_path / "g.npz", seq=4, source_len=5, point="generic")
    golden = load_golden(tmp_path / "g.npz")
    assert golden.point == "generic" and not np.array_equal(
        golden.params["encoder.layers.0.attn.wq"], initial["encoder.layers.0.attn.wq"]
    )
    assert from_golden(tmp_path / "g.npz").config.role == "encoder-decoder"


def test_an_encoder_decoder_file_rounded_to_float16_holds_float16_inputs_and_a_computed_memory(tmp_path):
    model = lnref.build("pre", encoder_layers=1, decoder_layers=1, **SMALL)
    arrays = export_golden(model, tmp_path / "g.npz", seq=4, source_len=5, rounded_to="float16")
    for name in ("source", "target", "dy", "params/decoder.layers.0.cross.wq"):
        assert np.array_equal(arrays[name].astype(np.float16).astype(np.float64), arrays[name]), name
    assert not np.array_equal(arrays["memory"].astype(np.float16).astype(np.float64), arrays["memory"])
    assert load_golden(tmp_path / "g.npz").rounded_to == "float16"


def _rewrite(path, out, change):
    arrays = read(path)
    config = json.loads(arrays.pop("config").tobytes())
    change(config, arrays)
    np.savez(out, config=np.frombuffer(json.dumps(config).encode(), dtype=np.uint8), **arrays)
    return out


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c, a: c["inputs"].pop("source_len"), "inputs.source_len must be an integer >= 1"),
        (lambda c, a: c["model"].update(decoder_layers=4, n_layers=6), "config says 4 decoder layers"),
        (lambda c, a: a.pop("memory"), "missing memory"),
        (lambda c, a: a.update(source=a["source"][:, :3]), "source has shape (2, 3, 8), expected (2, 5, 8)"),
        (lambda c, a: c["model"].update(role="stack"), "encoder_layers and decoder_layers describe"),
    ],
)
def test_a_damaged_encoder_decoder_file_is_one_line(tmp_path, change, words):
    export(tmp_path / "g.npz")
    bad = _rewrite(tmp_path / "g.npz", tmp_path / "bad.npz", change)
    with pytest.raises(GoldenError) as error:
        load_golden(bad)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_cli_exports_an_encoder_decoder_file(tmp_path):
    out = tmp_path / "g.npz"
    args = ["export", "--scheme", "deepnorm", "--encoder-layers", "2", "--decoder-layers", "1", "--source-len", "3"]
    result = CliRunner().invoke(main, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "deepnorm, 2 encoder and 1 decoder layers" in result.stdout
    assert read(out)["source"].shape == (2, 3, 16)
    assert from_golden(out).config.encoder_layers == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["--encoder-layers", "2"], "go together"),
        (["--encoder-layers", "2", "--decoder-layers", "2", "--layers", "3"], "--layers counts the layers"),
        (["--encoder-layers", "2", "--decoder-layers", "2", "--cross-attention"], "sets --causal"),
        (["--source-len", "3"], "give --encoder-layers"),
    ],
)
def test_cli_export_options_that_do_not_go_together_are_one_line_and_exit_2(tmp_path, args, words):
    result = CliRunner().invoke(main, ["export", "--scheme", "pre", *args, "-o", str(tmp_path / "g.npz")])
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "g.npz").exists()
