"""``lnref profile``: the sweep, its table, text chart, JSON and figures, and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import lnref
from lnref import probes
from lnref import profile as sweeps
from lnref import profile_charts as charts
from lnref.cli import main
from lnref.model import refusal

TINY_ARGS = ["--layers", "2", "--d-model", "4", "--heads", "1", "--d-ff", "8", "--batch", "1", "--seq", "3"]


def run(*args):
    return CliRunner().invoke(main, ["profile", *args])


def direct_profiles(scheme, seeds, **options):
    """The probes called directly on the models the tiny CLI arguments describe."""
    profiles = []
    for seed in seeds:
        model = lnref.build(scheme, 2, d_model=4, n_heads=1, d_ff=8, seed=seed, **options)
        x, dy, memory = model.sample_inputs(batch=1, seq=3)
        profiles.append(probes.layer_profile(model, x, dy, memory))
    return profiles


# ----- agreement with the probes ---------------------------------------------------------------


@pytest.mark.parametrize("cross_attention", [False, True], ids=["encoder", "cross-attention"])
@pytest.mark.parametrize(
    "scheme, norm", [(s, n) for s in lnref.SCHEMES for n in ("layernorm", "rmsnorm") if refusal(s, norm=n) is None]
)
def test_json_numbers_equal_the_probes(scheme, norm, cross_attention):
    extra = ["--cross-attention"] if cross_attention else []
    result = run("--scheme", scheme, *TINY_ARGS, "--norm", norm, *extra, "--seeds", "2", "--json")
    assert result.exit_code == 0, result.stderr
    (entry,) = json.loads(result.stdout)["results"]
    direct = direct_profiles(scheme, [0, 1], norm=norm, cross_attention=cross_attention)
    expected = {name: np.stack([p.metrics()[name] for p in direct]) for name in direct[0].metrics()}
    assert set(entry["metrics"]) == set(expected)
    assert ("grad.cross" in entry["metrics"]) == cross_attention
    for name, values in expected.items():
        np.testing.assert_allclose(
            entry["metrics"][name]["mean"], values.mean(axis=0), rtol=1e-14, atol=0, err_msg=name
        )
        np.testing.assert_allclose(
            entry["metrics"][name]["std"], values.std(axis=0, ddof=1), rtol=1e-12, atol=0, err_msg=name
        )
    assert entry["loss"]["mean"] == pytest.approx(np.mean([p.loss for p in direct]), rel=1e-14)


def test_json_differs_from_probes_of_another_seed():
    # Negative control for the agreement test: other seeds give other numbers.
    result = run("--scheme", "post", *TINY_ARGS, "--seeds", "1", "--json")
    (entry,) = json.loads(result.stdout)["results"]
    other = direct_profiles("post", [1])[0]
    assert not np.allclose(entry["metrics"]["grad.ffn.w2"]["mean"], other.weight_grad_norms["ffn.w2"])


def test_seeds_start_at_the_seed_option():
    result = run("--scheme", "pre", *TINY_ARGS, "--seed", "5", "--seeds", "2", "--json")
    document = json.loads(result.stdout)
    assert document["seeds"] == [5, 6]
    direct = direct_profiles("pre", [5, 6])
    np.testing.assert_allclose(
        document["results"][0]["metrics"]["hidden_norm"]["mean"],
        np.mean([p.hidden_norm for p in direct], axis=0),
        rtol=1e-14,
    )


def test_one_seed_reports_no_spread():
    result = run("--scheme", "b2t", *TINY_ARGS, "--seeds", "1", "--json")
    metrics = json.loads(result.stdout)["results"][0]["metrics"]
    assert metrics["grad.ffn"]["std"] == [None, None] and metrics["grad.ffn"]["sem"] == [None, None]


def test_stream_option_measures_the_dual_stream_of_residual():
    result = run("--scheme", "residual", *TINY_ARGS, "--seeds", "1", "--stream", "1", "--json")
    model = lnref.build("residual", 2, d_model=4, n_heads=1, d_ff=8)
    x, _, _ = model.sample_inputs(batch=1, seq=3)
    expected = [np.linalg.norm(state[1]) for state in model.hidden_states(x)]
    np.testing.assert_allclose(
        json.loads(result.stdout)["results"][0]["metrics"]["hidden_norm"]["mean"], expected, rtol=1e-14
    )


def test_layer_list_profiles_every_depth():
    result = run("--scheme", "post,pre", *TINY_ARGS[2:], "--layers", "1,3", "--seeds", "1", "--json")
    results = json.loads(result.stdout)["results"]
    assert [(r["scheme"], r["n_layers"]) for r in results] == [("post", 1), ("pre", 1), ("post", 3), ("pre", 3)]
    assert [len(r["metrics"]["grad.ffn.w2"]["mean"]) for r in results] == [1, 1, 3, 3]
    assert [len(r["metrics"]["hidden_norm"]["mean"]) for r in results] == [2, 2, 4, 4]


# ----- stdout and stderr ---------------------------------------------------------------------


def test_json_stdout_parses_while_progress_goes_to_stderr():
    result = run("--scheme", "post,pre", *TINY_ARGS, "--seeds", "1", "--json")
    # One line per model probed, in the order they finish (the local backend runs them in parallel).
    assert "profile [1/2] " in result.stderr and "profile [2/2] " in result.stderr
    assert "] post, 2 layers, seed 0: loss" in result.stderr and "] pre, 2 layers, seed 0: loss" in result.stderr
    assert json.loads(result.stdout)["schemes"] == ["post", "pre"]


def test_text_output_has_a_block_per_scheme_and_a_log_chart():
    result = run("--scheme", "post,pre", *TINY_ARGS, "--seeds", "2")
    assert result.exit_code == 0
    out = result.stdout
    assert "post, 2 layers" in out and "pre, 2 layers" in out
    assert "(log scale)" in out and "legend: o post   x pre" in out
    assert "%" in out  # relative spread over the two seeds
    assert "profile [" not in out


def test_chart_tells_when_a_metric_is_missing_for_a_scheme():
    result = run("--scheme", "post,rezero", *TINY_ARGS, "--seeds", "1", "--metric", "grad.norm_gain")
    assert result.exit_code == 0
    assert "rezero (no such parameter)" in result.stdout


def test_chart_tells_when_every_value_is_off_the_log_scale():
    # ReZero's gates start at 0, so its FFN weights get no gradient at init.
    result = run("--scheme", "post,rezero", *TINY_ARGS, "--seeds", "1")
    assert "rezero (every value <= 0: not shown)" in result.stdout


def test_text_chart_places_decades_evenly():
    chart = charts.text_chart({"a": (np.arange(3), np.array([1.0, 10.0, 100.0]))}, "t", "x", width=11, height=5)
    rows = [line.split("|", 1)[1] for line in chart.splitlines() if "|" in line]
    marks = [(row.index("o"), r) for r, row in enumerate(rows) if "o" in row]
    # 100 at the top row, 10 exactly halfway down, 1 at the bottom: a log axis, not a linear one
    # (where 10 would sit near the bottom).
    assert marks == [(10, 0), (5, 2), (0, 4)]


def test_text_chart_marks_coinciding_points():
    series = {"a": (np.arange(2), np.array([1.0, 2.0])), "b": (np.arange(2), np.array([1.0, 3.0]))}
    chart = charts.text_chart(series, "t", "x", width=10, height=4)
    assert "*" in chart.splitlines()[-5]  # the bottom row: both start at 1


# ----- parsing --------------------------------------------------------------------------------


def test_scheme_list_expands_all_and_drops_repeats():
    assert sweeps.parse_schemes("pre, post,pre") == ("pre", "post")
    assert sweeps.parse_schemes("all") == lnref.SCHEMES


@pytest.mark.parametrize("text", ["0", "6,-1", "six", "6,,12"])
def test_bad_depth_lists_are_value_errors(text):
    with pytest.raises(ValueError, match="--layers"):
        sweeps.parse_depths(text)


# ----- bad input: one line, exit 2, nothing written -----------------------------------------


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""


def test_unknown_scheme_in_the_list_names_the_valid_ones():
    result = run("--scheme", "post,prenorm,pre", *TINY_ARGS)
    assert_one_line_error(result, "'prenorm'", "valid schemes: post, pre, residual")


def test_unknown_metric_lists_the_metrics():
    assert_one_line_error(run("--scheme", "post", *TINY_ARGS, "--metric", "grad.fnn"), "grad.ffn.w2")


def test_cross_attention_metric_without_cross_attention_fails_before_the_sweep():
    result = run("--scheme", "post", *TINY_ARGS, "--metric", "grad.cross")
    assert_one_line_error(result, "--cross-attention")


def test_missing_stream_fails_before_the_sweep():
    assert_one_line_error(run("--scheme", "residual,post", *TINY_ARGS, "--stream", "1"), "scheme post")


def test_bad_model_configuration_is_one_line():
    assert_one_line_error(run("--scheme", "post", *TINY_ARGS, "--heads", "3"), "not divisible")


def test_png_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an absent package looks like to import
    target = tmp_path / "figure.png"
    result = run("--scheme", "post", *TINY_ARGS, "--png", str(target))
    assert_one_line_error(result, "lnref[plot]")
    assert list(tmp_path.iterdir()) == []


def test_svg_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run("--scheme", "post", *TINY_ARGS, "--svg", str(tmp_path / "figure.svg"))
    assert_one_line_error(result, "lnref[plot]")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing directory", "a directory", "under a file"])
def test_unwritable_figure_path_fails_before_the_sweep(tmp_path, where):
    pytest.importorskip("matplotlib", reason="the path is checked after matplotlib is found")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    target = {
        "missing directory": tmp_path / "nowhere" / "f.png",
        "a directory": tmp_path,
        "under a file": blocker / "f.png",
    }[where]
    result = run("--scheme", "post", *TINY_ARGS, "--png", str(target))
    assert_one_line_error(result, "--png")
    assert "profile [" not in result.stderr  # nothing was computed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_failed_figure_write_leaves_no_file(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="needs matplotlib to reach the write")

    class BreaksMidWrite:
        def savefig(self, stream, **_):
            stream.write(b"\x89PNG half")
            raise OSError("disk full")

    monkeypatch.setattr(charts, "draw_figure", lambda *args: BreaksMidWrite())
    monkeypatch.setattr("matplotlib.pyplot.close", lambda figure: None)
    result = run("--scheme", "post", *TINY_ARGS, "--seeds", "1", "--png", str(tmp_path / "f.png"))
    assert result.exit_code == 2 and "disk full" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_same_file_for_png_and_svg_is_refused(tmp_path):
    pytest.importorskip("matplotlib", reason="the paths are checked after matplotlib is found")
    path = str(tmp_path / "f")
    assert_one_line_error(run("--scheme", "post", *TINY_ARGS, "--png", path, "--svg", path), "same file")


# ----- figures (need matplotlib) ---------------------------------------------------------------


def test_png_and_svg_are_written_with_the_configuration(tmp_path):
    pytest.importorskip("matplotlib", reason="figures need the plot extra")
    png, svg = tmp_path / "f.png", tmp_path / "f.svg"
    result = run(
        "--scheme",
        "post,pre",
        *TINY_ARGS[2:],
        "--layers",
        "1,2",
        "--seeds",
        "2",
        "--png",
        str(png),
        "--svg",
        str(svg),
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = svg.read_text()
    assert "<svg" in text and "d_model=4, heads=1, d_ff=8" in text and "number of layers" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "f.svg"]  # no temporary left over


def test_figure_axes_are_labelled_and_logarithmic():
    plt = pytest.importorskip("matplotlib.pyplot", reason="figures need the plot extra")
    from matplotlib import ticker

    sweep = sweeps.run_sweep(("post", "pre"), (2,), dict(d_model=4, n_heads=1, d_ff=8), [0, 1], batch=1, seq=3)
    figure = charts.draw_figure(plt, ticker, sweep, "hidden_grad_norm")
    (axis,) = figure.axes
    assert axis.get_yscale() == "log"
    assert axis.get_xlabel().startswith("state l") and "dL/dx_l" in axis.get_ylabel()
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["post", "pre"]
    assert "post vs pre" in figure._suptitle.get_text()
    plt.close(figure)


# ----- the command stays light ------------------------------------------------------------------


def test_loading_the_cli_does_not_import_the_profile_machinery():
    code = "import sys, lnref.cli; print('lnref.profile' in sys.modules, 'lnref.probes' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))},
    )
    assert out.stdout.split() == ["False", "False"]


# ----- the gallery script ------------------------------------------------------------------------


def load_gallery_script():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "make_gallery.py")
    spec = importlib.util.spec_from_file_location("make_gallery", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_gallery_commands_are_valid_profile_commands():
    from lnref.cli.profile import profile

    gallery = load_gallery_script()
    for figure in gallery.FIGURES:
        assert figure.command[:2] == ["lnref", "profile"]
        context = profile.make_context("profile", list(figure.command[2:]))  # raises on a bad option
        assert context.params["png_path"] == figure.path
        sweeps.parse_schemes(context.params["scheme_list"])


def test_gallery_page_shows_every_image_with_its_command():
    import shlex

    gallery = load_gallery_script()
    text = gallery.page()
    for figure in gallery.FIGURES:
        assert f"](gallery/{figure.name}.png)" in text
        assert shlex.join(figure.command) in text


def test_several_depths_add_a_chart_by_depth():
    result = run("--scheme", "post,pre", *TINY_ARGS[2:], "--layers", "1,3", "--seeds", "1")
    assert result.exit_code == 0
    assert "at the last layer, by depth (log scale)" in result.stdout and "number of layers" in result.stdout
