"""Golden files: export writes the format, compare measures against it, from_golden reproduces
it bit for bit, and damaged or foreign input is one line and exit code 2."""

from __future__ import annotations

import ast
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lnref
import lnref.golden
from lnref.cli import main
from lnref.golden import GoldenError, compare_files, export_golden, hidden_streams

SMALL = dict(d_model=16, n_heads=2, d_ff=32)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def export(path, scheme="post", layers=2, **options):
    model = lnref.build(scheme, layers, **{**SMALL, **options})
    export_golden(model, path, batch=2, seq=4)
    return model


def read(path):
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def config_of(arrays):
    return json.loads(arrays["config"].tobytes().decode("utf-8"))


def write(path, arrays, config=None):
    """An .npz with ``arrays``, the config entry replaced by ``config`` when given."""
    arrays = dict(arrays)
    if config is not None:
        arrays["config"] = np.frombuffer(json.dumps(config).encode("utf-8"), dtype=np.uint8)
    np.savez(path, **arrays)
    return path


def assert_input_error(result, *words):
    """Exit 2, one line on stderr naming ``words``, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def files_in(directory):
    return sorted(os.listdir(directory))


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    path = tmp_path_factory.mktemp("golden") / "post.npz"
    export(path)
    return path


@pytest.fixture
def arrays(golden):
    return read(golden)


# ----- export ----------------------------------------------------------------------------


def test_export_writes_every_entry_of_the_format(tmp_path):
    model = export(tmp_path / "g.npz", "residual", layers=2)
    names = set(read(tmp_path / "g.npz"))
    expected = {"config", "x", "dy", "y", "loss", "grads/input"}
    expected |= {f"params/{n}" for n in model.params} | {f"grads/{n}" for n in model.params}
    expected |= {f"hidden/{layer}/{s}" for layer in range(3) for s in ("x_a", "x_d")}
    assert names == expected


def test_export_config_records_format_model_inputs_and_version(tmp_path):
    model = export(tmp_path / "g.npz", "pre", layers=3, seed=7, norm="rmsnorm")
    config = config_of(read(tmp_path / "g.npz"))
    assert (config["format"], config["format_version"]) == ("lnref-golden", 5)
    assert config["lnref_version"] == lnref.__version__
    assert config["model"] == model.config.to_dict()
    assert config["inputs"] == {"batch": 2, "seq": 4, "memory_len": None, "seed": 7}
    assert (config["point"], config["rounded_to"]) == ("init", None)


def test_export_stores_what_the_model_api_computes(tmp_path):
    model = export(tmp_path / "g.npz", "dlcl", layers=2)
    stored = read(tmp_path / "g.npz")
    x, dy, _ = model.sample_inputs(2, 4)
    loss, grads = model.value_and_grad(x, dy)
    assert np.array_equal(stored["x"], x) and np.array_equal(stored["dy"], dy)
    assert np.array_equal(stored["y"], model(x)) and stored["loss"] == loss
    for name in model.params:
        assert np.array_equal(stored[f"params/{name}"], model.params[name])
        assert np.array_equal(stored[f"grads/{name}"], grads[name])
    assert np.array_equal(stored["grads/input"], grads["input"])
    for layer, state in enumerate(model.hidden_states(x)):
        streams = hidden_streams("dlcl", layer)
        assert len(streams) == len(state)
        for stream, value in zip(streams, state):
            assert np.array_equal(stored[f"hidden/{layer}/{stream}"], value)


def test_the_golden_package_takes_stream_names_from_the_schemes():
    """No scheme is special-cased here: a scheme declares its streams, golden files read them."""
    package = Path(lnref.golden.__file__).parent
    literals = set()
    for module in package.glob("*.py"):
        tree = ast.parse(module.read_text())
        literals |= {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
    assert not literals & set(lnref.SCHEMES)


def test_export_is_the_same_for_the_same_seed_and_differs_for_another(tmp_path):
    for name, seed in (("a.npz", 3), ("b.npz", 3), ("c.npz", 4)):
        export(tmp_path / name, "admin", seed=seed)
    a, b, c = (read(tmp_path / n) for n in ("a.npz", "b.npz", "c.npz"))
    assert all(a[n].tobytes() == b[n].tobytes() for n in a)
    assert not np.array_equal(a["y"], c["y"])


def test_export_cli_with_cross_attention_stores_memory_and_its_gradient(tmp_path):
    path = tmp_path / "dec.npz"
    result = run(
        "export",
        "--scheme",
        "residual",
        "--layers",
        "2",
        "--cross-attention",
        "--memory-len",
        "5",
        "--seq",
        "3",
        "-o",
        path,
    )
    assert result.exit_code == 0, result.output
    stored = read(path)
    assert stored["memory"].shape == stored["grads/memory"].shape == (2, 5, 16)
    assert stored["x"].shape == (2, 3, 16)
    assert config_of(stored)["inputs"]["memory_len"] == 5


def test_export_leaves_no_temporary_file(tmp_path):
    assert run("export", "--scheme", "post", "--layers", "1", "-o", tmp_path / "g.npz").exit_code == 0
    assert files_in(tmp_path) == ["g.npz"]


def test_failed_export_leaves_an_existing_file_untouched(tmp_path):
    path = tmp_path / "g.npz"
    path.write_bytes(b"old")
    result = run("export", "--scheme", "post", "--heads", "3", "-o", path)
    assert_input_error(result, "not divisible")
    assert path.read_bytes() == b"old" and files_in(tmp_path) == ["g.npz"]


@pytest.mark.parametrize(
    "target, words",
    [
        ("missing-dir/g.npz", ("does not exist",)),
        (".", ("directory",)),
        ("g.txt", ("unknown extension", ".npz", ".safetensors")),
    ],
)
def test_export_to_an_unusable_path_is_one_line_and_writes_nothing(tmp_path, target, words):
    result = run("export", "--scheme", "post", "--layers", "1", "-o", tmp_path / target)
    assert_input_error(result, *words)
    assert files_in(tmp_path) == []


def test_export_memory_len_without_cross_attention_is_an_input_error(tmp_path):
    assert_input_error(
        run("export", "--scheme", "post", "--memory-len", "3", "-o", tmp_path / "g.npz"), "--cross-attention"
    )
    assert files_in(tmp_path) == []


def test_safetensors_without_the_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    result = run("export", "--scheme", "post", "--layers", "1", "-o", tmp_path / "g.safetensors")
    assert_input_error(result, "lnref[safetensors]")
    assert files_in(tmp_path) == []


def needs_safetensors():
    pytest.importorskip("safetensors", reason="safetensors is not installed (pip install 'lnref[safetensors]')")


def test_safetensors_file_holds_the_npz_arrays_and_config(tmp_path):
    needs_safetensors()
    from safetensors import safe_open

    export(tmp_path / "g.npz", "residual", cross_attention=True)
    export(tmp_path / "g.safetensors", "residual", cross_attention=True)
    with safe_open(tmp_path / "g.safetensors", framework="numpy") as handle:
        config = json.loads(handle.metadata()["config"])
        stored = {name: handle.get_tensor(name) for name in handle.keys()}
    npz = read(tmp_path / "g.npz")
    assert config == config_of(npz) and set(stored) == set(npz) - {"config"}
    assert all(stored[n].tobytes() == npz[n].tobytes() and stored[n].shape == npz[n].shape for n in stored)


def test_compare_between_npz_and_safetensors_passes(tmp_path):
    needs_safetensors()
    export(tmp_path / "g.npz", "deepnorm")
    export(tmp_path / "g.safetensors", "deepnorm")
    result = run("compare", tmp_path / "g.safetensors", tmp_path / "g.npz", "--require-all")
    assert result.exit_code == 0, result.output


def test_from_golden_reads_safetensors(tmp_path):
    needs_safetensors()
    model = export(tmp_path / "g.safetensors", "admin")
    assert lnref.from_golden(tmp_path / "g.safetensors").config == model.config


# ----- compare ---------------------------------------------------------------------------


def test_compare_of_a_file_with_itself_passes_every_tensor(golden, arrays):
    result = run("compare", golden, golden)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == f"{len(arrays) - 1} passed, 0 failed"


def test_gradient_perturbed_by_1e_6_relative_fails_and_is_named(tmp_path, golden, arrays):
    name = "grads/layers.1.ffn.w2"
    arrays[name] = arrays[name] * (1 + 1e-6)
    result = run("compare", golden, write(tmp_path / "a.npz", arrays))
    assert result.exit_code == 1, result.output
    failing = [line for line in result.stdout.splitlines() if line.rstrip().endswith("FAIL")]
    assert len(failing) == 1 and failing[0].split()[0] == name
    assert result.stdout.strip().splitlines()[-1].endswith("1 failed")


def test_every_gradient_perturbed_by_1e_6_relative_fails(tmp_path, golden, arrays):
    """All but the key biases: their gradient is zero in exact arithmetic (softmax ignores a
    shift shared by every key), so the stored values are round-off and 1e-6 of them is
    nothing on the scale of the sublayer (see test_key_bias_round_off_passes_...)."""
    gradients = [n for n in arrays if n.startswith("grads/") and not n.endswith(".bk")]
    for name in gradients:
        perturbed = dict(arrays, **{name: arrays[name] * (1 + 1e-6)})
        report = compare_files(golden, write(tmp_path / "a.npz", perturbed))
        assert [r.name for r in report.results if r.status != "ok"] == [name]


def test_perturbation_within_the_tolerance_passes(tmp_path, golden, arrays):
    arrays["grads/layers.1.ffn.w2"] = arrays["grads/layers.1.ffn.w2"] * (1 + 1e-12)
    assert run("compare", golden, write(tmp_path / "a.npz", arrays)).exit_code == 0


def test_rtol_and_atol_options_loosen_the_check(tmp_path, golden, arrays):
    arrays["y"] = arrays["y"] + 1e-6
    actual = write(tmp_path / "a.npz", arrays)
    assert run("compare", golden, actual).exit_code == 1
    assert run("compare", golden, actual, "--atol", "2e-6").exit_code == 0
    assert run("compare", golden, actual, "--rtol", "1e-5").exit_code == 0


def test_key_bias_round_off_passes_on_the_group_scale_but_not_per_tensor(tmp_path, golden, arrays):
    """A port's key-bias gradient is different round-off: fine on its sublayer's scale."""
    name = "grads/layers.0.attn.bk"
    arrays[name] = -arrays[name]
    actual = write(tmp_path / "a.npz", arrays)
    assert run("compare", golden, actual).exit_code == 0
    result = run("compare", golden, actual, "--per-tensor")
    assert result.exit_code == 1 and name in result.stdout


def test_subset_actual_passes_and_lists_what_it_lacks(tmp_path, golden, arrays):
    subset = {n: v for n, v in arrays.items() if n == "y" or n.startswith("grads/")}
    result = run("compare", golden, write(tmp_path / "a.npz", subset))
    assert result.exit_code == 0, result.output
    assert f"{len(subset)} passed, 0 failed" in result.stdout
    assert "missing in ACTUAL (not compared)" in result.stdout and "params/layers.0.attn.wq" in result.stdout


def test_require_all_counts_missing_names_as_failures(tmp_path, golden, arrays):
    del arrays["grads/input"]
    result = run("compare", golden, write(tmp_path / "a.npz", arrays), "--require-all")
    assert result.exit_code == 1
    assert "grads/input" in result.stdout and result.stdout.strip().endswith("1 failed")


def test_extra_names_are_listed_but_do_not_fail(tmp_path, golden, arrays):
    arrays["logits"] = np.ones(3)
    result = run("compare", golden, write(tmp_path / "a.npz", arrays))
    assert result.exit_code == 0
    assert "extra in ACTUAL (not compared): 1: logits" in result.stdout


def test_shape_mismatch_fails_and_is_named(tmp_path, golden, arrays):
    arrays["grads/layers.0.ffn.b1"] = arrays["grads/layers.0.ffn.b1"][:3]
    result = run("compare", golden, write(tmp_path / "a.npz", arrays), "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 1
    bad = [t for t in report["tensors"] if t["status"] != "ok"]
    assert [(t["name"], t["status"], t["actual_shape"]) for t in bad] == [("grads/layers.0.ffn.b1", "shape", [3])]


def test_dtype_mismatch_fails_and_is_named(tmp_path, golden, arrays):
    arrays["y"] = arrays["y"].astype(np.float32)
    report = json.loads(run("compare", golden, write(tmp_path / "a.npz", arrays), "--json").stdout)
    assert [(t["name"], t["status"]) for t in report["tensors"] if t["status"] != "ok"] == [("y", "dtype")]


def test_nan_in_actual_fails_that_tensor(tmp_path, golden, arrays):
    arrays["grads/input"][0, 0, 0] = np.nan
    result = run("compare", golden, write(tmp_path / "a.npz", arrays), "--json")
    assert result.exit_code == 1
    entry = next(t for t in json.loads(result.stdout)["tensors"] if t["name"] == "grads/input")
    assert entry["status"] == "nonfinite" and entry["max_abs_error"] is None


def test_map_renames_actual_names_to_expected_names(tmp_path, golden, arrays):
    foreign = {"out": arrays["y"], "encoder.0.fc1.weight.grad": arrays["grads/layers.0.ffn.w1"]}
    actual = write(tmp_path / "a.npz", foreign)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"out": "y", "encoder.0.fc1.weight.grad": "grads/layers.0.ffn.w1"}))
    assert_input_error(run("compare", golden, actual), "none of the names")
    result = run("compare", golden, actual, "--map", mapping)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("2 passed, 0 failed")


@pytest.mark.parametrize(
    "text, words",
    [("{not json", ("not valid JSON",)), ('["y"]', ("JSON object",)), ('{"a": "y", "b": "y"}', ("two arrays", "'y'"))],
)
def test_bad_name_map_is_an_input_error(tmp_path, golden, arrays, text, words):
    actual = write(tmp_path / "a.npz", {"a": arrays["y"], "b": arrays["y"]})
    mapping = tmp_path / "map.json"
    mapping.write_text(text)
    assert_input_error(run("compare", golden, actual, "--map", mapping), *words)


def test_transpose_weights_reads_frameworks_storing_d_out_by_d_in(tmp_path, golden, arrays):
    transposed = {n: (v.T if v.ndim == 2 else v) for n, v in arrays.items() if n.startswith("grads/")}
    actual = write(tmp_path / "a.npz", transposed)
    without = json.loads(run("compare", golden, actual, "--json").stdout)
    statuses = {t["name"]: t["status"] for t in without["tensors"]}
    assert statuses["grads/layers.0.attn.wq"] == "FAIL"  # square: same shape, wrong values
    assert statuses["grads/layers.0.ffn.w1"] == "shape"
    result = run("compare", golden, actual, "--transpose-weights")
    assert result.exit_code == 0, result.output


def test_json_output_is_one_document_with_the_counts(golden, arrays):
    result = run("compare", golden, golden, "--json")
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["failed"] == 0 and report["passed"] == len(arrays) - 1
    assert report["rtol"] == 1e-10 and report["scale"] == "group" and report["missing"] == []
    assert {"name", "status", "max_abs_error", "max_rel_error", "scale"} <= set(report["tensors"][0])


def test_float32_files_default_to_a_looser_rtol(tmp_path):
    export(tmp_path / "f.npz", "pre", dtype="float32")
    report = json.loads(run("compare", tmp_path / "f.npz", tmp_path / "f.npz", "--json").stdout)
    assert report["rtol"] == 1e-3 and report["ok"]


def test_negative_tolerance_is_an_input_error(golden):
    assert_input_error(run("compare", golden, golden, "--rtol", "-1"), ">= 0")


def test_expected_without_config_is_compared_as_plain_arrays(tmp_path, arrays):
    expected = write(tmp_path / "e.npz", {"y": arrays["y"]})
    actual = write(tmp_path / "a.npz", {"y": arrays["y"] * (1 + 1e-6)})
    assert run("compare", expected, expected).exit_code == 0
    assert run("compare", expected, actual).exit_code == 1


# ----- load_golden and from_golden ------------------------------------------------------


def test_load_golden_exposes_config_sizes_and_arrays(golden, arrays):
    loaded = lnref.load_golden(golden)
    assert loaded.config == lnref.build("post", 2, **SMALL).config
    assert (loaded.batch, loaded.seq, loaded.memory_len) == (2, 4, None)
    assert np.array_equal(loaded.y, arrays["y"]) and loaded.loss == float(arrays["loss"])
    assert set(loaded.grads) == {n[len("grads/") :] for n in arrays if n.startswith("grads/")}
    assert len(loaded.hidden) == 3 and np.array_equal(loaded.hidden[2]["x"], arrays["hidden/2/x"])


VARIANTS = [(scheme, {}) for scheme in lnref.SCHEMES] + [
    ("admin", dict(cross_attention=True, causal=True)),
    ("residual", dict(norm="rmsnorm", activation="gelu")),
    ("dlcl", dict(dtype="float32")),
    ("deepnorm", dict(cross_attention=True)),
]


@pytest.mark.parametrize("scheme, options", VARIANTS)
def test_from_golden_reproduces_every_stored_array_bit_for_bit(tmp_path, scheme, options):
    export(tmp_path / "g.npz", scheme, layers=3, **options)
    model = lnref.from_golden(tmp_path / "g.npz")  # raises if any array differs in one bit
    stored = read(tmp_path / "g.npz")
    memory = stored.get("memory")
    loss, grads = model.value_and_grad(stored["x"], stored["dy"], memory)
    assert model(stored["x"], memory).tobytes() == stored["y"].tobytes()
    assert np.asarray(loss, stored["loss"].dtype).tobytes() == stored["loss"].tobytes()
    assert all(grads[n].tobytes() == stored[f"grads/{n}"].tobytes() for n in model.params)


def test_from_golden_loads_stored_parameters_instead_of_reprofiling(tmp_path):
    """Admin's omega comes from a profiling pass at build time; the file's omega must win."""
    model = lnref.build("admin", 3, **SMALL)
    for name in model.params:
        if ".omega_" in name:
            model.params[name] = model.params[name] * 1.5
    export_golden(model, tmp_path / "g.npz", batch=2, seq=4)
    rebuilt = lnref.from_golden(tmp_path / "g.npz")
    assert np.array_equal(rebuilt.params["layers.2.omega_ffn"], model.params["layers.2.omega_ffn"])
    assert not np.array_equal(
        rebuilt.params["layers.2.omega_ffn"], lnref.build("admin", 3, **SMALL).params["layers.2.omega_ffn"]
    )


def test_from_golden_rejects_an_output_one_ulp_off(tmp_path, arrays):
    arrays["grads/layers.1.ln_ffn.gamma"][3] = np.nextafter(arrays["grads/layers.1.ln_ffn.gamma"][3], np.inf)
    path = write(tmp_path / "g.npz", arrays)
    with pytest.raises(GoldenError, match=r"does not reproduce 1 arrays bit for bit: grads/layers\.1\.ln_ffn\.gamma"):
        lnref.from_golden(path)
    assert lnref.from_golden(path, verify=False).config.scheme == "post"


# ----- bad input: one line, exit 2 -------------------------------------------------------


def damaged_config(arrays, **changes):
    config = config_of(arrays)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config[section][key] = value
    return config


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(model__scheme="postln"), ("unknown scheme 'postln'",)),
        (dict(model__n_heads=3), ("not divisible by n_heads",)),
        (dict(model__n_layers=10**9), (f"says {10**9} layers",)),
        (dict(model__d_ff=10**9), ("params/layers.0.ffn.w1",)),
        (dict(model__causal="yes"), ("causal must be true or false",)),
        (dict(model__eps=-1.0), ("eps",)),
        (dict(inputs__batch=0), ("inputs.batch",)),
        (dict(inputs__seq=5), ("x has shape",)),
    ],
)
def test_config_describing_another_or_impossible_model_is_an_input_error(tmp_path, golden, arrays, changes, words):
    path = write(tmp_path / "bad.npz", arrays, damaged_config(arrays, **changes))
    assert_input_error(run("compare", path, golden), *words)
    with pytest.raises(GoldenError):
        lnref.load_golden(path)


@pytest.mark.parametrize("version", [6, 0, "2", True])
def test_a_format_version_this_lnref_does_not_read_is_an_input_error(tmp_path, golden, arrays, version):
    config = dict(config_of(arrays), format_version=version)
    path = write(tmp_path / "bad.npz", arrays, config)
    assert_input_error(run("compare", path, golden), f"version {version!r}", "reads versions 1, 2, 3, 4, 5")


def test_nan_in_a_golden_array_is_an_input_error(tmp_path, golden, arrays):
    arrays["grads/layers.0.attn.wq"][1, 2] = np.nan
    assert_input_error(run("compare", write(tmp_path / "bad.npz", arrays), golden), "grads/layers.0.attn.wq", "NaN")


def test_object_array_is_refused_without_unpickling(tmp_path, golden, arrays):
    arrays["y"] = np.array([{"payload": 1}], dtype=object)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # allow_pickle is on when writing
    assert_input_error(run("compare", path, golden), "object array", "pickle")
    assert_input_error(run("compare", golden, path), "object array", "pickle")


@pytest.mark.parametrize(
    "drop, add, words",
    [("grads/input", None, ("missing grads/input",)), (None, "grads/extra", ("unexpected grads/extra",))],
)
def test_golden_file_with_missing_or_unexpected_entries_is_an_input_error(tmp_path, golden, arrays, drop, add, words):
    if drop:
        del arrays[drop]
    if add:
        arrays[add] = np.zeros(2)
    assert_input_error(run("compare", write(tmp_path / "bad.npz", arrays), golden), *words)


def test_truncated_file_is_an_input_error(tmp_path, golden):
    data = golden.read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: len(data) // 2])
    assert_input_error(run("compare", path, golden), "cut.npz")
    assert_input_error(run("compare", golden, path), "cut.npz")


def test_random_bytes_are_an_input_error(tmp_path, golden):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_input_error(run("compare", path, golden), "not a readable .npz")


def test_file_that_is_not_lnref_is_refused_by_load_golden(tmp_path, arrays):
    path = write(tmp_path / "plain.npz", {"y": arrays["y"]})
    with pytest.raises(GoldenError, match="not an lnref golden file"):
        lnref.load_golden(path)


def test_nonexistent_path_is_an_input_error(tmp_path, golden):
    assert_input_error(run("compare", tmp_path / "nope.npz", golden), "no such file")
    assert_input_error(run("compare", golden, tmp_path / "nope.npz"), "no such file")


def test_unsupported_file_type_is_an_input_error(tmp_path, golden):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x80\x02}q\x00.")
    assert_input_error(run("compare", golden, path), "not an .npz or .safetensors file")


# ----- damaged files (hypothesis) --------------------------------------------------------


@pytest.fixture(scope="module", params=[".npz", ".safetensors"])
def tiny_golden(request, tmp_path_factory):
    """(extension, bytes) of a small valid golden file."""
    if request.param == ".safetensors":
        needs_safetensors()
    path = tmp_path_factory.mktemp("tiny") / f"tiny{request.param}"
    export_golden(lnref.build("pre", 1, d_model=4, n_heads=2, d_ff=8), path, batch=1, seq=2)
    return request.param, path.read_bytes()


damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4),
    ),
)


def apply_damage(data, how):
    kind, detail = how
    if kind == "truncate":
        return data[: int(detail * len(data))]
    damaged = bytearray(data)
    for where, mask in detail:
        damaged[int(where * len(data))] ^= mask
    return bytes(damaged)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(how=damage, damaged_is_expected=st.booleans())
def test_damaged_file_exits_cleanly_never_with_a_traceback(tiny_golden, how, damaged_is_expected):
    """Exit 2 with one line, or 0/1 when the damage left a valid file (say, a zip
    timestamp, or a value in a .safetensors file, which has no checksum)."""
    extension, data = tiny_golden
    with tempfile.TemporaryDirectory() as directory:
        good = os.path.join(directory, "good" + extension)
        bad = os.path.join(directory, "bad" + extension)
        with open(good, "wb") as handle:
            handle.write(data)
        with open(bad, "wb") as handle:
            handle.write(apply_damage(data, how))
        args = (bad, good) if damaged_is_expected else (good, bad)
        result = run("compare", *args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1, 2)
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1


def test_damage_to_array_data_is_caught_by_the_zip_checksum(tmp_path, golden):
    """A flipped bit inside an array would silently change a value; the CRC catches it."""
    with zipfile.ZipFile(golden) as archive:
        offset = archive.getinfo("y.npy").header_offset
    data = bytearray(golden.read_bytes())
    name_length, extra_length = np.frombuffer(bytes(data[offset + 26 : offset + 30]), dtype="<u2")
    data_start = offset + 30 + int(name_length) + int(extra_length)
    data[data_start + 200] ^= 0x01  # past the .npy header, inside the float values
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(data))
    assert_input_error(run("compare", path, golden), "flipped.npz")
