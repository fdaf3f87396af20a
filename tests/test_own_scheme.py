"""A scheme of one's own, in one file or module, gets every command; a broken one gets one line."""

import subprocess
import sys
from pathlib import Path

import pytest

import lnref
from lnref.schemes import SchemeError, get_scheme, scheme_names

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "examples" / "my_scheme.py")
SMALL = ["--d-model", "8", "--d-ff", "16"]


def lnref_cli(*args, cwd=None):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "lnref", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**__import__("os").environ, **env},
    )


def test_the_example_scheme_passes_the_gradient_check_at_12_layers():
    done = lnref_cli("gradcheck", "--scheme", EXAMPLE, "--layers", "12")
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed, 0 failed" in done.stdout.splitlines()[0]


def test_the_example_scheme_is_profiled_beside_a_built_in_one(tmp_path):
    done = lnref_cli(
        "profile",
        "--scheme",
        f"{EXAMPLE},pre",
        "--layers",
        "3",
        "--seeds",
        "2",
        *SMALL,
        "--json",
        "--out",
        str(tmp_path / "runs.jsonl"),
    )
    assert done.returncode == 0, done.stderr
    assert EXAMPLE in done.stdout and '"pre"' in done.stdout


def test_the_example_scheme_exports_a_golden_file_that_rebuilds_bit_for_bit(tmp_path):
    path = tmp_path / "mine.npz"
    done = lnref_cli("export", "--scheme", EXAMPLE, "--layers", "2", *SMALL, "-o", str(path))
    assert done.returncode == 0, done.stderr
    model = lnref.from_golden(str(path))  # verifies every stored array
    assert "layers.1.skip" in model.params
    compared = lnref_cli("compare", str(path), str(path))
    assert compared.returncode == 0 and compared.stdout.strip().splitlines()[-1].endswith("0 failed")


def test_the_example_scheme_trains():
    done = lnref_cli(
        "train",
        "--scheme",
        EXAMPLE,
        "--layers",
        "2",
        *SMALL,
        "--task",
        "reverse",
        "--steps",
        "20",
        "--warmup",
        "2",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert '"diverged": false' in done.stdout


def test_the_example_scheme_runs_through_the_stability_grid(tmp_path):
    done = lnref_cli(
        "stability",
        "--schemes",
        f"{EXAMPLE},pre",
        "--depths",
        "2",
        "--seeds",
        "1",
        "--steps",
        "4",
        "--warmup",
        "1",
        "--d-model",
        "8",
        "--batch",
        "2",
        "--workers",
        "1",
        "--out",
        str(tmp_path / "runs.jsonl"),
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 4 and sum(EXAMPLE in row for row in rows) == 2


@pytest.mark.parametrize(
    "source,words",
    [
        ("SUMMARY = 'no layer here'\n", ["defines no layer(x, layer) function"]),
        ("def layer(x, layer):\n    return (x\n", ["syntax error at line"]),
        ("def layer(x, layer):\n    return x[:, :1]\n", ["layer 0 returned a stream of shape", "expected shape"]),
        ("def layer(x):\n    return x\n", ["layer must take two arguments"]),
        ("def layer(x, layer):\n    return x + layer.nothing(x)\n", ["layer 0 raised AttributeError", "broken.py:2"]),
        ("import not_a_module_anywhere\n", ["cannot be loaded", "ModuleNotFoundError"]),
        ("NORMS = 'ln_{}'\ndef layer(x, layer):\n    return x\n", ["NORMS must be a tuple of names"]),
    ],
)
def test_a_broken_scheme_file_gets_one_line_and_exit_2(tmp_path, source, words):
    path = tmp_path / "broken.py"
    path.write_text(source)
    done = lnref_cli("gradcheck", "--scheme", str(path), "--layers", "2")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "Traceback" not in done.stderr, done.stderr
    assert all(word in lines[-1] for word in words), lines[-1]


BROKEN = {
    "missing layer": ("SUMMARY = 'no layer here'\n", "defines no layer(x, layer) function"),
    "syntax error": ("def layer(x, layer):\n    return (x\n", "syntax error at line 2"),
    "wrong shape": ("def layer(x, layer):\n    return x[:, :1]\n", "layer 0 returned a stream of shape"),
}
COMMANDS = {
    "profile": ("profile", "--layers", "2", "--seeds", "1"),
    "export": ("export", "--layers", "2", "-o", "out.npz"),
    "train": ("train", "--layers", "2", "--task", "reverse", "--steps", "2", "--warmup", "1"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("broken", BROKEN)
def test_a_broken_scheme_file_gets_one_line_and_exit_2_from_every_command(tmp_path, broken, command):
    """Before any work: the profile's sweep and the training loop never start."""
    source, words = BROKEN[broken]
    (tmp_path / "broken.py").write_text(source)
    done = lnref_cli(*COMMANDS[command], *SMALL, "--scheme", "broken.py", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error:") and words in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.py"]  # no records, no file


@pytest.mark.parametrize("broken", BROKEN)
def test_a_broken_scheme_file_gets_one_line_and_exit_2_from_the_stability_grid(tmp_path, broken):
    source, words = BROKEN[broken]
    (tmp_path / "broken.py").write_text(source)
    grid = ("--depths", "2", "--seeds", "1", "--steps", "2", "--warmup", "1", "--d-model", "8", "--workers", "1")
    done = lnref_cli("stability", "--schemes", "broken.py,pre", *grid, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error:") and words in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.py"]  # no records


def test_a_scheme_file_that_does_not_exist_is_one_line():
    with pytest.raises(SchemeError, match="does not exist"):
        get_scheme("no/such/scheme.py")


def test_an_importable_module_is_a_scheme(tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "skipper.py").write_text(Path(EXAMPLE).read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    model = lnref.build("mypkg.skipper", n_layers=2)
    assert model.params["layers.0.skip"].shape == ()


def test_an_installed_package_registers_a_scheme_by_entry_point_and_is_imported_only_when_named(tmp_path, monkeypatch):
    info = tmp_path / "lnref_extra-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lnref-extra\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lnref.schemes]\nskipper = lnref_extra_skipper\n")
    (tmp_path / "lnref_extra_skipper.py").write_text(Path(EXAMPLE).read_text() + "\nLOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "skipper" in scheme_names()
    assert "lnref_extra_skipper" not in sys.modules  # listed, not imported
    assert lnref.build("skipper", n_layers=1).scheme.LOADED
